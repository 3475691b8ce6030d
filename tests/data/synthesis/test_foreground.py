"""Foreground rules on a synthetic bright disc, rule selection fallbacks, and the mask cache."""

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from aand_lightning.data.synthesis.foreground import (
    ForegroundCache,
    ForegroundRule,
    foreground_mask,
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


def test_disc_rule_is_centred_with_radius_relative_to_height() -> None:
    mask = foreground_mask(np.zeros((100, 160, 3), np.uint8), ForegroundRule("disc", radius=0.45))
    assert mask[50, 80] and not mask[0, 0] and not mask[50, 10]
    assert abs(mask.sum() / (np.pi * 45**2) - 1) < 0.02
    np.testing.assert_array_equal(mask, mask[::-1, ::-1])


def test_rect_rule_covers_the_extent_of_each_side() -> None:
    mask = foreground_mask(np.zeros((100, 200, 3), np.uint8), ForegroundRule("rect", extent=0.5))
    expected = np.zeros((100, 200), bool)
    expected[25:75, 50:150] = True
    np.testing.assert_array_equal(mask, expected)


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
    computed = cache.get(path, bright_disc, rule)
    files = list((tmp_path / "cache").glob("*.png"))
    assert len(files) == 1
    np.testing.assert_array_equal(cv2.imread(str(files[0]), cv2.IMREAD_GRAYSCALE) > 0, computed)
    # A black image under the same key can only give the disc back if the file was read.
    np.testing.assert_array_equal(cache.get(path, np.zeros_like(bright_disc), rule), computed)
    assert len(list((tmp_path / "cache").glob("*.png"))) == 1


def test_disk_cache_key_follows_rule_and_mtime(tmp_path: Path, bright_disc: np.ndarray) -> None:
    path = _image_file(tmp_path, bright_disc)
    cache = ForegroundCache(str(tmp_path / "cache"))
    cache.get(path, bright_disc, ForegroundRule("disc"))
    cache.get(path, bright_disc, ForegroundRule("rect"))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    cache.get(path, bright_disc, ForegroundRule("rect"))
    assert len(list((tmp_path / "cache").glob("*.png"))) == 3


def test_memory_cache_returns_fresh_copies(tmp_path: Path, bright_disc: np.ndarray) -> None:
    path = _image_file(tmp_path, bright_disc)
    cache = ForegroundCache(None)
    rule = ForegroundRule("threshold", threshold=100, blur_sigma=2.0)
    first = cache.get(path, bright_disc, rule)
    first[:] = False
    second = cache.get(path, np.zeros_like(bright_disc), rule)
    assert _iou(second, _disc(SIZE, SIZE, RADIUS)) > 0.9
    assert [p.name for p in tmp_path.iterdir()] == ["image.png"]
