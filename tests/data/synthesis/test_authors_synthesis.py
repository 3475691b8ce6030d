"""The authors' synthesis quirks, each behind a setting that `protocol=authors` turns on (docs/method.md):
the noise rotation that leaves the corners empty, the 11th draw kept after ten failed ones, textures
fed as BGR, and cable's foreground falling through to bottle's disc (`cabel`)."""

import math
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from aand_lightning.artifacts.amplifier_cache import cache_key
from aand_lightning.config import config_dir
from aand_lightning.data.synthesis import synthesizer as synthesizer_module
from aand_lightning.data.synthesis.foreground import ForegroundRule, foreground_mask, select_rule
from aand_lightning.data.synthesis.perlin import perlin_mask
from aand_lightning.data.synthesis.synthesizer import AnomalySynthesizer
from aand_lightning.errors import UserError

SIZE = 256
DRAWS = 2000


def _mask_statistics(noise_rotation: str) -> dict[str, tuple[float, float]]:
    """(mean, standard error of the mean) over DRAWS masks drawn as the spec says (scales 2**U{0..5}
    per axis, rotation U(-90, 90), threshold 0.5; the whole image as foreground) of: the share of a
    mask's pixels outside the image's inscribed circle (over the draws with a mask), and the mask's
    area as a share of the image."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    centre = (SIZE - 1) / 2
    outside = (ys - centre) ** 2 + (xs - centre) ** 2 > (SIZE / 2) ** 2
    areas, outer = np.zeros(DRAWS), np.zeros(DRAWS)
    for draw in range(DRAWS):
        mask = perlin_mask(
            SIZE, SIZE, rng, min_scale_exp=0, max_scale_exp=5, threshold=0.5, max_rotation=90.0,
            noise_rotation=noise_rotation,
        )  # fmt: skip
        areas[draw], outer[draw] = np.count_nonzero(mask), np.count_nonzero(mask & outside)
    shares = {"outside": outer[areas > 0] / areas[areas > 0], "area": areas / SIZE**2}
    return {name: (x.mean(), x.std(ddof=1) / math.sqrt(len(x))) for name, x in shares.items()}


@pytest.mark.parametrize(
    ("noise_rotation", "outside", "area"),
    [("affine_zero_corners", 0.098, 0.0487), ("canvas", 0.225, 0.0531)],  # the numbers
)
def test_mask_statistics_over_2000_draws_match_the_measured_ones(noise_rotation, outside, area) -> None:
    """Theirs leaves the corners without noise, so fewer anomaly pixels lie outside the inscribed
    circle and blobs are smaller; each statistic within 3 standard errors of the issue's value."""
    stats = _mask_statistics(noise_rotation)
    for name, expected in (("outside", outside), ("area", area)):
        mean, error = stats[name]
        assert abs(mean - expected) < 3 * error, (noise_rotation, name, mean, error)


def test_unknown_noise_rotation_names_the_values() -> None:
    with pytest.raises(ValueError, match="canvas, affine_zero_corners"):
        perlin_mask(8, 8, np.random.default_rng(0), noise_rotation="imgaug")


class ColourTexture:
    """A texture source with one known colour, channel by channel."""

    def __init__(self, rgb: tuple[int, int, int]) -> None:
        self.rgb = rgb

    def sample(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        return np.broadcast_to(np.array(self.rgb, np.uint8), (height, width, 3))


def _synthesizer(**kwargs) -> AnomalySynthesizer:
    return AnomalySynthesizer(ColourTexture((40, 120, 200)), A.NoOp(), **kwargs)


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(123).random((48, 64, 3), dtype=np.float32)


@pytest.mark.parametrize("eleventh", ["two_pixels", "empty"])
def test_keep_next_draw_keeps_the_11th_draw_whatever_it_holds(image, monkeypatch, eleventh) -> None:
    """Ten draws leave 4 foreground pixels (< min_pixels = 5): ours returns the clean image, theirs
    returns the 11th draw, here 2 pixels or none."""
    four_pixels = np.zeros(image.shape[:2], bool)
    four_pixels[10, 10:14] = True
    last = np.zeros(image.shape[:2], bool)
    if eleventh == "two_pixels":
        last[10, 11:13] = True
    draws = []

    def fake_perlin(height, width, rng, **kwargs):
        draws.append(kwargs["noise_rotation"])
        return last if len(draws) == 11 else np.ones((height, width), bool)

    monkeypatch.setattr(synthesizer_module, "perlin_mask", fake_perlin)
    out, mask = _synthesizer(clean_probability=0.0)(image, four_pixels, np.random.default_rng(0))
    assert len(draws) == 10 and not mask.any()
    np.testing.assert_array_equal(out, image)

    draws.clear()
    theirs = _synthesizer(clean_probability=0.0, after_max_tries="keep_next_draw")
    out, mask = theirs(image, four_pixels, np.random.default_rng(0))
    assert len(draws) == 11
    np.testing.assert_array_equal(mask.astype(bool), last)
    np.testing.assert_array_equal(out[~last], image[~last])
    assert (out[last] != image[last]).all()


def _zero_first_channel(image: np.ndarray, **_) -> np.ndarray:
    return np.concatenate([np.zeros_like(image[..., :1]), image[..., 1:]], axis=-1)


def test_texture_channels_bgr_reverses_the_texture_before_its_augmentation() -> None:
    """The augmenter zeroes the first channel it gets: red in RGB, blue (cv2's first) in BGR."""
    levels = {}
    for channels in ("rgb", "bgr"):
        synthesize = _synthesizer(texture_channels=channels)
        synthesize.texture_augment = A.Lambda(image=_zero_first_channel)
        levels[channels] = synthesize.texture(np.random.default_rng(0), 4, 4)[0, 0] * 255
    np.testing.assert_allclose(levels["rgb"], [0, 120, 200], atol=1e-4)
    np.testing.assert_allclose(levels["bgr"], [0, 120, 40], atol=1e-4)


@pytest.mark.parametrize(
    ("key", "value"), [("noise_rotation", "imgaug"), ("after_max_tries", "last"), ("texture_channels", "BGR")]
)
def test_unknown_quirk_value_names_its_key_and_values(key, value) -> None:
    with pytest.raises(UserError, match=rf"^synthesis\.{key}={value} is not valid; pass one of "):
        _synthesizer(**{key: value})


def _authors_disc_on_bottle(size: int) -> np.ndarray:
    """What their fore_extractor.py leaves for cable: the last bottle mask (900x900, pixels within
    int(0.45 * 900) of (450, 450)), read back and torch-nearest-resized by their dataset."""
    ys, xs = np.mgrid[0:900, 0:900]
    disc = np.sqrt((xs - 450) ** 2 + (ys - 450) ** 2) <= int(0.45 * 900)
    disc = torch.from_numpy(disc[None, None].astype(np.uint8))
    return F.interpolate(disc, size=(size, size), mode="nearest")[0, 0].numpy() > 0


def test_cable_canvas_gives_their_fall_through_disc() -> None:
    cable = np.zeros((1024, 1024, 3), np.uint8)  # cable's native size; a disc rule ignores the pixels
    ours = foreground_mask(cable, ForegroundRule("disc", radius=0.45), (SIZE, SIZE))
    theirs = foreground_mask(cable, ForegroundRule("disc", radius=0.45, canvas=[900, 900]), (SIZE, SIZE))
    np.testing.assert_array_equal(theirs, _authors_disc_on_bottle(SIZE))
    assert np.count_nonzero(ours != theirs) == 142  # not the same circle: 0.3 % of the disc
    assert foreground_mask(cable, ForegroundRule("disc", canvas=(900, 900))).shape == (1024, 1024)
    with pytest.raises(ValueError, match="canvas"):
        ForegroundRule("threshold", threshold=50, canvas=(900, 900))


def _train_config(tmp_path: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return compose("train", overrides=["dataset=mvtec", f"paths.root_dir={tmp_path}", *overrides])


QUIRKS = {  # the setting and theirs; ours is the default
    "synthesis.noise_rotation": "affine_zero_corners",
    "synthesis.after_max_tries": "keep_next_draw",
    "synthesis.texture_channels": "bgr",
    "dataset.foreground_rules.cable.canvas": [900, 900],
}


def test_protocol_authors_turns_every_quirk_on_and_clean_none(tmp_path: Path) -> None:
    for protocol, theirs in (("clean", False), ("authors", True)):
        cfg = _train_config(tmp_path, f"protocol={protocol}")
        assert all((OmegaConf.select(cfg, key) == value) is theirs for key, value in QUIRKS.items()), protocol
    cfg = _train_config(tmp_path, "protocol=authors")
    assert select_rule(cfg.dataset.foreground_rules, "cable") == ForegroundRule("disc", canvas=(900, 900))
    synthesize = instantiate(cfg.synthesis)
    quirks = (synthesize.noise_rotation, synthesize.after_max_tries, synthesize.texture_channels)
    assert quirks == ("affine_zero_corners", "keep_next_draw", "bgr")


def test_each_quirk_flips_alone_and_changes_the_stage1_cache_key(tmp_path: Path) -> None:
    default = cache_key(_train_config(tmp_path), [])
    assert cache_key(_train_config(tmp_path), []) == default
    keys = {default}
    for key, value in QUIRKS.items():
        cfg = _train_config(tmp_path, f"{key}={value}".replace(" ", ""))
        flipped = [k for k, v in QUIRKS.items() if OmegaConf.select(cfg, k) == v]
        assert flipped == [key]
        keys.add(cache_key(cfg, []))
    assert len(keys) == 1 + len(QUIRKS)
