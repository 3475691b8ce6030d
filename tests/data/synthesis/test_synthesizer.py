"""The synthesizer: mask/image consistency, blending, reproducibility, clean rate, retries, config."""

import pickle
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from aand_lightning.data.synthesis import synthesizer as synthesizer_module
from aand_lightning.data.synthesis.augmenters import EnhanceSharpness
from aand_lightning.data.synthesis.synthesizer import FRACTIONS, AnomalySynthesizer, check_fractions
from aand_lightning.data.synthesis.textures import ProceduralTextures, TextureFolder
from aand_lightning.errors import UserError

CONFIG = Path(__file__).parents[3] / "conf" / "synthesis" / "default.yaml"


class ConstantTexture:
    """A texture source with one known level, so blended values can be checked exactly."""

    def __init__(self, level: int) -> None:
        self.level = level

    def sample(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        return np.full((height, width, 3), self.level, np.uint8)


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(123).random((48, 64, 3), dtype=np.float32)


@pytest.fixture
def foreground() -> np.ndarray:
    """The left 40 columns only, so masks must be clipped to it."""
    mask = np.zeros((48, 64), bool)
    mask[:, :40] = True
    return mask


def _synthesizer(**kwargs) -> AnomalySynthesizer:
    return AnomalySynthesizer(texture_source=ProceduralTextures(num_textures=4), **kwargs)


def test_changes_only_inside_the_mask_and_mask_inside_foreground(image, foreground) -> None:
    synthesize = _synthesizer(clean_probability=0.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        out, mask = synthesize(image, foreground, rng)
        assert out.dtype == np.float32 and out.shape == image.shape
        assert mask.dtype == np.float32 and mask.shape == foreground.shape
        assert set(np.unique(mask)) == {0.0, 1.0}
        inside = mask.astype(bool)
        assert not (inside & ~foreground).any()
        np.testing.assert_array_equal(out[~inside], image[~inside])
        assert (out[inside] != image[inside]).any()
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_blend_uses_one_beta_below_beta_max(image, foreground) -> None:
    black = np.zeros_like(image)
    grey = np.float32(128) * np.float32(1 / 255)
    out, mask = AnomalySynthesizer(ConstantTexture(128), A.NoOp(), clean_probability=0.0, beta_max=0.8)(
        black, foreground, np.random.default_rng(1)
    )
    inside = out[mask.astype(bool)]
    np.testing.assert_allclose(inside, inside.flat[0])
    assert grey * 0.2 <= inside.flat[0] <= grey
    pure, mask = AnomalySynthesizer(ConstantTexture(128), A.NoOp(), clean_probability=0.0, beta_max=0.0)(
        image, foreground, np.random.default_rng(2)
    )
    np.testing.assert_array_equal(pure[mask.astype(bool)], grey)


def test_same_seed_same_result_other_seed_other_result(image, foreground) -> None:
    synthesize = _synthesizer(clean_probability=0.0)
    first = synthesize(image, foreground, np.random.default_rng(10))
    again = synthesize(image, foreground, np.random.default_rng(10))
    other = synthesize(image, foreground, np.random.default_rng(11))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])


def test_survives_pickling_with_identical_results(image, foreground) -> None:
    synthesize = _synthesizer(clean_probability=0.0)
    copy = pickle.loads(pickle.dumps(synthesize))
    for a, b in zip(
        synthesize(image, foreground, np.random.default_rng(3)),
        copy(image, foreground, np.random.default_rng(3)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_texture_augmentation_is_seeded_from_the_sample_with_one_state_for_all_its_ops() -> None:
    """The composition's random state comes from the sample's generator: the same seed gives the same
    texture in any process; its ops share that state, so two equal ops do not repeat each other's draws."""
    twice = A.Sequential([EnhanceSharpness(), EnhanceSharpness()], p=1.0)
    synthesize = AnomalySynthesizer(ProceduralTextures(num_textures=4), twice)
    first = synthesize.texture(np.random.default_rng(7), 32, 32)
    factors = [op.params["factor"] for op in twice.transforms]
    assert factors[0] != factors[1]
    assert first.dtype == np.float32 and first.min() >= 0.0 and first.max() <= 1.0
    synthesize.texture(np.random.default_rng(8), 32, 32)
    np.testing.assert_array_equal(synthesize.texture(np.random.default_rng(7), 32, 32), first)
    worker_copy = pickle.loads(pickle.dumps(synthesize))
    np.testing.assert_array_equal(worker_copy.texture(np.random.default_rng(7), 32, 32), first)


def test_texture_augment_that_changes_the_size_names_the_fix() -> None:
    synthesize = AnomalySynthesizer(ProceduralTextures(num_textures=2), A.Resize(8, 8, p=1.0))
    with pytest.raises(UserError, match="keep the size and the uint8 type") as caught:
        synthesize.texture(np.random.default_rng(0), 16, 16)
    assert str(caught.value).startswith("synthesis.texture_augment turned a (16, 16, 3) uint8 texture")


def _clean_rate(probability: float, draws: int) -> float:
    """Share of draws returned unchanged with an empty mask, on small images for speed."""
    synthesize = _synthesizer(clean_probability=probability)
    small = np.random.default_rng(0).random((24, 24, 3), dtype=np.float32)
    rng = np.random.default_rng(4)
    clean = 0
    for _ in range(draws):
        out, mask = synthesize(small, np.ones((24, 24), bool), rng)
        clean += int(mask.sum() == 0 and np.array_equal(out, small))
    return clean / draws


def test_clean_probability_is_respected() -> None:
    assert abs(_clean_rate(0.2, 300) - 0.2) < 0.07
    assert _clean_rate(1.0, 20) == 1.0
    assert _clean_rate(0.0, 50) < 0.1


def test_tiny_foreground_gives_clean_output_after_max_tries(image, monkeypatch) -> None:
    calls = []

    def counting_perlin(*args, **kwargs):
        calls.append(1)
        return np.ones(image.shape[:2], bool)

    monkeypatch.setattr(synthesizer_module, "perlin_mask", counting_perlin)
    four_pixels = np.zeros(image.shape[:2], bool)
    four_pixels[10, 10:14] = True
    out, mask = _synthesizer(clean_probability=0.0, min_pixels=5, max_tries=7)(
        image, four_pixels, np.random.default_rng(0)
    )
    assert len(calls) == 7
    assert mask.sum() == 0
    np.testing.assert_array_equal(out, image)
    four_pixels[11, 10] = True
    _, mask = _synthesizer(clean_probability=0.0, min_pixels=5)(image, four_pixels, np.random.default_rng(0))
    np.testing.assert_array_equal(mask.astype(bool), four_pixels)


def test_foreground_of_another_size_is_rejected(image) -> None:
    with pytest.raises(ValueError, match="resize the foreground to the image size"):
        _synthesizer()(image, np.ones((10, 10), bool), np.random.default_rng(0))


def test_texture_dir_selects_a_folder(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "t.png"), np.full((8, 8, 3), 128, np.uint8))
    assert isinstance(AnomalySynthesizer(texture_dir=str(tmp_path)).texture_source, TextureFolder)


def test_default_config_builds_the_documented_synthesizer(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}, "synthesis": OmegaConf.load(CONFIG)})
    synthesize = instantiate(cfg.synthesis)
    assert isinstance(synthesize, AnomalySynthesizer)
    assert isinstance(synthesize.texture_source, ProceduralTextures)
    assert synthesize.texture_source.description == "procedural (seed 0, 32 textures)"
    assert list(tmp_path.iterdir()) == []  # nothing fetched for procedural textures
    assert (synthesize.clean_probability, synthesize.beta_max) == (0.2, 0.8)
    assert (synthesize.min_pixels, synthesize.max_tries) == (5, 10)
    assert synthesize.perlin == {
        "min_scale_exp": 0,
        "max_scale_exp": 5,
        "threshold": 0.5,
        "max_rotation": 90.0,
    }


@pytest.mark.parametrize(
    ("key", "value"), [("clean_probability", -0.1), ("beta_max", 1.5), ("beta_max", True), ("beta_max", "x")]
)
def test_fraction_out_of_range_names_its_key_and_interval(key, value) -> None:
    message = f"synthesis.{key}={value} is not valid; pass a number in [0.0, 1.0]."
    with pytest.raises(UserError) as caught:
        _synthesizer(**{key: value})
    assert str(caught.value) == message
    with pytest.raises(UserError) as caught:
        check_fractions({key: value})
    assert str(caught.value) == message


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0, np.float32(0.5)])
def test_fraction_bounds_are_closed(value) -> None:
    check_fractions(dict.fromkeys(FRACTIONS, value))
    _synthesizer(clean_probability=value, beta_max=value)
