"""Texture sources: folder errors, resizing, determinism, variety, textures that cannot be modified."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from aand_lightning.data.records import DatasetError
from aand_lightning.data.synthesis.textures import (
    DTDTextures,
    ProceduralTextures,
    TextureFolder,
    make_texture_source,
)
from aand_lightning.errors import UserError


def _write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (30, 50)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*size, 3), colour, np.uint8))


def test_missing_folder_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="texture_dir"):
        TextureFolder(tmp_path / "missing")


def test_folder_without_images_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="no jpg"):
        TextureFolder(tmp_path)


def test_unreadable_texture_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"broken\.png"):
        TextureFolder(tmp_path).sample(np.random.default_rng(0), 8, 8)


def test_folder_is_read_recursively_and_resized(tmp_path: Path) -> None:
    _write_image(tmp_path / "a" / "b" / "red.png", (0, 0, 255))
    _write_image(tmp_path / "blue.BMP", (255, 0, 0))
    _write_image(tmp_path / "c" / "green.jpg", (0, 255, 0))
    folder = TextureFolder(str(tmp_path))
    assert [p.name for p in folder.paths] == ["red.png", "blue.BMP", "green.jpg"]
    texture = folder.sample(np.random.default_rng(0), 40, 60)
    assert texture.shape == (40, 60, 3)
    assert texture.dtype == np.uint8
    assert np.ptp(texture.reshape(-1, 3), axis=0).max() <= 1  # one flat colour file, resized


def test_make_texture_source_picks_folder_or_fallback(tmp_path: Path) -> None:
    _write_image(tmp_path / "t.png", (10, 20, 30))
    folder = make_texture_source(str(tmp_path))
    assert isinstance(folder, TextureFolder) and folder.description == f"folder ({tmp_path}, 1 images)"
    assert isinstance(make_texture_source(str(tmp_path), textures="folder"), TextureFolder)
    fallback = make_texture_source(None, seed=3)
    assert isinstance(fallback, ProceduralTextures)
    assert fallback.seed == 3 and fallback.description == "procedural (seed 3, 32 textures)"
    dtd = make_texture_source(None, textures="dtd", dtd_root=tmp_path / "dtd")
    assert isinstance(dtd, DTDTextures) and not (tmp_path / "dtd").exists()  # fetched on first use only


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"textures": "imagenet"}, "procedural, dtd, folder"),
        ({"textures": "folder"}, "synthesis.texture_dir="),
        ({"textures": "dtd", "texture_dir": "/x", "dtd_root": "/d"}, "synthesis.textures=folder"),
        ({"textures": "dtd"}, "synthesis.dtd_root"),
    ],
    ids=["unknown", "folder-without-dir", "dtd-and-dir", "dtd-without-root"],
)
def test_texture_choice_mistakes_name_the_setting(kwargs, names) -> None:
    with pytest.raises(UserError) as caught:
        make_texture_source(**kwargs)
    message = str(caught.value)
    assert names in message and message.endswith(".") and ". " not in message


def test_procedural_bank_is_deterministic_per_seed() -> None:
    first = ProceduralTextures(seed=1, num_textures=4).bank(24, 40)
    again = ProceduralTextures(seed=1, num_textures=4).bank(24, 40)
    other = ProceduralTextures(seed=2, num_textures=4).bank(24, 40)
    assert first[0].shape == (24, 40, 3)
    assert first[0].dtype == np.uint8
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any((a != b).any() for a, b in zip(first, other, strict=True))


def test_procedural_bank_is_varied() -> None:
    bank = ProceduralTextures(seed=0, num_textures=16).bank(64, 64)
    assert len(bank) == 16
    assert all(texture.std() > 10 for texture in bank)
    means = np.array([texture.reshape(-1, 3).mean(axis=0) for texture in bank])
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(16, 1)]
    assert distances.min() > 5
    assert np.ptp(means, axis=0).min() > 60


def test_procedural_sample_is_reproducible() -> None:
    source = ProceduralTextures(num_textures=4)
    first = source.sample(np.random.default_rng(5), 32, 32)
    np.testing.assert_array_equal(first, source.sample(np.random.default_rng(5), 32, 32))
    assert any(not np.array_equal(first, source.sample(np.random.default_rng(s), 32, 32)) for s in range(6))


def test_cached_textures_cannot_be_modified(tmp_path: Path) -> None:
    """Sources hand out their cached arrays: an op writing in place would change every later draw."""
    _write_image(tmp_path / "t.png", (10, 20, 30))
    for source in (ProceduralTextures(num_textures=2), TextureFolder(tmp_path)):
        texture = source.sample(np.random.default_rng(0), 8, 8)
        with pytest.raises(ValueError, match="read-only"):
            texture[0, 0] = 0


def test_folder_textures_are_resized_bilinearly_as_the_authors(tmp_path: Path) -> None:
    photo = skimage.data.coffee()
    cv2.imwrite(str(tmp_path / "coffee.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    texture = TextureFolder(tmp_path).sample(np.random.default_rng(0), 50, 75)
    expected = cv2.resize(photo, (75, 50))  # cv2's default: INTER_LINEAR, no antialiasing
    np.testing.assert_array_equal(texture, expected)
