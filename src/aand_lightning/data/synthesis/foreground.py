"""Foreground masks: where on the object a synthetic anomaly may appear, computed on the fly and cached."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

FOREGROUND_KINDS = ("whole", "threshold", "disc", "rect")


@dataclass(frozen=True)
class ForegroundRule:
    """How one category's foreground is found.

    kind: "whole" (every pixel), "threshold" (grayscale, Gaussian blur `blur_sigma`, > `threshold`,
    flipped by `invert`), "disc" (centred disc of radius `radius`·H), "rect" (centred rectangle
    covering `extent` of each side).
    """

    kind: str = "whole"
    threshold: float = 0.0
    invert: bool = False
    radius: float = 0.45
    extent: float = 0.7
    blur_sigma: float = 8.0

    def __post_init__(self) -> None:
        if self.kind not in FOREGROUND_KINDS:
            kinds = ", ".join(FOREGROUND_KINDS)
            raise ValueError(f"Unknown foreground kind {self.kind!r}; use one of {kinds}.")


def select_rule(rules: Mapping[str, Mapping[str, Any]] | None, category: str) -> ForegroundRule:
    """rules[category], else rules["default"], else the whole image (works on DictConfig and dict)."""
    entry = (rules or {}).get(category, (rules or {}).get("default"))
    if entry is None:
        return ForegroundRule()
    known = sorted(f.name for f in fields(ForegroundRule))
    unknown = sorted(set(map(str, entry)) - set(known))
    if unknown:
        raise ValueError(f"Foreground rule for {category!r} has unknown keys {unknown}; use only {known}.")
    return ForegroundRule(**{str(key): value for key, value in entry.items()})


def _centred_disc(height: int, width: int, radius: float) -> np.ndarray:
    """Pixels whose centre lies within `radius` pixels of the image centre."""
    ys = np.arange(height, dtype=np.float32)[:, None] - (height - 1) / 2.0
    xs = np.arange(width, dtype=np.float32)[None, :] - (width - 1) / 2.0
    return ys * ys + xs * xs <= radius * radius


def _centred_rect(height: int, width: int, extent: float) -> np.ndarray:
    """A centred rectangle spanning `extent` of the height and of the width."""
    mask = np.zeros((height, width), bool)
    rows, cols = round(extent * height), round(extent * width)
    top, left = (height - rows) // 2, (width - cols) // 2
    mask[top : top + rows, left : left + cols] = True
    return mask


def _thresholded(image: np.ndarray, rule: ForegroundRule) -> np.ndarray:
    """Blurred grayscale above the threshold (or at/below it when inverted)."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if rule.blur_sigma > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), rule.blur_sigma)
    return (gray <= rule.threshold) if rule.invert else (gray > rule.threshold)


def foreground_mask(image: np.ndarray, rule: ForegroundRule) -> np.ndarray:
    """A bool (H, W) mask of where anomalies may be synthesised on a uint8 (H, W, 3) RGB image."""
    height, width = image.shape[:2]
    if rule.kind == "threshold":
        return _thresholded(image, rule)
    if rule.kind == "disc":
        return _centred_disc(height, width, rule.radius * height)
    if rule.kind == "rect":
        return _centred_rect(height, width, rule.extent)
    return np.ones((height, width), bool)


class ForegroundCache:
    """Foreground masks computed once per (file, size, rule): in memory, or as small PNGs under cache_dir.

    The key hashes the resolved path, its mtime, the image shape and the rule, so an edited image,
    another resize or a changed rule never reuses a stale mask. Files are written atomically, so
    DataLoader workers may share one cache_dir.
    """

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._memory: dict[str, np.ndarray] = {}

    @staticmethod
    def key(image_path: Path, image: np.ndarray, rule: ForegroundRule) -> str:
        """Hash identifying one mask."""
        path = Path(image_path).resolve()
        text = f"{path}|{path.stat().st_mtime_ns}|{image.shape}|{rule!r}"
        return hashlib.sha1(text.encode()).hexdigest()

    def get(self, image_path: Path, image: np.ndarray, rule: ForegroundRule) -> np.ndarray:
        """The foreground mask of `image` (read from `image_path`), from the cache when present.

        Always a fresh array, so callers may modify it without corrupting the cache.
        """
        key = self.key(image_path, image, rule)
        if self.cache_dir is None:
            if key not in self._memory:
                self._memory[key] = foreground_mask(image, rule)
            return self._memory[key].copy()
        return self._from_disk(self.cache_dir / f"{key}.png", image, rule)

    @staticmethod
    def _from_disk(file: Path, image: np.ndarray, rule: ForegroundRule) -> np.ndarray:
        """Read the cached PNG, else compute the mask and write it (a bad or mis-sized file is redone)."""
        cached = cv2.imread(str(file), cv2.IMREAD_GRAYSCALE) if file.exists() else None
        if cached is not None and cached.shape == image.shape[:2]:
            return cached > 0
        mask = foreground_mask(image, rule)
        file.parent.mkdir(parents=True, exist_ok=True)
        partial = file.with_name(f"{file.stem}.{os.getpid()}.partial.png")
        cv2.imwrite(str(partial), mask.astype(np.uint8) * 255)
        os.replace(partial, file)
        return mask
