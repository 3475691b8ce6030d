"""Pixel anomaly maps and image scores: the teacher–student discrepancy (the paper's map: summed levels,
Gaussian σ=4) and the RAA gate map (stage 1's own detector), both smoothed the same way; the names of
every map a model can give (`MapName`)."""

from __future__ import annotations

from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn


class MapName(str, Enum):
    """The anomaly maps, by the name configs, metrics.json and tables use (`anomaly_map.output`).

    aand: the paper's teacher–student map; gate: the RAA gate map (stage 1's detector, and stage 2's
    with RAA); fused: both joined on normal statistics (models/fused_map.py); amplification: the
    encoder's features against the amplified ones, the paper's map with the amplified teacher in the
    student's place (stage 1's test in the authors' code, and their stage-1 stopping metric).
    """

    AAND = "aand"
    GATE = "gate"
    FUSED = "fused"
    AMPLIFICATION = "amplification"

    @property
    def scored_by(self) -> MapName:
        """The map whose maximum is this map's image score: its own, except for the fused map, whose
        images are scored by the paper's map (the fused map says where, the paper's map whether)."""
        return MapName.AAND if self is MapName.FUSED else self

    def __str__(self) -> str:
        return self.value


def cosine_distance(target: torch.Tensor, student: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1 − cosine over channels, per patch: (B,C,H,W) × 2 → (B,H,W)."""
    return 1.0 - F.cosine_similarity(target, student, dim=1, eps=eps)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Normalised 1-D Gaussian with scipy.ndimage's support (radius = int(truncate·σ + 0.5))."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).float()


def _symmetric_pad(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """scipy's 'reflect' border (d c b a | a b c d), which torch's pad modes do not offer."""
    n = x.shape[dim]
    if radius > n:  # tiny maps: repeat the reflection pattern by index arithmetic
        period = torch.arange(-radius, n + radius, device=x.device) % (2 * n)
        index = torch.where(period < n, period, 2 * n - 1 - period)
        return x.index_select(dim, index)
    head = x.narrow(dim, 0, radius).flip(dim)
    tail = x.narrow(dim, n - radius, radius).flip(dim)
    return torch.cat([head, x, tail], dim=dim)


def gaussian_blur(maps: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian smoothing of (B,1,H,W) maps on their own device, matching scipy.ndimage."""
    radius = kernel.numel() // 2
    k = kernel.to(maps.dtype)
    maps = F.conv2d(_symmetric_pad(maps, radius, 3), k.view(1, 1, 1, -1))
    return F.conv2d(_symmetric_pad(maps, radius, 2), k.view(1, 1, -1, 1))


def image_scores(maps: torch.Tensor) -> torch.Tensor:
    """Image score = maximum of the (smoothed) map: (B,1,H,W) → (B,)."""
    return maps.flatten(1).amax(dim=1)


def normalized(values: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """Scores or maps on [0, 1] with 0.5 at `threshold`: values / (2·threshold), clipped. The maps and
    scores are ≥ 0, so 0 stays 0 and everything from twice the threshold up reads 1 (the heatmaps'
    colour range); one formula for predict, the Python API and the exported graph."""
    return (values / (2 * threshold)).clamp(0.0, 1.0)


class AnomalyMapGenerator(nn.Module):
    """Sum of per-level cosine distances, upsampled to the image and smoothed; score = max of the map.

    `gate_map` turns the RAA gates into a map of the same kind, so stage 1's test and stage 2's fused map
    use one definition of it.
    """

    def __init__(self, sigma: float = 4.0, truncate: float = 4.0) -> None:
        super().__init__()
        self.register_buffer("kernel", gaussian_kernel1d(sigma, truncate) if sigma > 0 else torch.ones(1))

    def forward(
        self, targets: list[torch.Tensor], student: list[torch.Tensor], image_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's `targets` against the `student`'s levels: (maps (B,1,H,W), scores (B,));
        computed in float32 even under bf16 autocast."""
        maps = sum(
            F.interpolate(
                cosine_distance(t.float(), s.float())[:, None],
                size=image_size,
                mode="bilinear",
                align_corners=True,
            )
            for t, s in zip(targets, student, strict=True)
        )
        return self.smooth_and_score(maps)

    def gate_map(
        self, gates: list[torch.Tensor], image_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1's detector: `mean_gate`, smoothed; (maps, scores)."""
        return self.smooth_and_score(mean_gate(gates, image_size))

    def smooth_and_score(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = gaussian_blur(maps, self.kernel)
        return maps, image_scores(maps)


def mean_gate(gates: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
    """The mean of the bilinear-upsampled level gates: (B, 1, H, W) in (0, 1), unsmoothed."""
    return sum(
        F.interpolate(g.float(), size=image_size, mode="bilinear", align_corners=True) for g in gates
    ) / len(gates)
