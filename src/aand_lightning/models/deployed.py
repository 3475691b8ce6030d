"""What a deployed AAND computes: uint8 RGB at the model's size in, every answer a user needs out.

The normalisation and both thresholds live inside the graph, so an exported model and the Python
`Inferencer` run the same computation and no consumer re-implements them; only the resize to the
model's size (`Preprocessing.resize`) stays outside, because it is the one step that depends on the
input's own size.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from aand_lightning.models.aand import AAND
from aand_lightning.models.anomaly_map import normalized


class Deployed(NamedTuple):
    """Per image: `score` (B,), `anomaly_map` (B,1,H,W), `normalized_score` (B,) on [0, 1] with 0.5 at the
    decision threshold, `mask` (B,1,H,W) bool: map pixels above the map threshold."""

    score: torch.Tensor
    anomaly_map: torch.Tensor
    normalized_score: torch.Tensor
    mask: torch.Tensor


class DeployedModel(nn.Module):
    """`images` uint8 (B, H, W, 3) RGB at `image_size` → `Deployed`; mean/std are the model's
    `Preprocessing` values."""

    def __init__(self, model: AAND, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.eval()  # inference only: exporters and callers get the eval-mode graph

    def forward(self, images: torch.Tensor) -> Deployed:
        pixels = images.permute(0, 3, 1, 2).contiguous().to(torch.float32) / 255.0
        out = self.model((pixels - self.mean) / self.std)
        return Deployed(
            out.score,
            out.map,
            normalized(out.score, self.model.threshold),
            out.map > self.model.map_threshold,
        )
