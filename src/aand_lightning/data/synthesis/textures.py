"""Texture sources that fill synthetic anomalies: DTD (fetched when missing), a folder of images, or
procedural textures that ship with the package (`synthesis.textures`). The synthesizer augments them
(`synthesis.texture_augment`, data/synthesis/augmenters.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from aand_lightning.data.download import fetch_into
from aand_lightning.data.io import list_images
from aand_lightning.data.records import DatasetError
from aand_lightning.errors import UserError

TEXTURES = ("procedural", "dtd", "folder")  # the values of synthesis.textures


class TextureSource(Protocol):
    """Gives one texture per call; all randomness comes from `rng` for reproducibility.

    `description` says which textures a run used, in a few words (for metrics and summaries).
    """

    @property
    def description(self) -> str: ...

    def sample(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A uint8 (height, width, 3) RGB texture; the caller must not modify it (sources cache them)."""
        ...


class TextureFolder:
    """Textures read from image files under a folder (recursively), e.g. DTD's `images/`."""

    def __init__(self, texture_dir: str | Path, max_cached: int = 256) -> None:
        self.texture_dir = Path(texture_dir)
        if not self.texture_dir.is_dir():
            raise DatasetError(
                f"Texture folder {self.texture_dir} does not exist; set synthesis.texture_dir to a folder "
                "of images (e.g. DTD's images/) or to null for procedural textures."
            )
        self.paths = list_images(self.texture_dir, recursive=True)
        if not self.paths:
            raise DatasetError(
                f"Texture folder {self.texture_dir} has no jpg/jpeg/png/bmp/tif images; add texture images "
                "there or set synthesis.texture_dir to null for procedural textures."
            )
        self.max_cached = max_cached
        self._cache: dict[tuple[int, int, int], np.ndarray] = {}

    @property
    def description(self) -> str:
        return f"folder ({self.texture_dir}, {len(self.paths)} images)"

    def _load(self, index: int, height: int, width: int) -> np.ndarray:
        """The texture resized to (height, width) as uint8 RGB; small folders end up fully in memory."""
        key = (index, height, width)
        if key in self._cache:
            return self._cache[key]
        image = cv2.imread(str(self.paths[index]), cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetError(f"Texture {self.paths[index]} cannot be read; delete or replace that file.")
        resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)  # the authors' (default)
        texture = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
        texture.setflags(write=False)  # cached and shared: an op that writes in place fails loudly
        if len(self._cache) < self.max_cached:
            self._cache[key] = texture
        return texture

    def sample(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A random texture of the folder, resized."""
        return self._load(int(rng.integers(len(self.paths))), height, width)


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
    synthesizer's augmentations, as with DTD.
    """

    def __init__(self, seed: int = 0, num_textures: int = 32) -> None:
        if num_textures < 1:
            raise ValueError(f"num_textures must be at least 1, got {num_textures}; raise it in the config.")
        self.seed = seed
        self.num_textures = num_textures
        self._banks: dict[tuple[int, int], list[np.ndarray]] = {}

    @property
    def description(self) -> str:
        return f"procedural (seed {self.seed}, {self.num_textures} textures)"

    def bank(self, height: int, width: int) -> list[np.ndarray]:
        """The uint8 RGB textures for one image size, generated once."""
        if (height, width) not in self._banks:
            rng = np.random.default_rng([self.seed, height, width])
            bank = [
                _colourise(rng, _PATTERNS[i % len(_PATTERNS)](rng, height, width))
                for i in range(self.num_textures)
            ]
            for texture in bank:  # shared by every draw: an op that writes in place fails loudly
                texture.setflags(write=False)
            self._banks[height, width] = bank
        return self._banks[height, width]

    def sample(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A random texture of the bank."""
        textures = self.bank(height, width)
        return textures[int(rng.integers(len(textures)))]


class DTDTextures:
    """The Describable Textures Dataset's `images/` (5640 photos in 47 classes), as the paper uses.

    `root` is DTD's folder (holding images/); it is fetched there on first use when missing or empty,
    not at construction, so a run that never synthesises (stage 2 alone) never downloads it. Touch
    `description` in the main process before DataLoader workers start: the download then happens
    once, with its progress bar, and a failure is the one-sentence DownloadError.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._folder: TextureFolder | None = None

    @property
    def folder(self) -> TextureFolder:
        """The images, fetched and listed on first access."""
        if self._folder is None:
            images = fetch_into("dtd", self.root) / "images"
            if not images.is_dir():
                raise DatasetError(
                    f"DTD folder {self.root} has no images/ folder; set synthesis.dtd_root to the folder "
                    f"that holds DTD's images/, or empty {self.root} to fetch DTD there."
                )
            self._folder = TextureFolder(images)
        return self._folder

    @property
    def description(self) -> str:
        return f"dtd ({self.folder.texture_dir}, {len(self.folder.paths)} images)"

    def sample(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A random DTD image, resized."""
        return self.folder.sample(rng, height, width)


def make_texture_source(
    texture_dir: str | Path | None = None,
    seed: int = 0,
    textures: str = "procedural",
    dtd_root: str | Path | None = None,
) -> TextureSource:
    """The source `synthesis.textures` names: procedural | dtd (fetched into dtd_root) | folder (texture_dir).

    A texture_dir alone also selects its folder, as before `textures` existed.
    """
    if textures not in TEXTURES:
        raise UserError(f"synthesis.textures is {textures!r}; set it to one of {', '.join(TEXTURES)}.")
    if textures == "dtd":
        if texture_dir:
            raise UserError(
                "synthesis.textures=dtd fetches its own images but synthesis.texture_dir is set too; pass "
                "synthesis.textures=folder to use that folder, or synthesis.texture_dir=null."
            )
        if not dtd_root:
            raise UserError("synthesis.textures=dtd needs synthesis.dtd_root, the folder DTD is or goes in.")
        return DTDTextures(dtd_root)
    if texture_dir:
        return TextureFolder(texture_dir)
    if textures == "folder":
        raise UserError("synthesis.textures=folder needs synthesis.texture_dir=/path/to/texture/images.")
    return ProceduralTextures(seed)
