"""Stage-1 loss (focal on the gate + amplification margin) and stage-2 distillation losses (HKD, RD)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from aand_lightning.models.anomaly_map import cosine_distance
from aand_lightning.models.teacher import TeacherFeatures


def focal_loss(prob: torch.Tensor, target: torch.Tensor, alpha: float = 0.8, gamma: float = 2.0,
               eps: float = 1e-6) -> torch.Tensor:  # fmt: skip
    """Binary focal loss on probabilities (the gate is used directly), clamped away from 0 and 1."""
    p = prob.clamp(eps, 1.0 - eps)
    positive = -alpha * (1 - p) ** gamma * target * torch.log(p)
    negative = -(1 - alpha) * p**gamma * (1 - target) * torch.log(1 - p)
    return (positive + negative).mean()


def random_subset(
    selected: torch.Tensor, limit: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, valid): a uniform random subset of up to `limit` True entries of a flat bool tensor.

    The result always has min(limit, numel) entries, so no shape depends on the data and nothing
    waits for the device: random keys rank every True entry above every False one, and `valid` says
    which picks are True (fewer than `limit` when few entries are selected).
    """
    keys = torch.rand(selected.shape, generator=generator, device=selected.device) + selected
    index = keys.topk(min(limit, selected.numel()), sorted=False).indices
    return index, selected[index]


def _positions(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(k, C) feature vectors at flat (batch, y, x) positions, gathered without copying the whole map."""
    flat = features.flatten(2)
    return flat[index // flat.shape[2], :, index % flat.shape[2]]


def amplification_loss(
    features: torch.Tensor,
    amplified: torch.Tensor,
    anomalous: torch.Tensor,
    normal: torch.Tensor,
    margin: float = 0.3,
    max_normal: int = 5000,
    max_anomalous: int = 1000,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Push amplified anomalies at least `margin` further (in cosine) from normal features than before.

    features/amplified: (B,C,H,W); anomalous/normal: (B,1,H,W) bool position masks of this level.
    The mean runs over the valid (normal, anomalous) pairs; with none it is 0 (graph kept for DDP).
    """
    anom_idx, anom_valid = random_subset(anomalous.flatten(), max_anomalous, generator)
    norm_idx, norm_valid = random_subset(normal.flatten(), max_normal, generator)
    normal_f = F.normalize(_positions(features, norm_idx), dim=1, eps=1e-8)
    anomalous_f = F.normalize(_positions(features, anom_idx), dim=1, eps=1e-8)
    amplified_f = F.normalize(_positions(amplified, anom_idx), dim=1, eps=1e-8)
    change = normal_f @ (amplified_f - anomalous_f).T  # S_A − S in one product
    pairs = (norm_valid[:, None] & anom_valid[None, :]).to(change.dtype)
    return (F.relu(change + margin) * pairs).sum() / pairs.sum().clamp_min(1.0)


class AmplificationLoss(nn.Module):
    """L = focal_weight·Σ focal(gate) + amplification_weight·Σ L_amp over the levels.

    `mask_threshold` thresholds the pooled foreground of normal positions and is the one to pass to the
    teacher's forward for the forced gates (the targets)."""

    def __init__(
        self,
        focal_weight: float = 1.0,
        amplification_weight: float = 0.1,
        focal_alpha: float = 0.8,
        focal_gamma: float = 2.0,
        focal_eps: float = 1e-6,
        margin: float = 0.3,
        mask_threshold: float = 0.3,
        max_normal: int = 5000,
        max_anomalous: int = 1000,
    ) -> None:
        super().__init__()
        self.focal_weight = focal_weight
        self.amplification_weight = amplification_weight
        self.focal_alpha, self.focal_gamma, self.focal_eps = focal_alpha, focal_gamma, focal_eps
        self.margin = margin
        self.mask_threshold = mask_threshold
        self.max_normal, self.max_anomalous = max_normal, max_anomalous

    def forward(
        self,
        out: TeacherFeatures,
        foreground: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """`out`: the amplified teacher's output for the batch and its synthetic mask (`forced_gates`
        are the targets; call it with the mask at this loss's `mask_threshold`)."""
        if out.gates is None or out.forced_gates is None:
            raise ValueError(
                "The stage-1 loss needs RAA gates and forced gates: call the teacher with the mask."
            )
        focal = amp = out.features[0].new_zeros(())
        for f, fa, gate, target in zip(out.features, out.amplified, out.gates, out.forced_gates, strict=True):
            focal = focal + focal_loss(gate, target, self.focal_alpha, self.focal_gamma, self.focal_eps)
            normal = target == 0
            if foreground is not None:  # the authors pool and threshold the foreground like the mask
                normal &= F.adaptive_avg_pool2d(foreground.float(), f.shape[-2:]) > self.mask_threshold
            amp = amp + amplification_loss(
                f, fa, target > 0, normal, self.margin, self.max_normal, self.max_anomalous, generator
            )
        total = self.focal_weight * focal + self.amplification_weight * amp
        return {"loss": total, "focal": focal, "amplification": amp}


def global_cosine_loss(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """RD's loss for one level: mean over images of 1 − cos(flatten(F_T), flatten(F_S))."""
    return (1.0 - F.cosine_similarity(teacher.flatten(1), student.flatten(1), dim=1)).mean()


def hard_patch_loss(teacher: torch.Tensor, student: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over images of the mean of the k largest patch distances (1 − cos over channels)."""
    distance = cosine_distance(teacher, student).flatten(1)
    return distance.topk(min(k, distance.shape[1]), dim=1).values.mean()


class CosineDistillationLoss(nn.Module):
    """Plain reverse-distillation loss: Σ over levels of the flattened-feature cosine loss."""

    def forward(self, teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
        return sum(global_cosine_loss(t, s) for t, s in zip(teacher, student, strict=True))


class HardKnowledgeDistillationLoss(nn.Module):
    """HKD: RD's global cosine loss plus the mean of the K_h hardest patches, per level.

    K_h is an absolute count per image and level (`k_hard`), or a fraction of the level's patches
    (`k_hard_ratio`, which wins when set).
    """

    def __init__(self, k_hard: int = 10, k_hard_ratio: float | None = None) -> None:
        super().__init__()
        if k_hard_ratio is None and k_hard < 1:
            raise ValueError("HKD needs k_hard >= 1 (or a k_hard_ratio in (0, 1]); use loss=rd for plain RD.")
        if k_hard_ratio is not None and not 0 < k_hard_ratio <= 1:
            raise ValueError(f"k_hard_ratio must lie in (0, 1], got {k_hard_ratio}.")
        self.k_hard = k_hard
        self.k_hard_ratio = k_hard_ratio

    def num_hard(self, num_patches: int) -> int:
        if self.k_hard_ratio is None:
            return self.k_hard
        return max(1, math.ceil(self.k_hard_ratio * num_patches))

    def forward(self, teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
        return sum(
            hard_patch_loss(t, s, self.num_hard(t.shape[-2] * t.shape[-1])) + global_cosine_loss(t, s)
            for t, s in zip(teacher, student, strict=True)
        )
