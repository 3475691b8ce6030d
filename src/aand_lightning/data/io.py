"""Reading images and masks from disk, and finding them, with errors that say how to fix the data.

Every reader of a dataset layout uses these helpers, so that bad input (a corrupt file, a missing
mask where the layout has one for every defect, a wrong root) fails in the main process with one
actionable sentence instead of deep inside a dataloader worker.
"""

from __future__ import annotations

import struct
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
from PIL import Image

from aand_lightning.data.records import DatasetError, Sample
from aand_lightning.errors import did_you_mean

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
GOOD = "good"
ON_CORRUPT = ("error", "skip")

# What Pillow raises for truncated, malformed or hostile files (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)
_WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_T = TypeVar("_T")


class CorruptImageError(DatasetError):
    """An image or mask file that cannot be decoded; carries the path so callers can skip it."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"Cannot read image {path} ({reason}); replace or remove the file, "
            "or set datamodule.on_corrupt=skip to leave it out."
        )

    @property
    def skipped(self) -> str:
        """The warning for a file left out (training's on_corrupt=skip, predict): no training option in it."""
        return f"Skipping unreadable file {self.path} ({self.reason})."


def _decoded(path: Path, convert: Callable[[Image.Image], _T]) -> _T:
    """Fully decode `path` (a lazy open would miss truncated data) and convert the pixels."""
    try:
        with Image.open(path) as img:
            img.load()
            return convert(img)
    except _DECODE_ERRORS as err:
        raise CorruptImageError(Path(path), str(err) or type(err).__name__) from err


def _wide_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """16-bit to 8-bit by scaling (65535 -> 255); clipping would saturate every bright pixel."""
    return ((np.clip(pixels.astype(np.int64), 0, 65535) + 128) // 257).astype(np.uint8)


def rgb_array(img: Image.Image) -> np.ndarray:
    """Any Pillow mode to uint8 RGB; transparent pixels are composited on black."""
    if img.mode in _WIDE_GRAY_MODES:
        return np.repeat(_wide_to_uint8(np.asarray(img))[..., None], 3, axis=-1)
    if "A" in img.getbands() or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        return ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)
    return np.asarray(img.convert("RGB"))


def _mask_array(img: Image.Image) -> np.ndarray:
    """Non-zero in any non-alpha band; palette masks keep their indices (VisA stores label ids)."""
    pixels = np.asarray(img)
    if pixels.ndim == 2:
        return pixels > 0
    colour = [i for i, band in enumerate(img.getbands()) if band != "A"]
    return (pixels[..., colour] > 0).any(axis=-1)


def read_image(path: Path) -> np.ndarray:
    """Read an image as uint8 HxWx3 RGB, whatever its mode (grayscale, RGBA, palette, 16-bit)."""
    return _decoded(path, rgb_array)


def read_mask(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask as bool HxW (> 0), nearest-resized when it is not `size` (H, W); `check_samples`
    reports such masks once, before training."""
    mask = _decoded(path, _mask_array)
    if size is None or mask.shape == tuple(size):
        return mask
    resized = cv2.resize(mask.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return resized > 0


def _size(img: Image.Image) -> tuple[int, int]:
    """(H, W): checking an image needs the decode itself and its size; its kind comes from the header."""
    return img.height, img.width


def _conversion(path: Path) -> str | None:
    """What read_image turns `path` into 8-bit RGB from, named for the warning; None if it already is.

    Read from the header, not the pixels: Pillow itself decodes 16-bit RGB as 8-bit RGB.
    """
    with Image.open(path) as img:
        raw = img.tile[0][3] if img.tile else img.mode
        raw_mode = str(raw[0] if isinstance(raw, tuple) else raw)
        if img.mode in _WIDE_GRAY_MODES or ";16" in raw_mode:
            return "16-bit"
        if img.mode in ("P", "PA"):
            return "palette"
        if "A" in img.getbands() or "transparency" in img.info:
            return "with alpha"
        if img.mode in ("L", "1"):
            return "grayscale"
        return None if img.mode == "RGB" else img.mode


@dataclass(frozen=True)
class _Check:
    """What decoding one sample found: an unreadable file, else the image's conversion and mask state."""

    error: CorruptImageError | None = None
    conversion: str | None = None
    empty_mask: bool = False
    sizes: tuple[tuple[int, int], tuple[int, int]] | None = None  # (mask, image) H x W when they differ


def _check(sample: Sample) -> _Check:
    """Decode the image, then the mask; stop at the first unreadable file."""
    try:
        size = _decoded(sample.image, _size)
        mask = _decoded(sample.mask, _mask_array) if sample.mask is not None else None
    except CorruptImageError as err:
        return _Check(error=err)
    return _Check(
        conversion=_conversion(sample.image),
        empty_mask=mask is not None and not mask.any(),
        sizes=(mask.shape, size) if mask is not None and mask.shape != size else None,
    )


def _note_unmasked(samples: list[Sample]) -> None:
    """One line when anomalous images have no mask: what the pixel metrics then cover."""
    anomalous = [sample for sample in samples if sample.label == 1]
    unmasked = [sample.image for sample in anomalous if not sample.mask_known]
    if not unmasked:
        return
    if len(unmasked) == len(anomalous):
        note = (
            f"None of the {len(anomalous)} anomalous test images has a mask (first: {unmasked[0]}), so only "
            "image metrics are computed; add their masks to get pixel metrics."
        )
    else:
        note = (
            f"{len(unmasked)} of the {len(anomalous)} anomalous test images have no mask (first: "
            f"{unmasked[0]}), so pixel metrics cover only the test images whose masks are known."
        )
    warnings.warn(note, stacklevel=4)


def _warn_data(checked: list[tuple[Sample, _Check]]) -> None:
    """One warning per anomalous image with an all-zero mask, one for anomalous images without a mask,
    one for all masks of another size than their image, one for all converted images."""
    _note_unmasked([sample for sample, _ in checked])
    for sample, check in checked:
        if check.empty_mask:
            warnings.warn(
                f"Mask {sample.mask} of anomalous image {sample.image} is empty (all zero), so pixel "
                "metrics count the whole image as normal; draw the defect into the mask or label the image "
                "normal.",
                stacklevel=3,
            )
    resized = [(sample.mask, check.sizes) for sample, check in checked if check.sizes]
    if resized:
        path, ((mh, mw), (h, w)) = resized[0]
        warnings.warn(
            f"{len(resized)} mask(s) differ in size from their images (first: {path} is {mh}x{mw}, its image "
            f"{h}x{w}); they are resized with nearest neighbour, so check they belong to their images.",
            stacklevel=3,
        )
    converted = [(sample.image, check.conversion) for sample, check in checked if check.conversion]
    if converted:
        kinds = ", ".join(f"{count} {kind}" for kind, count in Counter(k for _, k in converted).most_common())
        warnings.warn(
            f"Converted {len(converted)} image(s) to 8-bit RGB: {kinds} (first: {converted[0][0]}).",
            stacklevel=3,
        )


def check_samples(samples: list[Sample], on_corrupt: str = "error") -> list[Sample]:
    """Decode every image and mask once, up front, and keep the readable samples.

    on_corrupt="error" raises the first CorruptImageError; "skip" warns once per bad sample. The
    readable samples are then warned about: anomalous images with empty masks or without masks, and
    images that read_image converts (grayscale, alpha, palette, 16-bit), counted per kind.
    Decoding runs in threads because Pillow releases the GIL while it decodes.
    """
    if on_corrupt not in ON_CORRUPT:
        raise DatasetError(f"datamodule.on_corrupt is {on_corrupt!r}; set it to 'error' or 'skip'.")
    with ThreadPoolExecutor() as pool:
        checks = list(pool.map(_check, samples))
    readable = []
    for sample, check in zip(samples, checks, strict=True):
        if check.error is None:
            readable.append((sample, check))
        elif on_corrupt == "error":
            raise check.error
        else:
            warnings.warn(check.error.skipped, stacklevel=2)
    _warn_data(readable)
    return [sample for sample, _ in readable]


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in `folder` (and below it when `recursive`), sorted; hidden files (e.g. macOS
    `._x.png`) are ignored. The one listing every reader, texture folder and `predict` uses."""
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in (folder.rglob("*") if recursive else folder.iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()
    )


def require_dir(folder: Path, fix: str) -> Path:
    """Fail early with the fix, rather than later with an empty dataset."""
    if not folder.is_dir():
        raise DatasetError(f"Folder {folder} does not exist; {fix}.")
    return folder


def require_images(folder: Path, fix: str) -> list[Path]:
    """The sorted images of a folder that must hold some."""
    images = list_images(require_dir(folder, fix))
    if not images:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DatasetError(f"Folder {folder} holds no images ({suffixes}); {fix}.")
    return images


def require_root(root: Path, dataset: str, layout: str) -> Path:
    """The dataset root must exist; its own sentence, since the fix is dataset.root, not the category."""
    if not root.is_dir():
        raise DatasetError(
            f"{dataset} root {root} does not exist; pass dataset.root=/path/to/{dataset.replace(' ', '')}, "
            f"the folder that holds {layout}."
        )
    return root


def category_dir(root: Path, category: str, known: Sequence[str], dataset: str, layout: str) -> Path:
    """`root/category`, any name in the layout; a missing one suggests a close known or existing name.

    `known` is the dataset's category list from its config (a folder need not be one of them).
    """
    folder = require_root(root, dataset, layout) / category
    if not folder.is_dir():
        present = [path.name for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")]
        hint = did_you_mean(category, [*known, *sorted(present)])
        raise DatasetError(
            f"{dataset} category folder {folder} does not exist{hint}; "
            f"set dataset.category to a folder of {root} or fix dataset.root (expected layout: {layout})."
        )
    return folder


def _paired_mask(image: Path, indexes: Sequence[dict[str, Path]]) -> Path | None:
    """The mask named after the image (`<stem>_mask.*`, else `<stem>.*`) in the first folder that has one.

    Pairing is by name, never by sort order, so a missing or extra mask cannot shift the pairs.
    """
    for index in indexes:
        mask = index.get(f"{image.stem}_mask") or index.get(image.stem)
        if mask is not None:
            return mask
    return None


def _required_mask(image: Path, folders: Sequence[Path], mask: Path | None) -> Path:
    """A layout whose every defect is drawn (MVTec's): a missing mask means damaged data."""
    if mask is None:
        places = ", ".join(str(folder) for folder in folders)
        raise DatasetError(
            f"Anomalous test image {image} has no mask named {image.stem}_mask.png or {image.stem}.png "
            f"in {places}; add its mask there or remove the image."
        )
    return mask


def defect_samples(
    test_dir: Path,
    mask_folders: Callable[[str], Sequence[Path]],
    image_subdir: str = "",
    masks_required: bool = True,
) -> list[Sample]:
    """Samples of a `test_dir/<defect>/[image_subdir]/*` layout: "good" is normal, others anomalous.

    mask_folders(defect) names the folders searched, in order, for each anomalous image's mask. An
    image without one is an error when `masks_required`, else a sample whose mask is unknown.
    """
    loose = list_images(test_dir)
    if loose:
        raise DatasetError(
            f"Test folder {test_dir} holds {len(loose)} image(s) outside a subfolder, first {loose[0]}; "
            f"move normal images into {test_dir / GOOD} and anomalous ones into {test_dir}/<defect>."
        )
    samples = []
    defect_dirs = (path for path in test_dir.iterdir() if path.is_dir() and not path.name.startswith("."))
    for defect_dir in sorted(defect_dirs):
        images = list_images(defect_dir / image_subdir)
        if defect_dir.name == GOOD:
            samples += [Sample(image, 0) for image in images]
            continue
        folders = mask_folders(defect_dir.name)
        indexes = [{path.stem: path for path in list_images(folder)} for folder in folders]
        masks = [_paired_mask(image, indexes) for image in images]
        if masks_required:
            masks = [_required_mask(image, folders, mask) for image, mask in zip(images, masks, strict=True)]
        samples += [
            Sample(image, 1, defect_dir.name, mask) for image, mask in zip(images, masks, strict=True)
        ]
    return samples
