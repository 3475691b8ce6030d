"""A miniature dataset in MVTec layout, generated on first use from photos that ship with scikit-image.

It lets the whole pipeline run without downloading anything: normal images are crops of a tinted
texture photo (brick, grass or gravel), test images come from a held-out part of the photo, and three
kinds of defects are drawn with exact masks of the pixels they change.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from functools import cache, partial
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data as skdata

from aand_lightning.data.io import GOOD
from aand_lightning.data.mvtec import mvtec_layout_splits
from aand_lightning.data.records import DatasetError, Splits

CATEGORIES: tuple[str, ...] = ("brick", "grass", "gravel")
DEFECTS: tuple[str, ...] = ("scratch", "stain", "patch")
MARKER = ".aand_demo.json"
FORMAT_VERSION = 1
N_TRAIN, N_TEST_GOOD, N_PER_DEFECT = 40, 10, 5
# A fixed tint per texture, so the RGB ImageNet teacher sees colour and not three gray channels.
_TINTS = {"brick": (1.0, 0.62, 0.48), "grass": (0.58, 0.92, 0.42), "gravel": (0.86, 0.8, 0.7)}
_TRAIN_FRACTION = 0.6  # train crops come from the top 60 % of the photo, test crops from the rest
_CROP = (144, 200)  # crop side range in source pixels, the same for train and test so scales match


def _texture(category: str) -> np.ndarray:
    """The category's grayscale photo, tinted to uint8 RGB."""
    gray = getattr(skdata, category)().astype(np.float32)
    return np.clip(gray[..., None] * np.asarray(_TINTS[category], np.float32), 0, 255).astype(np.uint8)


def _crop(source: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A random square crop of `source`, resized to size x size."""
    side = int(rng.integers(_CROP[0], min(_CROP[1], *source.shape[:2]) + 1))
    top = int(rng.integers(0, source.shape[0] - side + 1))
    left = int(rng.integers(0, source.shape[1] - side + 1))
    return cv2.resize(
        source[top : top + side, left : left + side], (size, size), interpolation=cv2.INTER_AREA
    )


def normal_view(source: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A normal image: random crop, flip, 90-degree rotation and mild brightness change."""
    view = _crop(source, rng, size)
    if rng.random() < 0.5:
        view = view[:, ::-1]
    view = np.rot90(view, int(rng.integers(4)))
    gain = rng.uniform(0.9, 1.1)
    return np.ascontiguousarray(np.clip(view * gain, 0, 255).astype(np.uint8))


def _changed(image: np.ndarray, region: np.ndarray, replacement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replace the region and return the mask of pixels that really changed (the exact ground truth)."""
    defective = np.where(region[..., None], replacement, image).astype(np.uint8)
    return defective, (defective != image).any(axis=-1)


def _point(rng: np.random.Generator, size: int, margin: float) -> np.ndarray:
    """A random point at least margin*size away from the border."""
    return rng.uniform(margin * size, (1 - margin) * size, 2)


def _scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A thin bright or dark polyline."""
    size = image.shape[0]
    points = np.stack([_point(rng, size, 0.15) for _ in range(int(rng.integers(3, 6)))]).astype(np.int32)
    region = np.zeros(image.shape[:2], np.uint8)
    cv2.polylines(region, [points], isClosed=False, color=1, thickness=int(rng.integers(1, 3)))
    colour = (245, 245, 240) if rng.random() < 0.5 else (25, 22, 20)
    return _changed(image, region > 0, np.full_like(image, colour))


def _stain(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A blurred dark or coloured blob; pixels below a blend weight of 0.15 are left untouched."""
    size = image.shape[0]
    blob = np.zeros(image.shape[:2], np.float32)
    axes = (rng.uniform(0.06, 0.14, 2) * size).astype(int) + 1
    centre = tuple(int(c) for c in _point(rng, size, 0.2))
    cv2.ellipse(blob, centre, tuple(int(a) for a in axes), float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    weight = cv2.GaussianBlur(blob, (0, 0), sigmaX=float(axes.min()) / 3) * rng.uniform(0.6, 0.9)
    colour = np.asarray((70, 45, 25) if rng.random() < 0.5 else rng.integers(0, 256, 3), np.float32)
    stained = image * (1 - weight[..., None]) + colour * weight[..., None]
    return _changed(image, weight >= 0.15, np.rint(stained))


@cache
def _coffee() -> np.ndarray:
    """The foreign photo pasted by the "patch" defect, decoded once."""
    return skdata.coffee()


def _patch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A piece of another photo (skimage's coffee) pasted inside an irregular star-shaped region."""
    size = image.shape[0]
    corners = int(rng.integers(8, 13))
    angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
    radii = rng.uniform(0.1, 0.2) * size * rng.uniform(0.55, 1.0, corners)
    outline = _point(rng, size, 0.25) + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
    region = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(region, [outline.astype(np.int32)], 1)
    return _changed(image, region > 0, _crop(_coffee(), rng, size))


_DEFECT_MAKERS: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch,
    "stain": _stain,
    "patch": _patch,
}


def add_defect(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw a defect of `kind` on a uint8 RGB image; returns the new image and the bool changed mask."""
    return _DEFECT_MAKERS[kind](image, rng)


def _save(path: Path, pixels: np.ndarray) -> None:
    """PNG without timestamps, so the same seed gives the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


# (normal view, rng, the test part of the texture) → (image with the defect, its mask)
DefectMaker = Callable[[np.ndarray, np.random.Generator, np.ndarray], tuple[np.ndarray, np.ndarray]]


def write_category(
    folder: Path,
    category: str,
    seed: int,
    size: int,
    defects: Mapping[str, DefectMaker] | None = None,
    stream: tuple[int, ...] = (),
    test_from_train_part: bool = False,
) -> None:
    """All images and masks of one category, deterministic in (seed, category, stream). `defects`
    replaces the demo's own (benchmarks/unseen_defects.py draws other kinds on the same normal images).
    `test_from_train_part` crops the test images from the train part of the photo too, so that test
    normals come from the distribution of the train and validation ones (the demo keeps them apart)."""
    makers = defects or {kind: partial(_demo_defect, kind) for kind in DEFECTS}
    rng = np.random.default_rng([seed, zlib.crc32(category.encode()), *stream])
    texture = _texture(category)
    split_row = int(texture.shape[0] * _TRAIN_FRACTION)
    train_part, test_part = texture[:split_row], texture[split_row:]
    if test_from_train_part:
        test_part = train_part
    for index in range(N_TRAIN):
        _save(folder / "train" / GOOD / f"{index:03d}.png", normal_view(train_part, rng, size))
    for index in range(N_TEST_GOOD):
        _save(folder / "test" / GOOD / f"{index:03d}.png", normal_view(test_part, rng, size))
    for kind, make in makers.items():
        for index in range(N_PER_DEFECT):
            image, mask = make(normal_view(test_part, rng, size), rng, test_part)
            _save(folder / "test" / kind / f"{index:03d}.png", image)
            _save(folder / "ground_truth" / kind / f"{index:03d}_mask.png", mask.astype(np.uint8) * 255)


def _demo_defect(
    kind: str, image: np.ndarray, rng: np.random.Generator, _texture_part: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    return add_defect(image, kind, rng)


def _marker(folder: Path) -> dict | None:
    """The generation settings recorded in a complete demo folder, or None if it is incomplete."""
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _install(built: Path, target: Path, settings: dict) -> None:
    """Swap the finished folder into place; a copy with the same settings (another process won) is kept."""
    if _marker(target) == settings:
        return
    if target.exists():
        warnings.warn(
            f"Regenerating demo data in {target}: it was incomplete or made with other settings.",
            stacklevel=3,
        )
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}-stale-", dir=target.parent))
        target.rename(stale / target.name)
        shutil.rmtree(stale)
    try:
        built.rename(target)
    except OSError:
        if _marker(target) != settings:
            raise


def ensure_category(root: Path, category: str, seed: int = 0, image_size: int = 128) -> Path:
    """Generate `root/category` unless a complete copy with the same settings is already there."""
    if category not in CATEGORIES:
        raise DatasetError(
            f"Unknown demo category {category!r}; set dataset.category to one of {', '.join(CATEGORIES)}."
        )
    target = root / category
    settings = {"category": category, "seed": seed, "image_size": image_size, "version": FORMAT_VERSION}
    if _marker(target) == settings:
        return target
    root.mkdir(parents=True, exist_ok=True)
    workspace = Path(tempfile.mkdtemp(prefix=f".{category}-{os.getpid()}-", dir=root))
    try:
        built = workspace / category
        write_category(built, category, seed, image_size)
        (built / MARKER).write_text(json.dumps(settings))
        _install(built, target, settings)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    return target


def generate_demo(
    root: str | Path, categories: Sequence[str] = CATEGORIES, seed: int = 0, image_size: int = 128
) -> list[Path]:
    """Generate (or reuse) several demo categories; returns their folders."""
    return [ensure_category(Path(root), category, seed, image_size) for category in categories]


class DemoDataset:
    """A generated MVTec-layout dataset: same reader as MVTec AD, data created on first `splits()`."""

    def __init__(self, root: str | Path, category: str, seed: int = 0, image_size: int = 128) -> None:
        self.root = Path(root)
        self.category = category
        self.seed = seed
        self.image_size = image_size

    def splits(self) -> Splits:
        """Train (normal) and test samples, sorted by path; generates the data first if needed."""
        return mvtec_layout_splits(ensure_category(self.root, self.category, self.seed, self.image_size))
