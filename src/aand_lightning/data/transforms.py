"""Shared preprocessing: bicubic resize (nearest for masks), no crop, ImageNet normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """(H, W) from an int (square) or a pair."""
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def resize(image_size: int | Sequence[int]) -> A.Compose:
    """Resize image (bicubic) and mask (nearest) together to the configured size."""
    height, width = as_size(image_size)
    return A.Compose(
        [A.Resize(height, width, interpolation=cv2.INTER_CUBIC, mask_interpolation=cv2.INTER_NEAREST)]
    )


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
