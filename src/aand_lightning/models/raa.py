"""Residual Anomaly Amplification: a matching-guided residual gate and an attribute-scaling residual."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_position_encoding(channels: int, height: int, width: int) -> torch.Tensor:
    """Fixed 2-D encoding (1, C, H, W): first C/2 channels encode x, last C/2 y; sin/cos interleaved."""
    if channels % 4:
        raise ValueError(f"2-D sinusoidal encoding needs channels divisible by 4, got {channels}.")
    half = channels // 2
    freq = torch.exp(torch.arange(0, half, 2, dtype=torch.float32) * (-math.log(10000.0) / half))
    x = torch.arange(width, dtype=torch.float32)[:, None] * freq  # (W, half/2)
    y = torch.arange(height, dtype=torch.float32)[:, None] * freq  # (H, half/2)
    pe = torch.zeros(channels, height, width)
    pe[0:half:2] = torch.sin(x).T[:, None, :].expand(-1, height, -1)
    pe[1:half:2] = torch.cos(x).T[:, None, :].expand(-1, height, -1)
    pe[half::2] = torch.sin(y).T[:, :, None].expand(-1, -1, width)
    pe[half + 1 :: 2] = torch.cos(y).T[:, :, None].expand(-1, -1, width)
    return pe[None]


def pointwise_mlp(channels: int, hidden: int) -> nn.Sequential:
    """1×1-conv MLP C→h→h→C with ReLUs: a per-patch MLP on a feature map."""
    return nn.Sequential(
        nn.Conv2d(channels, hidden, 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, channels, 1),
    )


def forced_gate(mask: torch.Tensor, size: tuple[int, int], threshold: float = 0.3) -> torch.Tensor:
    """Ground-truth gate of a level: the synthetic mask (B,1,H,W) average-pooled to `size`, > threshold."""
    return (F.adaptive_avg_pool2d(mask.float(), size) > threshold).float()


class ResidualAnomalyAmplifier(nn.Module):
    """RAA for one feature level: F_A = F + w ⊙ tanh(MLP_r(F)) ⊙ F, with w the soft 'abnormal' gate."""

    def __init__(
        self,
        channels: int,
        num_prototypes: int = 50,
        temperature: float = 0.2,
        max_hidden: int = 1024,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        hidden = min(2 * channels, max_hidden)
        self.num_prototypes = num_prototypes
        self.temperature = temperature
        self.eps = eps
        self.query = pointwise_mlp(channels, hidden)
        self.residual = pointwise_mlp(channels, hidden)
        # First half "normal", second half "abnormal" prototypes.
        self.prototypes = nn.Parameter(torch.randn(2 * num_prototypes, channels))
        self._pe_cache: dict[tuple[int, int, torch.device, torch.dtype], torch.Tensor] = {}

    def position_encoding(self, features: torch.Tensor) -> torch.Tensor:
        key = (*features.shape[-2:], features.device, features.dtype)
        if key not in self._pe_cache:
            pe = sinusoidal_position_encoding(features.shape[1], *features.shape[-2:])
            self._pe_cache[key] = pe.to(device=features.device, dtype=features.dtype)
        return self._pe_cache[key]

    def gate(self, features: torch.Tensor) -> torch.Tensor:
        """Soft probability (B,1,H,W) in (0,1) that a patch matches the abnormal prototypes."""
        query = F.normalize(self.query(features + self.position_encoding(features)), dim=1, eps=self.eps)
        keys = F.normalize(self.prototypes, dim=1, eps=self.eps)
        similarity = torch.einsum("bchw,kc->bkhw", query, keys.to(query.dtype))
        attention = torch.softmax(similarity / self.temperature, dim=1)
        return attention[:, self.num_prototypes :].sum(dim=1, keepdim=True)

    def forward(
        self, features: torch.Tensor, teacher_gate: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (amplified features, predicted gate); `teacher_gate` replaces the gate in the residual."""
        gate = self.gate(features)
        residual = torch.tanh(self.residual(features)) * features
        used_gate = gate if teacher_gate is None else teacher_gate.to(features.dtype)
        return features + used_gate * residual, gate
