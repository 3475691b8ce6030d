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


class AmplifiedTeacher(nn.Module):
    """Teacher + one RAA per level. With `enabled=False` it is the plain RD teacher (the RD baseline).

    The next backbone stage always consumes the original features, so RAA never changes what deeper
    levels see; only the targets handed to the student are amplified.
    """

    def __init__(
        self,
        teacher: Teacher,
        enabled: bool = True,
        num_prototypes: int = 50,
        temperature: float = 0.2,
        max_hidden: int = 1024,
        eps: float = 1e-8,
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
