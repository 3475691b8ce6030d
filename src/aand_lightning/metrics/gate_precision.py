"""The authors' stage-1 selection score: how precisely the RAA gates point at the true defects."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gate_precision(
    gates: list[torch.Tensor], masks: torch.Tensor, threshold: float = 0.5, mask_threshold: float = 0.3
) -> torch.Tensor:
    """Per image (B,): the precision of `gate > threshold` against the ground truth at each level's own
    resolution (the mask average-pooled to the level, > `mask_threshold`), averaged over the levels;
    a level with no predicted positive counts 0, as in the authors' code.

    gates: per level (B,1,h,w) in (0, 1); masks: (B,1,H,W) test ground truth in {0, 1}.
    """
    per_level = []
    for gate in gates:
        truth = F.adaptive_avg_pool2d(masks.float(), gate.shape[-2:]) > mask_threshold
        predicted = gate.float() > threshold
        hits = (predicted & truth).flatten(1).sum(1)
        positives = predicted.flatten(1).sum(1)
        per_level.append(
            torch.where(
                positives > 0, hits / positives.clamp(min=1), torch.zeros_like(hits, dtype=torch.float)
            )
        )
    return torch.stack(per_level).mean(0)
