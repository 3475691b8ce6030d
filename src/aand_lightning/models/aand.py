"""The full AAND inference path: image → amplified teacher, student, anomaly map and image score."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aand_lightning.models.amplified_teacher import AmplifiedTeacher, TeacherOutput
from aand_lightning.models.anomaly_map import AnomalyMapGenerator
from aand_lightning.models.student import Student


@dataclass
class AANDOutput:
    teacher: TeacherOutput
    student: list[torch.Tensor]
    maps: torch.Tensor | None = None
    scores: torch.Tensor | None = None


class AAND(nn.Module):
    """Frozen amplified teacher + trainable student; the map is computed against amplified targets.

    `threshold` is a buffer so that checkpoints and exports carry the decision threshold chosen on
    normal validation images (NaN until one is chosen).
    """

    def __init__(self, teacher: AmplifiedTeacher, student: Student, anomaly_map: AnomalyMapGenerator) -> None:
        super().__init__()
        self.teacher = teacher
        self.student = student
        self.anomaly_map = anomaly_map
        self.teacher.requires_grad_(False)
        self.register_buffer("threshold", torch.tensor(float("nan")))

    def train(self, mode: bool = True) -> AAND:
        """The teacher (backbone and RAA) stays in eval mode: only the student ever trains."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(
        self, images: torch.Tensor, with_map: bool = True, teacher: TeacherOutput | None = None
    ) -> AANDOutput:
        """`teacher`: the teacher's output for `images` when the caller already has it (stage 2's
        feature cache); it is computed here otherwise."""
        if teacher is None:
            with torch.no_grad():
                teacher = self.teacher(images)
        student = self.student(teacher.amplified)
        if not with_map:
            return AANDOutput(teacher, student)
        maps, scores = self.anomaly_map(teacher.amplified, student, tuple(images.shape[-2:]))
        return AANDOutput(teacher, student, maps, scores)
