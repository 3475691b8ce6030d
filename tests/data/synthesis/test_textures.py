"""Texture sources and augmentations: folder errors, resizing, determinism, variety, exact LUT values."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from aand_lightning.data.records import DatasetError
from aand_lightning.data.synthesis import textures
from aand_lightning.data.synthesis.textures import (
    AUGMENTATIONS,
    ProceduralTextures,
    TextureFolder,
    augment_texture,
    make_texture_source,
)


@pytest.fixture
def gradient_image() -> np.ndarray:
    """A uint8 RGB image with every level present but an uneven histogram, so every augmentation bites."""
    ramp = np.tile(np.arange(256, dtype=np.uint8), (32, 1))
    ramp[16:, :128] = 60
    return np.stack([ramp, ramp[:, ::-1], np.full_like(ramp, 90)], axis=-1)


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
    assert texture.dtype == np.float32
    assert texture.min() >= 0.0 and texture.max() <= 1.0


def test_make_texture_source_picks_folder_or_fallback(tmp_path: Path) -> None:
    _write_image(tmp_path / "t.png", (10, 20, 30))
    assert isinstance(make_texture_source(str(tmp_path)), TextureFolder)
    fallback = make_texture_source(None, seed=3)
    assert isinstance(fallback, ProceduralTextures)
    assert fallback.seed == 3


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


def test_procedural_sample_is_reproducible_and_leaves_bank_intact() -> None:
    source = ProceduralTextures(num_textures=4)
    before = [texture.copy() for texture in source.bank(32, 32)]
    first = source.sample(np.random.default_rng(5), 32, 32)
    again = source.sample(np.random.default_rng(5), 32, 32)
    other = source.sample(np.random.default_rng(6), 32, 32)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    for kept, texture in zip(before, source.bank(32, 32), strict=True):
        np.testing.assert_array_equal(kept, texture)


def test_augment_applies_three_distinct_augmentations(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def recorder(index: int):
        def augmentation(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            calls.append(index)
            return image + 1

        return augmentation

    monkeypatch.setattr(textures, "AUGMENTATIONS", tuple(recorder(i) for i in range(10)))
    for seed in range(20):
        calls.clear()
        out = augment_texture(np.zeros((2, 2, 3), np.uint8), np.random.default_rng(seed))
        assert len(set(calls)) == 3
        np.testing.assert_allclose(out, 3 / 255)


@pytest.mark.parametrize("augmentation", AUGMENTATIONS, ids=lambda f: f.__name__)
def test_every_augmentation_changes_the_image(augmentation, gradient_image: np.ndarray) -> None:
    changed = [
        not np.array_equal(augmentation(gradient_image, np.random.default_rng(seed)), gradient_image)
        for seed in range(3)
    ]
    out = augmentation(gradient_image, np.random.default_rng(0))
    assert out.shape == gradient_image.shape
    assert out.dtype == np.uint8
    assert any(changed)


def test_exact_lookup_values(gradient_image: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(textures.invert(gradient_image, rng), 255 - gradient_image)
    assert (textures.posterize(gradient_image, rng) & 0b111).max() == 0
    stretched = textures.autocontrast(gradient_image[:, 40:200], rng)
    assert stretched[..., :2].min() == 0 and stretched[..., :2].max() == 255
    solarized = textures.solarize(gradient_image, rng)
    assert solarized[0, 255, 0] == 0 and solarized[0, 10, 0] == 10
