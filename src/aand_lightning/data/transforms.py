"""Shared preprocessing: bicubic resize (nearest for masks), no crop, ImageNet normalisation; and the
seeding of albumentations augmentations (training images, synthesis textures) from a sample's seed."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image

from aand_lightning.errors import UserError

# An albumentations op or composition (Compose, RandomOrder, SomeOf, OneOf...): what the `augment` and
# `synthesis.texture_augment` configs build.
Transform = A.BasicTransform | A.BaseCompose

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# "pil_bicubic": what the authors ran (torchvision Resize on a PIL image = PIL's bicubic, antialiased when
# downscaling; masks by PIL's nearest). "cv2_cubic": OpenCV INTER_CUBIC without antialiasing (4-10/255
# mean difference on 4-8x downscales) with INTER_NEAREST masks; kept only to reproduce older runs.
INTERPOLATIONS = ("pil_bicubic", "cv2_cubic")


def as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """(H, W) from an int (square) or a pair."""
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


@dataclass(frozen=True)
class Resize:
    """Resize a uint8 RGB image (and optionally its uint8 mask) to `size` = (H, W).

    Called as `Resize(size)(image=..., mask=...)` and returns {"image": ..., "mask": ...} (the mask
    only when given), so every caller reads the same keys.
    """

    size: tuple[int, int]
    interpolation: str = "pil_bicubic"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            choices = ", ".join(INTERPOLATIONS)
            raise UserError(
                f"Unknown interpolation {self.interpolation!r}; "
                f"set preprocessing.interpolation to one of {choices}."
            )

    def _pil(self, array: np.ndarray, resample: Image.Resampling) -> np.ndarray:
        height, width = self.size
        return np.asarray(Image.fromarray(array).resize((width, height), resample))

    def _cv2(self, array: np.ndarray, flag: int) -> np.ndarray:
        height, width = self.size
        return cv2.resize(array, (width, height), interpolation=flag)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        if self.interpolation == "pil_bicubic":
            out = {"image": self._pil(image, Image.Resampling.BICUBIC)}
            if mask is not None:
                out["mask"] = self._pil(mask, Image.Resampling.NEAREST)
        else:
            out = {"image": self._cv2(image, cv2.INTER_CUBIC)}
            if mask is not None:
                out["mask"] = self._cv2(mask, cv2.INTER_NEAREST)
        return out


def resize(image_size: int | Sequence[int], interpolation: str = "pil_bicubic") -> Resize:
    """Resize image (bicubic) and mask (nearest) together to the configured size."""
    return Resize(as_size(image_size), interpolation)


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """float [0,1] HxWx3 → normalised CHW tensor."""
    mean_a = np.asarray(mean, dtype=np.float32)
    std_a = np.asarray(std, dtype=np.float32)
    return torch.from_numpy(((image - mean_a) / std_a).transpose(2, 0, 1).copy())


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised (B,3,H,W) tensor → uint8 (B,H,W,3) for pictures."""
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    pixels = (images * std_t + mean_t).clamp(0, 1) * 255
    return pixels.round().byte().permute(0, 2, 3, 1).cpu().numpy()


def seeded(transform: Transform, rng: np.random.Generator) -> Transform:
    """`transform` with a random state drawn from `rng` (one draw), shared by all its ops.

    albumentations keeps its own random state; setting it from the sample's generator before each
    call makes what an augmentation does a pure function of the sample's seed, in any loader worker
    and after a resume. One shared state, not `set_random_seed` (which gives every op of a
    composition the same seed, so their draws would repeat each other).
    """
    seed = int(rng.integers(2**63))
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return transform


def apply_seeded(
    transform: Transform, rng: np.random.Generator, what: str, image: np.ndarray, **targets: object
) -> dict:
    """`seeded(transform, rng)` applied to a uint8 `image` (and its `targets`, e.g. `masks`); an op
    that changes the image's size or type stops in one sentence naming the setting `what[0]` and the
    image `what[1]` (("augment", "training image"), ("synthesis.texture_augment", "texture"))."""
    out = seeded(transform, rng)(image=image, **targets)
    if out["image"].shape != image.shape or out["image"].dtype != np.uint8:
        setting, noun = what
        raise UserError(
            f"{setting} turned a {image.shape} uint8 {noun} into a {out['image'].shape} {out['image'].dtype} "
            "one; use albumentations ops that keep the size and the uint8 type."
        )
    return out


def is_identity(transform: Transform | None) -> bool:
    """Whether `transform` does nothing: None, or a composition of no ops (`conf/augment/none.yaml`)."""
    return transform is None or (isinstance(transform, A.BaseCompose) and not transform.transforms)
