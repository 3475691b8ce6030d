"""Texture sources that fill synthetic anomalies: a folder of images (DTD) or procedural textures."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from aand_lightning.data.records import DatasetError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
_LEVELS = np.arange(256, dtype=np.float32)


class TextureSource(Protocol):
    """Gives one augmented texture per call; all randomness comes from `rng` for reproducibility."""

    def sample(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A float32 (height, width, 3) RGB texture in [0, 1], already augmented."""
        ...


def _lut(image: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Apply a 256-entry lookup table (shared or one column per channel): the cheap way to remap pixels."""
    table = np.clip(np.rint(levels), 0, 255).astype(np.uint8)
    return cv2.LUT(image, table.reshape(1, 256, -1))


def gamma_contrast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma curve with gamma ~ U(0.5, 2)."""
    return _lut(image, 255.0 * (_LEVELS / 255.0) ** rng.uniform(0.5, 2.0))


def brightness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiply by U(0.8, 1.2) and add U(-30, 30)."""
    return _lut(image, _LEVELS * rng.uniform(0.8, 1.2) + rng.uniform(-30.0, 30.0))


def sharpen(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """imgaug's Sharpen: blend identity with a lightness-weighted Laplacian kernel."""
    alpha, lightness = rng.uniform(0.0, 1.0), rng.uniform(0.5, 2.0)
    identity = np.zeros((3, 3), np.float32)
    identity[1, 1] = 1.0
    laplace = np.full((3, 3), -1.0, np.float32)
    laplace[1, 1] = 8.0 + lightness
    return cv2.filter2D(image, -1, (1.0 - alpha) * identity + alpha * laplace)


def hue_saturation(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift hue (OpenCV's 0..179 wheel, wrapping) and saturation by up to ±50."""
    hue, saturation = rng.integers(-50, 51, size=2)
    table = np.stack([(_LEVELS + hue) % 180, _LEVELS + saturation, _LEVELS], axis=1)
    hsv = _lut(cv2.cvtColor(image, cv2.COLOR_RGB2HSV), table)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def solarize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Invert the levels above a threshold ~ U{32..128}."""
    cut = rng.integers(32, 129)
    return _lut(image, np.where(cut <= _LEVELS, 255.0 - _LEVELS, _LEVELS))


def posterize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep only the top 2..5 bits of each level."""
    keep = 0xFF & ~((1 << (8 - int(rng.integers(2, 6)))) - 1)
    return _lut(image, (np.arange(256) & keep).astype(np.float32))


def invert(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Negative image (rng unused; kept for the common augmentation signature)."""
    return _lut(image, 255.0 - _LEVELS)


def autocontrast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stretch each channel's min..max to 0..255 (cv2.minMaxLoc: numpy's strided min is 20x slower)."""
    extremes = np.array([cv2.minMaxLoc(channel)[:2] for channel in cv2.split(image)], np.float32)
    low, span = extremes[:, 0], np.maximum(extremes[:, 1] - extremes[:, 0], 1.0)
    return _lut(image, (_LEVELS[:, None] - low) * (255.0 / span))


def equalize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Histogram-equalise each channel."""
    return cv2.merge([cv2.equalizeHist(channel) for channel in cv2.split(image)])


def rotate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate by U(-45, 45) degrees about the centre, reflecting at the borders (no black corners)."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), rng.uniform(-45.0, 45.0), 1.0)
    return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT_101)


Augmentation = Callable[[np.ndarray, np.random.Generator], np.ndarray]
AUGMENTATIONS: tuple[Augmentation, ...] = (
    gamma_contrast,
    brightness,
    sharpen,
    hue_saturation,
    solarize,
    posterize,
    invert,
    autocontrast,
    equalize,
    rotate,
)


def augment_texture(image: np.ndarray, rng: np.random.Generator, count: int = 3) -> np.ndarray:
    """Apply `count` distinct augmentations in random order (DRAEM's SomeOf(3)); returns float32 in [0, 1].

    Works on uint8 so most steps are one cv2.LUT; `image` itself is never modified.
    """
    for index in rng.choice(len(AUGMENTATIONS), size=count, replace=False):
        image = AUGMENTATIONS[index](image, rng)
    return image.astype(np.float32) * np.float32(1.0 / 255.0)


class TextureFolder:
    """Textures read from image files under a folder (recursively), e.g. DTD's `images/`."""

    def __init__(self, texture_dir: str | Path, max_cached: int = 256) -> None:
        self.texture_dir = Path(texture_dir)
        if not self.texture_dir.is_dir():
            raise DatasetError(
                f"Texture folder {self.texture_dir} does not exist; set synthesis.texture_dir to a folder "
                "of images (e.g. DTD's images/) or to null for procedural textures."
            )
        self.paths = sorted(p for p in self.texture_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise DatasetError(
                f"Texture folder {self.texture_dir} has no jpg/jpeg/png/bmp/tif images; add texture images "
                "there or set synthesis.texture_dir to null for procedural textures."
            )
        self.max_cached = max_cached
        self._cache: dict[tuple[int, int, int], np.ndarray] = {}

    def _load(self, index: int, height: int, width: int) -> np.ndarray:
        """The texture resized to (height, width) as uint8 RGB; small folders end up fully in memory."""
        key = (index, height, width)
        if key in self._cache:
            return self._cache[key]
        image = cv2.imread(str(self.paths[index]), cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetError(f"Texture {self.paths[index]} cannot be read; delete or replace that file.")
        resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        texture = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
        if len(self._cache) < self.max_cached:
            self._cache[key] = texture
        return texture

    def sample(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A random texture of the folder, resized and augmented."""
        return augment_texture(self._load(int(rng.integers(len(self.paths))), height, width), rng)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, octaves: int) -> np.ndarray:
    """Multi-octave value noise in [0, 1]: random grids of 2**k cells, cubic-upsampled and summed."""
    total = np.zeros((height, width), np.float32)
    for octave in range(1, octaves + 1):
        grid = rng.random((2**octave + 1, 2**octave + 1)).astype(np.float32)
        total += 0.5**octave * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    return cv2.normalize(total, None, 0.0, 1.0, cv2.NORM_MINMAX)


def _rotated_coords(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by a random angle, so stripes and checkers are not axis-aligned."""
    angle = rng.uniform(0.0, math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return xs * math.cos(angle) + ys * math.sin(angle), ys * math.cos(angle) - xs * math.sin(angle)


def _clouds(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Fractal noise: stains, dirt, fibres when coloured."""
    return _smooth_noise(rng, height, width, octaves=int(rng.integers(4, 8)))


def _stripes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Wavy parallel stripes: scratches, threads, wood grain."""
    u, _ = _rotated_coords(rng, height, width)
    wobble = rng.uniform(0.0, 6.0) * _smooth_noise(rng, height, width, octaves=3)
    return 0.5 + 0.5 * np.sin(2.0 * math.pi * u / rng.uniform(4.0, 40.0) + wobble)


def _checkers(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Rotated checkerboard with soft noise: woven and tiled patterns."""
    u, v = _rotated_coords(rng, height, width)
    period = rng.uniform(6.0, 48.0)
    board = (np.floor(u / period) + np.floor(v / period)) % 2
    return 0.8 * board + 0.2 * _smooth_noise(rng, height, width, octaves=5)


def _blotches(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Noise quantised into a few flat levels: paint blobs, spots, corrosion patches."""
    levels = int(rng.integers(2, 6))
    return np.floor(_smooth_noise(rng, height, width, octaves=int(rng.integers(3, 7))) * levels) / levels


_PATTERNS = (_clouds, _stripes, _checkers, _blotches)


def _colourise(rng: np.random.Generator, pattern: np.ndarray) -> np.ndarray:
    """Map a [0, 1] pattern through a random palette of 2-4 colours and add grain, as uint8 RGB."""
    palette = rng.uniform(0.0, 255.0, size=(int(rng.integers(2, 5)), 3))
    stops = np.linspace(0.0, 1.0, len(palette))
    channels = [np.interp(pattern, stops, palette[:, c]) for c in range(3)]
    grain = rng.normal(0.0, rng.uniform(0.0, 12.0), size=pattern.shape)
    return np.clip(np.stack(channels, axis=-1) + grain[..., None], 0, 255).astype(np.uint8)


class ProceduralTextures:
    """Colourful generated textures: the fallback that ships, so synthesis works without a texture folder.

    The bank (clouds, stripes, checkers, blotches with random palettes) is a pure function of
    (seed, height, width), built at the first sample of a size; variety per draw comes from the
    augmentations, as with DTD.
    """

    def __init__(self, seed: int = 0, num_textures: int = 32) -> None:
        if num_textures < 1:
            raise ValueError(f"num_textures must be at least 1, got {num_textures}; raise it in the config.")
        self.seed = seed
        self.num_textures = num_textures
        self._banks: dict[tuple[int, int], list[np.ndarray]] = {}

    def bank(self, height: int, width: int) -> list[np.ndarray]:
        """The uint8 RGB textures for one image size, generated once."""
        if (height, width) not in self._banks:
            rng = np.random.default_rng([self.seed, height, width])
            self._banks[height, width] = [
                _colourise(rng, _PATTERNS[i % len(_PATTERNS)](rng, height, width))
                for i in range(self.num_textures)
            ]
        return self._banks[height, width]

    def sample(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A random texture of the bank, augmented."""
        textures = self.bank(height, width)
        return augment_texture(textures[int(rng.integers(len(textures)))], rng)


def make_texture_source(texture_dir: str | None, seed: int = 0) -> TextureSource:
    """The texture folder when one is configured, else the procedural fallback."""
    return TextureFolder(texture_dir) if texture_dir else ProceduralTextures(seed)
