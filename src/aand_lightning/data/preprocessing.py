"""The one preprocessing of a model: resize (method and size) and normalisation, as a value.

Built once from the config (`preprocessing` in conf/train.yaml), used by the datasets, saved in the
stage-2 checkpoint and the export sidecar, and read back by predict: what a deployed model is fed is
what it was trained on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from aand_lightning.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Resize,
    as_size,
    denormalize,
    normalize,
)


@dataclass(frozen=True)
class Preprocessing:
    """`image_size` (H, W) reached by `interpolation` (pil_bicubic: the authors'; cv2_cubic), then
    (pixels/255 − mean) / std per channel."""

    image_size: tuple[int, int]
    interpolation: str = "pil_bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", as_size(self.image_size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        self.resize  # noqa: B018 — an unknown interpolation fails here, where the value is built

    @property
    def resize(self) -> Resize:
        """Image (bicubic) and mask (nearest) to `image_size`: `resize(image=..., mask=...)`."""
        return Resize(self.image_size, self.interpolation)

    def normalize(self, pixels: np.ndarray) -> torch.Tensor:
        """float [0, 1] HxWx3 at `image_size` → normalised (3, H, W)."""
        return normalize(pixels, self.mean, self.std)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """uint8 HxWx3 of any size → (the resized uint8 image, the model's input (3, H, W))."""
        resized = self.resize(image=image)["image"]
        return resized, self.normalize(resized.astype(np.float32) / 255.0)

    def denormalize(self, images: torch.Tensor) -> np.ndarray:
        """Model inputs (B, 3, H, W) → uint8 (B, H, W, 3), for pictures."""
        return denormalize(images, self.mean, self.std)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for checkpoints and sidecars."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Preprocessing:
        return cls(**{k: tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v
                      for k, v in values.items()})  # fmt: skip
