"""Residual Anomaly Amplification: a matching-guided residual gate and an attribute-scaling residual."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aand_lightning.errors import ModelConfigError


@dataclass(frozen=True)
class RAASettings:
    """The `raa` config group, the one list of RAA settings: `enabled=False` is the RD baseline (no RAA),
    L = `num_prototypes` normal and L abnormal prototypes, softmax `temperature`, hidden width
    min(2C, `max_hidden`), `eps` of the normalisations. The values live in conf/raa/*.yaml only."""

    enabled: bool
    num_prototypes: int
    temperature: float
    max_hidden: int
    eps: float

    @classmethod
    def from_config(cls, raa: Mapping[str, Any]) -> RAASettings:
        """From the `raa` mapping of a config, checkpoint or artifact; a missing key names itself."""
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in raa]
        if missing:
            raise ModelConfigError(
                f"The model config lacks raa.{missing[0]}; set it (conf/raa/default.yaml holds its value)."
            )
        return cls(**{name: raa[name] for name in names})


def sinusoidal_position_encoding(
    channels: int,
    height: int,
    width: int,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Fixed 2-D encoding (1, C, H, W): first C/2 channels encode x, last C/2 y; sin/cos interleaved.

    Built from tensor ops on the target device at every call (cheap next to the MLPs): no host copy,
    and nothing cached that `torch.compile` would have to guard on.
    """
    if channels % 4:
        raise ValueError(f"2-D sinusoidal encoding needs channels divisible by 4, got {channels}.")
    half = channels // 2
    freq = torch.exp(torch.arange(0, half, 2, device=device) * (-math.log(10000.0) / half))

    def axis(length: int) -> torch.Tensor:  # (half, length): sin, cos, sin, cos, ... per frequency
        angle = freq[:, None] * torch.arange(length, device=device)
        return torch.stack([angle.sin(), angle.cos()], dim=1).reshape(half, length)

    x = axis(width)[:, None, :].expand(half, height, width)
    y = axis(height)[:, :, None].expand(half, height, width)
    return torch.cat([x, y])[None].to(dtype)


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

    def __init__(self, channels: int, settings: RAASettings) -> None:
        super().__init__()
        hidden = min(2 * channels, settings.max_hidden)
        self.num_prototypes = settings.num_prototypes
        self.temperature = settings.temperature
        self.eps = settings.eps
        self.query = pointwise_mlp(channels, hidden)
        self.residual = pointwise_mlp(channels, hidden)
        # First half "normal", second half "abnormal" prototypes.
        self.prototypes = nn.Parameter(torch.randn(2 * settings.num_prototypes, channels))

    def gate(self, features: torch.Tensor) -> torch.Tensor:
        """Soft probability (B,1,H,W) in (0,1) that a patch matches the abnormal prototypes."""
        pe = sinusoidal_position_encoding(*features.shape[1:], features.device, features.dtype)
        query = F.normalize(self.query(features + pe), dim=1, eps=self.eps)
        keys = F.normalize(self.prototypes, dim=1, eps=self.eps)
        similarity = torch.einsum("bchw,kc->bkhw", query, keys.to(query.dtype))
        attention = torch.softmax(similarity / self.temperature, dim=1)
        return attention[:, self.num_prototypes :].sum(dim=1, keepdim=True)

    def forward(
        self, features: torch.Tensor, forced_gate: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (amplified features, predicted gate); `forced_gate` replaces the gate in the residual."""
        gate = self.gate(features)
        residual = torch.tanh(self.residual(features)) * features
        used_gate = gate if forced_gate is None else forced_gate.to(features.dtype)
        return features + used_gate * residual, gate
