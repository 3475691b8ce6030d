"""Texture sources that fill synthetic anomalies: DTD (fetched when missing), a folder of images, or
procedural textures that ship with the package (`synthesis.textures`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from aand_lightning.data.download import fetch_into
from aand_lightning.data.io import list_images
from aand_lightning.data.records import DatasetError
from aand_lightning.errors import UserError

TEXTURES = ("procedural", "dtd", "folder")  # the values of synthesis.textures
_LEVELS = np.arange(256, dtype=np.float32)


class TextureSource(Protocol):
    """Gives one augmented texture per call; all randomness comes from `rng` for reproducibility.

    `description` says which textures a run used, in a few words (for metrics and summaries).
    """

    @property
    def description(self) -> str: ...

    def sample(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A float32 (height, width, 3) RGB texture in [0, 1], already augmented."""
        ...


def _lut(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Apply a 256-entry uint8 lookup table (shared, or one column per channel): imgaug's apply_lut."""
    return cv2.LUT(image, np.ascontiguousarray(table, dtype=np.uint8).reshape(1, 256, -1))


def gamma_contrast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """imgaug GammaContrast((0.5, 2.0), per_channel=True): one gamma ~ U(0.5, 2) per channel.

    Table 255·(v/255)^gamma in float32, truncated to uint8 as imgaug's adjust_contrast_gamma does.
    """
    gammas = rng.uniform(0.5, 2.0, size=3).astype(np.float32)
    levels = np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None]
    return _lut(image, np.clip(levels**gammas * 255, 0, 255).astype(np.uint8))


# (to, back, brightness channel) of imgaug's WithBrightnessChannels colour spaces, drawn uniformly per image.
_BRIGHTNESS_SPACES = (
    (cv2.COLOR_RGB2YCrCb, cv2.COLOR_YCrCb2RGB, 0),
    (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB, 2),
    (cv2.COLOR_RGB2HLS, cv2.COLOR_HLS2RGB, 1),
    (cv2.COLOR_RGB2Lab, cv2.COLOR_Lab2RGB, 0),
    (cv2.COLOR_RGB2Luv, cv2.COLOR_Luv2RGB, 0),
    (cv2.COLOR_RGB2YUV, cv2.COLOR_YUV2RGB, 0),
)


def brightness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """imgaug MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30)) on a brightness channel, not RGB.

    The colour space is one of YCrCb, HSV, HLS, Lab, Luv, YUV (imgaug's default list); only its
    brightness channel changes: multiplied by U(0.8, 1.2) (float32 table, truncated) and shifted by
    round(U(-30, 30)), in random order.
    """
    to_space, back, channel = _BRIGHTNESS_SPACES[rng.integers(len(_BRIGHTNESS_SPACES))]
    multiply = np.clip(_LEVELS * np.float32(rng.uniform(0.8, 1.2)), 0, 255).astype(np.uint8)
    add = np.clip(np.arange(256) + int(np.round(rng.uniform(-30.0, 30.0))), 0, 255).astype(np.uint8)
    table = add[multiply] if rng.random() < 0.5 else multiply[add]
    converted = cv2.cvtColor(image, to_space)
    converted[..., channel] = table[converted[..., channel]]
    return cv2.cvtColor(converted, back)


def sharpness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """imgaug pillike.EnhanceSharpness(): PIL's ImageEnhance.Sharpness with factor ~ U(0, 2)."""
    return np.asarray(ImageEnhance.Sharpness(Image.fromarray(image)).enhance(rng.uniform(0.0, 2.0)))


def hue_saturation(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """imgaug AddToHueAndSaturation((-50, 50), per_channel=True): hue and saturation shifts drawn apart.

    Both are integers in -50..50; the hue one is scaled to OpenCV's 0..179 wheel as imgaug does
    (int(h / 255 · 180), so -35..35) and wraps; saturation is clipped.
    """
    hue, saturation = rng.integers(-50, 51, size=2)
    hue = int(np.float32(hue) / np.float32(255.0) * np.float32(180.0))
    levels = np.arange(256)
    table = np.stack([(levels + hue) % 180, np.clip(levels + saturation, 0, 255), levels], axis=1)
    hsv = _lut(cv2.cvtColor(image, cv2.COLOR_RGB2HSV), table)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def solarize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """imgaug Solarize(0.5, threshold=(32, 128)): with probability 0.5, invert levels >= int(U(32, 128))."""
    if rng.random() >= 0.5:
        return image
    cut = int(rng.uniform(32.0, 128.0))
    return _lut(image, np.where(cut <= _LEVELS, 255.0 - _LEVELS, _LEVELS))


def posterize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """imgaug Posterize() (UniformColorQuantizationToNBits): keep the top U{1..8} bits of every level."""
    bits = int(rng.integers(1, 9))
    return _lut(image, np.arange(256) & (0xFF << (8 - bits)) & 0xFF)


def invert(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """imgaug Invert(): the negative, always (rng unused; kept for the common augmentation signature)."""
    return _lut(image, 255.0 - _LEVELS)


def autocontrast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """imgaug pillike.Autocontrast(): PIL's ImageOps.autocontrast with cutoff ~ U{0..20} percent."""
    return np.asarray(ImageOps.autocontrast(Image.fromarray(image), cutoff=int(rng.integers(0, 21))))


def _equalize_table(channel: np.ndarray) -> np.ndarray:
    """imgaug's equalize lookup for one channel: its own re-implementation of PIL's, which it runs on
    images of 4096 values and more (RGB from about 37x37 px: every size we train at).

    It differs from PIL's ImageOps.equalize in one place: the step is the count of all levels but 255
    divided by 255, where PIL leaves out the highest level present rather than level 255.
    """
    histogram = cv2.calcHist([channel], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    step = histogram[:-1].sum() // 255
    if np.count_nonzero(histogram) <= 1 or step == 0:
        return np.arange(256)
    below = np.concatenate([[0], np.cumsum(histogram)[:-1]])
    return np.minimum((step // 2 + below) // step, 255)


def equalize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """imgaug pillike.Equalize(): histogram-equalise each channel (rng unused)."""
    return _lut(image, np.stack([_equalize_table(c) for c in cv2.split(image)], axis=1))


def rotate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """imgaug Affine(rotate=(-45, 45)): bilinear rotation about the centre, black corners (cval 0).

    imgaug rotates by +angle in its y-down frame, which is cv2.getRotationMatrix2D's -angle.
    """
    height, width = image.shape[:2]
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    matrix = cv2.getRotationMatrix2D(centre, -rng.uniform(-45.0, 45.0), 1.0)
    return cv2.warpAffine(
        image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


Augmentation = Callable[[np.ndarray, np.random.Generator], np.ndarray]
AUGMENTATIONS: tuple[Augmentation, ...] = (
    gamma_contrast,
    brightness,
    sharpness,
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

    @property
    def description(self) -> str:
        return f"procedural (seed {self.seed}, {self.num_textures} textures)"

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
        """A random DTD image, resized and augmented."""
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
