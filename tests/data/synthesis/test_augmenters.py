"""The texture augmenters: each op bit for bit against the imgaug port it replaces, imgaug's ranges,
the authors' composition (3 distinct of 10 in random order) and its config."""

import random
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import skimage.data
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image, ImageEnhance, ImageOps

from aand_lightning.config import config_dir
from aand_lightning.data.synthesis import augmenters
from aand_lightning.data.synthesis.augmenters import authors_texture_augment

REFERENCES = Path(__file__).parent / "references"  # written by references/make_references.py

# reference name -> the op of the authors' composition that replaces the imgaug port of that name
OPS = dict(
    zip(
        [
            "gamma_contrast", "brightness", "sharpness", "hue_saturation", "solarize",
            "posterize", "invert", "autocontrast", "equalize", "rotate",
        ],
        range(10),
        strict=True,
    )
)  # fmt: skip


class _Drawn(random.Random):
    """A Python random state whose `uniform` gives fixed values: a stock op's draws, set by a test."""

    def __init__(self, *values: float) -> None:
        super().__init__(0)
        self.values = list(values)

    def uniform(self, a: float, b: float) -> float:
        return self.values.pop(0)


def _apply(name: str, op: A.BasicTransform, image: np.ndarray, params: dict) -> np.ndarray:
    """The op's output for the values the imgaug port drew (`params`, as the reference stores them)."""
    if name == "solarize":  # imgaug's integer threshold in levels; albumentations' in [0, 1]
        return op.apply(image, threshold=int(params["cut"]) / 255.0)
    if name == "rotate":  # stock Rotate draws its angle; imgaug's positive angle is its negative
        op.set_random_state(np.random.default_rng(0), _Drawn(-float(params["angle"])))
        return op(image=image)["image"]
    return op.apply(image, **params)


@pytest.mark.parametrize("name", OPS)
def test_op_gives_the_imgaug_ports_output_bit_for_bit(name: str) -> None:
    """Given the values the former function drew, each op gives its saved output exactly."""
    reference = np.load(REFERENCES / f"{name}.npz")
    op = authors_texture_augment().transforms[OPS[name]]
    keys = [k for k in reference.files if k.startswith("param_")]
    for index, expected in enumerate(reference["outputs"]):
        params = {k.removeprefix("param_"): reference[k][index] for k in keys}
        out = _apply(name, op, reference["image"].copy(), params)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, expected, err_msg=f"{name} with {params}")


def _run(op: A.BasicTransform, image: np.ndarray, seed: int) -> np.ndarray:
    op.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return op(image=image)["image"]


def _op(name: str) -> A.BasicTransform:
    return authors_texture_augment().transforms[OPS[name]]


@pytest.fixture
def gradient_image() -> np.ndarray:
    """A uint8 RGB image with every level present but an uneven histogram, so every augmentation bites."""
    ramp = np.tile(np.arange(256, dtype=np.uint8), (32, 1))
    ramp[16:, :128] = 60
    return np.stack([ramp, ramp[:, ::-1], np.full_like(ramp, 90)], axis=-1)


@pytest.mark.parametrize("name", OPS)
def test_every_op_changes_the_image_and_keeps_it_uint8(name: str, gradient_image: np.ndarray) -> None:
    op = _op(name)
    outs = [_run(op, gradient_image, seed) for seed in range(8)]
    assert all(out.shape == gradient_image.shape and out.dtype == np.uint8 for out in outs)
    assert any(not np.array_equal(out, gradient_image) for out in outs)


# The tests below pin each op's draws to the imgaug op and range of DRAEM/AAND's randAugmenter.

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
        out = _run(_op("gamma_contrast"), ramp, seed)[0].astype(np.float64)
        assert len({tuple(out[:, c]) for c in range(3)}) == 3  # the channels got different curves
        gammas.extend(np.log(out[128] / 255) / np.log(128 / 255))
    assert 0.49 < min(gammas) < 0.55 and 1.9 < max(gammas) < 2.02


def test_brightness_changes_one_brightness_channel_and_keeps_the_colour(patches: np.ndarray) -> None:
    """MultiplyAndAddToBrightness: the other two channels of one of imgaug's colour spaces stay put."""
    op = _op("brightness")
    for seed in range(40):
        out = _run(op, patches, seed)
        kept = []
        for to_space, _, channel in augmenters.BRIGHTNESS_SPACES:
            before, after = (cv2.cvtColor(x, to_space).astype(int) for x in (patches, out))
            others = [c for c in range(3) if c != channel]
            kept.append(np.abs(before[..., others] - after[..., others]).mean() < 1.0)
        assert any(kept), seed
    luma_shift = [
        cv2.cvtColor(_run(op, patches, s), cv2.COLOR_RGB2GRAY).mean()
        - cv2.cvtColor(patches, cv2.COLOR_RGB2GRAY).mean()
        for s in SEEDS
    ]
    assert min(luma_shift) < -40 and max(luma_shift) > 40


def test_sharpness_is_pils_with_factor_up_to_two() -> None:
    """pillike.EnhanceSharpness(): PIL ImageEnhance.Sharpness, factor ~ U(0, 2)."""
    photo = skimage.data.chelsea()[:64, :64]
    op = _op("sharpness")
    factors = []
    for seed in range(40):
        out = _run(op, photo, seed)
        factors.append(op.params["factor"])
        expected = np.asarray(ImageEnhance.Sharpness(Image.fromarray(photo)).enhance(factors[-1]))
        np.testing.assert_array_equal(out, expected)
    assert min(factors) < 0.2 and max(factors) > 1.8


def _circular(shift: np.ndarray) -> np.ndarray:
    return (shift + 90) % 180 - 90


def test_hue_and_saturation_shifts_are_drawn_apart_within_imgaug_ranges(patches: np.ndarray) -> None:
    """AddToHueAndSaturation((-50, 50), per_channel=True): hue within ±35 of OpenCV's 180, saturation ±50."""
    before = cv2.cvtColor(patches, cv2.COLOR_RGB2HSV).astype(int)
    hues, saturations = [], []
    for seed in SEEDS:
        after = cv2.cvtColor(_run(_op("hue_saturation"), patches, seed), cv2.COLOR_RGB2HSV)
        hues.append(np.median(_circular(after[..., 0].astype(int) - before[..., 0])))
        saturations.append(np.median(after[..., 1].astype(int) - before[..., 1]))
    assert max(np.abs(hues)) <= 36 and max(np.abs(hues)) >= 33
    assert max(np.abs(saturations)) <= 51 and max(np.abs(saturations)) >= 47
    assert abs(np.corrcoef(hues, saturations)[0, 1]) < 0.3


def test_solarize_applies_half_the_time_above_a_threshold_in_32_to_127(ramp: np.ndarray) -> None:
    """Solarize(0.5, threshold=(32, 128)): levels >= int(U(32, 128)) inverted, with probability 0.5."""
    cuts = []
    for seed in range(400):
        out = _run(_op("solarize"), ramp, seed)[0, :, 0]
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
        levels = np.unique(_run(_op("posterize"), ramp, seed))
        bits.add(int(np.log2(levels.size)))
        np.testing.assert_array_equal(levels, np.arange(0, 256, 256 // levels.size))
    assert bits == set(range(1, 9))


def test_invert_is_the_negative(gradient_image: np.ndarray) -> None:
    np.testing.assert_array_equal(_run(_op("invert"), gradient_image, 0), 255 - gradient_image)


def test_autocontrast_is_pils_with_a_cutoff_of_0_to_20_percent() -> None:
    """pillike.Autocontrast(): PIL ImageOps.autocontrast, cutoff ~ U{0..20}."""
    photo = skimage.data.chelsea()[::4, ::4]
    by_cutoff = [np.asarray(ImageOps.autocontrast(Image.fromarray(photo), cutoff=c)) for c in range(21)]
    seen = set()
    for seed in range(60):
        out = _run(_op("autocontrast"), photo, seed)
        seen.update(c for c, expected in enumerate(by_cutoff) if np.array_equal(out, expected))
    assert {0, 20} <= seen and len(seen) > 15


def test_equalize_is_imgaugs_equalize() -> None:
    """pillike.Equalize(): PIL's equalize, but imgaug's step leaves out level 255, not the top level."""
    op = _op("equalize")
    astronaut = skimage.data.astronaut()[::4, ::4]  # every channel reaches 255: the two rules agree
    expected = np.asarray(ImageOps.equalize(Image.fromarray(astronaut)))
    np.testing.assert_array_equal(_run(op, astronaut, 0), expected)
    levels = np.concatenate([np.arange(4096) % 200, np.full(4096, 200)]).astype(np.uint8)
    image = np.repeat(levels.reshape(64, 128, 1), 3, axis=2)  # top level 200, held by half the pixels
    pil = np.asarray(ImageOps.equalize(Image.fromarray(image)))
    assert not np.array_equal(_run(op, image, 0), pil)
    np.testing.assert_array_equal(_run(op, image + 55, 0), pil)  # same histogram, top at 255


def test_rotation_is_bilinear_about_the_centre_with_black_corners_up_to_45_degrees() -> None:
    """Affine(rotate=(-45, 45)): U(-45, 45) degrees about the centre, cval 0 outside the rotated image."""
    white = np.full((33, 33, 3), 255, np.uint8)
    op = _op("rotate")
    angles = []
    for seed in range(100):
        out = _run(op, white, seed)
        matrix = op.params["matrix"]
        angles.append(np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0])))
        assert (out[16, 16] == 255).all()
        if abs(angles[-1]) > 5:
            assert (out[0, 0] == 0).all() and (out[-1, -1] == 0).all()
    assert -45 <= min(angles) < -40 and 40 < max(angles) <= 45


def test_authors_composition_applies_three_distinct_ops_in_the_order_drawn() -> None:
    """DRAEM's randAugmenter: 3 distinct of the 10, in random order (RandomOrder, not SomeOf's list order)."""
    calls: list[int] = []

    class Recorder(A.ImageOnlyTransform):
        def __init__(self, index: int) -> None:
            super().__init__(p=1.0)
            self.index = index

        def apply(self, img: np.ndarray, **params) -> np.ndarray:
            calls.append(self.index)
            return img + 1

    composition = authors_texture_augment()
    assert isinstance(composition, A.RandomOrder) and (composition.n, composition.replace) == (3, False)
    composition.transforms = [Recorder(i) for i in range(10)]
    orders = set()
    for seed in range(40):
        calls.clear()
        out = _run(composition, np.zeros((2, 2, 3), np.uint8), seed)
        assert len(set(calls)) == 3
        np.testing.assert_array_equal(out, 3)
        orders.add(tuple(calls))
    assert any(list(order) != sorted(order) for order in orders)


def _configured(tmp_path: Path, *overrides: str) -> A.BaseCompose:
    """The texture augmentation of the train config, composed by Hydra with command-line overrides."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={tmp_path}", *overrides])
    return instantiate(cfg.synthesis).texture_augment


def test_config_lists_the_authors_composition(tmp_path: Path) -> None:
    assert repr(_configured(tmp_path)) == repr(authors_texture_augment())


def test_a_stock_op_swaps_in_from_the_command_line(tmp_path: Path) -> None:
    """Any albumentations op, by `_target_`, without code: here ChannelShuffle instead of InvertImg."""
    composition = _configured(
        tmp_path,
        "synthesis.texture_augment.transforms.6={_target_:albumentations.ChannelShuffle,p:1.0}",
        "synthesis.texture_augment.n=10",
    )
    assert isinstance(composition.transforms[6], A.ChannelShuffle)
    assert [type(op) for op in composition.transforms[7:]] == [
        augmenters.Autocontrast,
        augmenters.Equalize,
        A.Rotate,
    ]
    image = skimage.data.astronaut()[::16, ::16].copy()
    out = _run(composition, image, 0)
    assert out.shape == image.shape and composition.transforms[6].params  # it ran
