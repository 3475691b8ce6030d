"""Foreground rules (the authors' recipe, at native resolution), rule selection, and the mask cache."""

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from scipy.ndimage import gaussian_filter

from aand_lightning.data.synthesis.foreground import (
    ForegroundCache,
    ForegroundRule,
    foreground_mask,
    nearest_resize,
    select_rule,
)

SIZE = 128
RADIUS = 30


def _disc(height: int, width: int, radius: float) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return (ys - (height - 1) / 2) ** 2 + (xs - (width - 1) / 2) ** 2 <= radius**2


@pytest.fixture
def bright_disc() -> np.ndarray:
    """A bright disc on a dark background, with one bright speck in a corner that blurring must remove."""
    image = np.full((SIZE, SIZE, 3), 20, np.uint8)
    image[_disc(SIZE, SIZE, RADIUS)] = 220
    image[5, 5] = 255
    return image


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_threshold_finds_the_disc_and_blur_removes_the_speck(bright_disc: np.ndarray) -> None:
    mask = foreground_mask(bright_disc, ForegroundRule("threshold", threshold=100, blur_sigma=2.0))
    assert mask.dtype == bool
    assert _iou(mask, _disc(SIZE, SIZE, RADIUS)) > 0.9
    assert not mask[5, 5]
    unblurred = foreground_mask(bright_disc, ForegroundRule("threshold", threshold=100, blur_sigma=0.0))
    assert unblurred[5, 5]


def test_inverted_threshold_is_the_complement(bright_disc: np.ndarray) -> None:
    rule = ForegroundRule("threshold", threshold=100, blur_sigma=2.0)
    inverted = ForegroundRule("threshold", threshold=100, invert=True, blur_sigma=2.0)
    np.testing.assert_array_equal(foreground_mask(bright_disc, inverted), ~foreground_mask(bright_disc, rule))


def test_disc_rule_is_the_authors_disc() -> None:
    """fore_extractor.py: pixels within int(0.45·H) of (W//2, H//2), by distance."""
    mask = foreground_mask(np.zeros((100, 160, 3), np.uint8), ForegroundRule("disc", radius=0.45))
    ys, xs = np.mgrid[0:100, 0:160]
    np.testing.assert_array_equal(mask, np.hypot(xs - 80, ys - 50) <= 45)
    assert mask[50, 35] and not mask[50, 34] and mask[50, 125] and not mask[50, 126]


def test_rect_rule_is_the_authors_rectangle() -> None:
    """fore_extractor.py: |x - W//2| <= int(extent/2·W) and |y - H//2| <= int(extent/2·H), bounds included."""
    mask = foreground_mask(np.zeros((100, 200, 3), np.uint8), ForegroundRule("rect", extent=0.5))
    expected = np.zeros((100, 200), bool)
    expected[25:76, 50:151] = True
    np.testing.assert_array_equal(mask, expected)


def _authors_threshold_mask(image: np.ndarray, threshold: int, size: tuple[int, int]) -> np.ndarray:
    """The authors' recipe written out: PIL grayscale, scipy blur σ 8, cv2.threshold, torch nearest-resize."""
    gray = np.asarray(Image.fromarray(image).convert("L"))
    _, binary = cv2.threshold(gaussian_filter(gray, sigma=8), threshold, 255, cv2.THRESH_BINARY)
    return F.interpolate(torch.from_numpy(binary)[None, None], size=size, mode="nearest")[0, 0].numpy() > 0


@pytest.mark.parametrize("invert", [False, True])
def test_threshold_rule_runs_at_native_resolution_like_the_authors(invert: bool) -> None:
    photo = skimage.data.coffee()  # 400 x 600
    rule = ForegroundRule("threshold", threshold=100, invert=invert)
    mask = foreground_mask(photo, rule, (64, 64))
    expected = _authors_threshold_mask(photo, 100, (64, 64))
    np.testing.assert_array_equal(mask, ~expected if invert else expected)
    assert 0.2 < mask.mean() < 0.8
    small = cv2.resize(photo, (64, 64), interpolation=cv2.INTER_AREA)
    after_resize = foreground_mask(small, rule)  # σ = 8 px of a 64 px image: far blurrier
    assert (after_resize != mask).mean() > 0.05


def test_nearest_resize_takes_the_floor_source_pixel() -> None:
    """torch's nearest reads source pixel floor(i·in/out): 0 and 4 of 8 (PIL's would read 2 and 6)."""
    mask = np.zeros((8, 8), bool)
    mask[::4, ::4] = True
    np.testing.assert_array_equal(nearest_resize(mask, (2, 2)), np.ones((2, 2), bool))
    np.testing.assert_array_equal(nearest_resize(mask, (8, 8)), mask)


def test_whole_rule_is_everything(bright_disc: np.ndarray) -> None:
    assert foreground_mask(bright_disc, ForegroundRule()).all()


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="use one of whole"):
        ForegroundRule("blob")


def test_select_rule_fallbacks() -> None:
    rules = {"screw": {"kind": "threshold", "threshold": 150, "invert": True}, "default": {"kind": "disc"}}
    assert select_rule(rules, "screw") == ForegroundRule("threshold", threshold=150, invert=True)
    assert select_rule(rules, "bottle") == ForegroundRule("disc")
    assert select_rule({"screw": {"kind": "rect"}}, "bottle") == ForegroundRule()
    assert select_rule(None, "bottle") == ForegroundRule()


def test_select_rule_reads_dictconfig_and_rejects_unknown_keys() -> None:
    rules = OmegaConf.create({"tire": {"kind": "rect", "extent": 0.7}, "default": {"threshold": 50}})
    assert select_rule(rules, "tire") == ForegroundRule("rect", extent=0.7)
    assert select_rule(rules, "foam").threshold == 50
    with pytest.raises(ValueError, match="unknown keys"):
        select_rule({"tire": {"radious": 0.4}}, "tire")


def _image_file(tmp_path: Path, image: np.ndarray) -> Path:
    path = tmp_path / "image.png"
    cv2.imwrite(str(path), image)
    return path


def test_disk_cache_writes_once_then_reads_the_file(tmp_path: Path, bright_disc: np.ndarray) -> None:
    path = _image_file(tmp_path, bright_disc)
    cache = ForegroundCache(tmp_path / "cache")
    rule = ForegroundRule("threshold", threshold=100, blur_sigma=2.0)
    computed = cache.get(path, bright_disc, rule, (32, 48))
    np.testing.assert_array_equal(computed, foreground_mask(bright_disc, rule, (32, 48)))
    files = list((tmp_path / "cache").glob("*.png"))
    assert len(files) == 1
    np.testing.assert_array_equal(cv2.imread(str(files[0]), cv2.IMREAD_GRAYSCALE) > 0, computed)
    # A black image under the same key can only give the disc back if the file was read.
    np.testing.assert_array_equal(cache.get(path, np.zeros_like(bright_disc), rule, (32, 48)), computed)
    assert len(list((tmp_path / "cache").glob("*.png"))) == 1


def test_disk_cache_key_follows_rule_mtime_shape_and_size(tmp_path: Path, bright_disc: np.ndarray) -> None:
    path = _image_file(tmp_path, bright_disc)
    cache = ForegroundCache(str(tmp_path / "cache"))
    cache.get(path, bright_disc, ForegroundRule("disc"), (SIZE, SIZE))
    cache.get(path, bright_disc, ForegroundRule("rect"), (SIZE, SIZE))
    cache.get(path, bright_disc, ForegroundRule("rect"), (32, 32))
    cache.get(path, bright_disc[:64], ForegroundRule("rect"), (32, 32))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    cache.get(path, bright_disc, ForegroundRule("rect"), (32, 32))
    assert len(list((tmp_path / "cache").glob("*.png"))) == 5


def test_memory_cache_returns_fresh_copies(tmp_path: Path, bright_disc: np.ndarray) -> None:
    path = _image_file(tmp_path, bright_disc)
    cache = ForegroundCache(None)
    rule = ForegroundRule("threshold", threshold=100, blur_sigma=2.0)
    first = cache.get(path, bright_disc, rule, (SIZE, SIZE))
    first[:] = False
    second = cache.get(path, np.zeros_like(bright_disc), rule, (SIZE, SIZE))
    assert _iou(second, _disc(SIZE, SIZE, RADIUS)) > 0.9
    assert [p.name for p in tmp_path.iterdir()] == ["image.png"]
