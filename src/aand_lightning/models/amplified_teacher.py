"""The AAND encoder: frozen teacher levels, each followed by its own RAA module (in parallel)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aand_lightning.models.raa import ResidualAnomalyAmplifier
from aand_lightning.models.teacher import Teacher


@dataclass
class TeacherOutput:
    """Vanilla features, amplified features (what the student learns) and predicted gates per level."""

    features: list[torch.Tensor]
    amplified: list[torch.Tensor]
    gates: list[torch.Tensor] | None


def require_raa(enabled: bool, stage1: bool = False, fused: object = None) -> None:
    """The RD baseline (raa=off) has no RAA: no stage 1 to train it, no gate map to fuse (`fused`: the
    fusion setting when the fused map is on). The one rule and message for the config check and the
    modules; ValueError names the fix."""
    if enabled:
        return
    if stage1:
        raise ValueError(
            "stage=amplify trains RAA but raa.enabled=false; use stage=distill for the RD baseline."
        )
    if fused is not None:
        raise ValueError(
            f"anomaly_map.fusion={fused} fuses the RAA gate map, which raa=off does not have; "
            "pass anomaly_map.fusion=off for the RD baseline."
        )


class AmplifiedTeacher(nn.Module):
    """Teacher + one RAA per level. With `enabled=False` it is the plain RD teacher (the RD baseline).

    The next backbone stage always consumes the original features, so RAA never changes what deeper
    levels see; only the targets handed to the student are amplified.
    """

    def __init__(
        self,
        teacher: Teacher,
        enabled: bool,
        num_prototypes: int,
        temperature: float,
        max_hidden: int,
        eps: float,
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.enabled = enabled
        self.raa = nn.ModuleList(
            [
                ResidualAnomalyAmplifier(c, num_prototypes, temperature, max_hidden, eps)
                for c in teacher.channels
            ]
            if enabled
            else []
        )

    @property
    def channels(self) -> list[int]:
        return self.teacher.channels

    def forward(self, images: torch.Tensor, teacher_gates: list[torch.Tensor] | None = None) -> TeacherOutput:
        with torch.no_grad():
            features = self.teacher(images)
        return self.amplify(features, teacher_gates)

    def amplify(
        self, features: list[torch.Tensor], teacher_gates: list[torch.Tensor] | None = None
    ) -> TeacherOutput:
        """Apply each level's RAA; `teacher_gates` (stage-1 training) replace the predicted gates."""
        if not self.enabled:
            return TeacherOutput(features, features, None)
        forced = teacher_gates if teacher_gates is not None else [None] * len(features)
        outputs = [raa(f, g) for raa, f, g in zip(self.raa, features, forced, strict=True)]
        return TeacherOutput(features, [o[0] for o in outputs], [o[1] for o in outputs])
