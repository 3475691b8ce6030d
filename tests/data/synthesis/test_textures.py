"""Texture sources and augmentations: folder errors, resizing, determinism, variety, imgaug ops and ranges."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageEnhance, ImageOps

from aand_lightning.data.records import DatasetError
from aand_lightning.data.synthesis import textures
from aand_lightning.data.synthesis.textures import (
    AUGMENTATIONS,
    DTDTextures,
    ProceduralTextures,
    TextureFolder,
    augment_texture,
    make_texture_source,
)
from aand_lightning.errors import UserError


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
        for seed in range(8)
    ]
    out = augmentation(gradient_image, np.random.default_rng(0))
    assert out.shape == gradient_image.shape
    assert out.dtype == np.uint8
    assert any(changed)


# The tests below pin each operation to the imgaug op and range of DRAEM/AAND's randAugmenter.

SEEDS = range(200)


@pytest.fixture
def ramp() -> np.ndarray:
    """Every level 0..255 once, equal in the three channels."""
    return np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)


@pytest.fixture
def patches() -> np.ndarray:
    """Flat colour patches of mid saturation and value, so shifts neither clip nor lose hue."""
    hsv = np.array([[[h, 128, 200] for h in range(0, 180, 15)]], np.uint8)
    return np.repeat(np.repeat(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 8, axis=0), 8, axis=1)


def test_gamma_is_drawn_per_channel_in_half_to_two(ramp: np.ndarray) -> None:
    """GammaContrast((0.5, 2.0), per_channel=True)."""
    gammas = []
    for seed in SEEDS:
        out = textures.gamma_contrast(ramp, np.random.default_rng(seed))[0].astype(np.float64)
        assert len({tuple(out[:, c]) for c in range(3)}) == 3  # the channels got different curves
        gammas.extend(np.log(out[128] / 255) / np.log(128 / 255))
    assert 0.49 < min(gammas) < 0.55 and 1.9 < max(gammas) < 2.02


def test_brightness_changes_one_brightness_channel_and_keeps_the_colour(patches: np.ndarray) -> None:
    """MultiplyAndAddToBrightness: the other two channels of one of imgaug's colour spaces stay put."""
    for seed in range(40):
        out = textures.brightness(patches, np.random.default_rng(seed))
        kept = []
        for to_space, _, channel in textures._BRIGHTNESS_SPACES:
            before, after = (cv2.cvtColor(x, to_space).astype(int) for x in (patches, out))
            others = [c for c in range(3) if c != channel]
            kept.append(np.abs(before[..., others] - after[..., others]).mean() < 1.0)
        assert any(kept), seed
    luma_shift = [
        cv2.cvtColor(textures.brightness(patches, np.random.default_rng(s)), cv2.COLOR_RGB2GRAY).mean()
        - cv2.cvtColor(patches, cv2.COLOR_RGB2GRAY).mean()
        for s in SEEDS
    ]
    assert min(luma_shift) < -40 and max(luma_shift) > 40


def test_sharpness_is_pils_with_factor_up_to_two() -> None:
    """pillike.EnhanceSharpness(): PIL ImageEnhance.Sharpness, factor ~ U(0, 2)."""
    photo = skimage.data.chelsea()[:64, :64]
    for seed in range(5):
        factor = np.random.default_rng(seed).uniform(0.0, 2.0)
        expected = np.asarray(ImageEnhance.Sharpness(Image.fromarray(photo)).enhance(factor))
        np.testing.assert_array_equal(textures.sharpness(photo, np.random.default_rng(seed)), expected)


def _circular(shift: np.ndarray) -> np.ndarray:
    return (shift + 90) % 180 - 90


def test_hue_and_saturation_shifts_are_drawn_apart_within_imgaug_ranges(patches: np.ndarray) -> None:
    """AddToHueAndSaturation((-50, 50), per_channel=True): hue within ±35 of OpenCV's 180, saturation ±50."""
    before = cv2.cvtColor(patches, cv2.COLOR_RGB2HSV).astype(int)
    hues, saturations = [], []
    for seed in SEEDS:
        after = cv2.cvtColor(textures.hue_saturation(patches, np.random.default_rng(seed)), cv2.COLOR_RGB2HSV)
        hues.append(np.median(_circular(after[..., 0].astype(int) - before[..., 0])))
        saturations.append(np.median(after[..., 1].astype(int) - before[..., 1]))
    assert max(np.abs(hues)) <= 36 and max(np.abs(hues)) >= 33
    assert max(np.abs(saturations)) <= 51 and max(np.abs(saturations)) >= 47
    assert abs(np.corrcoef(hues, saturations)[0, 1]) < 0.3


def test_solarize_applies_half_the_time_above_a_threshold_in_32_to_127(ramp: np.ndarray) -> None:
    """Solarize(0.5, threshold=(32, 128)): levels >= int(U(32, 128)) inverted, with probability 0.5."""
    cuts = []
    for seed in range(400):
        out = textures.solarize(ramp, np.random.default_rng(seed))[0, :, 0]
        inverted = np.flatnonzero(out != np.arange(256))
        if inverted.size:
            cuts.append(inverted[0])
            np.testing.assert_array_equal(out[inverted[0] :], 255 - np.arange(inverted[0], 256))
    assert 0.43 < len(cuts) / 400 < 0.57
    assert 32 <= min(cuts) <= 36 and 123 <= max(cuts) <= 127


def test_posterize_keeps_one_to_eight_bits(ramp: np.ndarray) -> None:
    """Posterize(): imgaug's default nb_bits (1, 8), every channel the same."""
    bits = set()
    for seed in SEEDS:
        out = textures.posterize(ramp, np.random.default_rng(seed))
        levels = np.unique(out)
        bits.add(int(np.log2(levels.size)))
        np.testing.assert_array_equal(levels, np.arange(0, 256, 256 // levels.size))
    assert bits == set(range(1, 9))


def test_invert_is_the_negative(gradient_image: np.ndarray) -> None:
    np.testing.assert_array_equal(
        textures.invert(gradient_image, np.random.default_rng(0)), 255 - gradient_image
    )


def test_autocontrast_is_pils_with_a_cutoff_of_0_to_20_percent() -> None:
    """pillike.Autocontrast(): PIL ImageOps.autocontrast, cutoff ~ U{0..20}."""
    photo = skimage.data.chelsea()[::4, ::4]
    by_cutoff = [np.asarray(ImageOps.autocontrast(Image.fromarray(photo), cutoff=c)) for c in range(21)]
    seen = set()
    for seed in range(60):
        out = textures.autocontrast(photo, np.random.default_rng(seed))
        seen.update(c for c, expected in enumerate(by_cutoff) if np.array_equal(out, expected))
    assert {0, 20} <= seen and len(seen) > 15


def test_equalize_is_imgaugs_equalize() -> None:
    """pillike.Equalize(): PIL's equalize, but imgaug's step leaves out level 255, not the top level."""
    rng = np.random.default_rng(0)
    astronaut = skimage.data.astronaut()[::4, ::4]  # every channel reaches 255: the two rules agree
    expected = np.asarray(ImageOps.equalize(Image.fromarray(astronaut)))
    np.testing.assert_array_equal(textures.equalize(astronaut, rng), expected)
    levels = np.concatenate([np.arange(4096) % 200, np.full(4096, 200)]).astype(np.uint8)
    image = np.repeat(levels.reshape(64, 128, 1), 3, axis=2)  # top level 200, held by half the pixels
    pil = np.asarray(ImageOps.equalize(Image.fromarray(image)))
    assert not np.array_equal(textures.equalize(image, rng), pil)
    np.testing.assert_array_equal(textures.equalize(image + 55, rng), pil)  # same histogram, top at 255


def test_rotation_is_bilinear_about_the_centre_with_black_corners() -> None:
    """Affine(rotate=(-45, 45)): cval 0 outside the rotated image."""
    white = np.full((33, 33, 3), 255, np.uint8)
    for seed in range(20):
        angle = np.random.default_rng(seed).uniform(-45.0, 45.0)
        out = textures.rotate(white, np.random.default_rng(seed))
        assert (out[16, 16] == 255).all()
        if abs(angle) > 5:
            assert (out[0, 0] == 0).all() and (out[-1, -1] == 0).all()
    clockwise = np.zeros((33, 33, 3), np.uint8)
    clockwise[16, 16:] = 255  # a ray to the right ends up below it for a positive imgaug angle
    seed = next(s for s in range(50) if np.random.default_rng(s).uniform(-45.0, 45.0) > 30)
    out = textures.rotate(clockwise, np.random.default_rng(seed))
    assert out[17:, 20:, 0].sum() > out[:16, 20:, 0].sum()


def test_folder_textures_are_resized_bilinearly_as_the_authors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = skimage.data.coffee()
    cv2.imwrite(str(tmp_path / "coffee.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    monkeypatch.setattr(textures, "AUGMENTATIONS", tuple(lambda image, rng: image for _ in range(3)))
    texture = TextureFolder(tmp_path).sample(np.random.default_rng(0), 50, 75)
    expected = cv2.resize(photo, (75, 50))  # cv2's default: INTER_LINEAR, no antialiasing
    np.testing.assert_array_equal(np.rint(texture * 255).astype(np.uint8), expected)
