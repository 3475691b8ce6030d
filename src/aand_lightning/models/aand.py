"""The full AAND inference path: image → amplified teacher, student, anomaly map and image score."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aand_lightning.models.amplified_teacher import AmplifiedTeacher, TeacherOutput, require_raa
from aand_lightning.models.anomaly_map import AnomalyMapGenerator, image_scores
from aand_lightning.models.fusion import MapFusion, scored_map
from aand_lightning.models.student import Student


@dataclass
class AANDOutput:
    """`maps`/`scores` are the configured map's; `maps_by_name` (with `all_maps=True`) holds every map
    of the same forward pass: "aand" (the paper's), "gate" and, once calibrated, "fused"."""

    teacher: TeacherOutput
    student: list[torch.Tensor]
    maps: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    maps_by_name: dict[str, torch.Tensor] | None = None


class AAND(nn.Module):
    """Frozen amplified teacher + trainable student; the map is computed against amplified targets.

    `threshold` is a buffer so that checkpoints and exports carry the decision threshold on the image
    score chosen on normal validation images (NaN until one is chosen), `map_threshold` the one on the
    map's pixels (the masks); `fusion` holds the fused map's weight and normal statistics the same way.
    The output is the paper's map unless fusion is enabled; the fused map's images are scored by the
    paper's map, so only then do the two thresholds differ.
    """

    def __init__(
        self,
        teacher: AmplifiedTeacher,
        student: Student,
        anomaly_map: AnomalyMapGenerator,
        fusion: MapFusion | None = None,
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.student = student
        self.anomaly_map = anomaly_map
        self.fusion = fusion or MapFusion()
        if self.fusion.enabled:
            require_raa(teacher.enabled, fused=self.fusion.setting)
        self.teacher.requires_grad_(False)
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self.register_buffer("map_threshold", torch.tensor(float("nan")))

    @property
    def map_name(self) -> str:
        """The name of the map the model outputs (and its threshold is chosen on)."""
        return "fused" if self.fusion.enabled else "aand"

    def map_names(self) -> list[str]:
        """The maps `forward(..., all_maps=True)` returns: the gate map needs RAA, the fused map a weight
        and statistics (or the fused output configured)."""
        names = ["aand"]
        if self.teacher.enabled:
            names.append("gate")
            if self.fusion.enabled or self.fusion.calibrated:
                names.append("fused")
        return names

    def train(self, mode: bool = True) -> AAND:
        """The teacher (backbone and RAA) stays in eval mode: only the student ever trains."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(
        self,
        images: torch.Tensor,
        with_map: bool = True,
        all_maps: bool = False,
        teacher: TeacherOutput | None = None,
    ) -> AANDOutput:
        """`teacher`: the teacher's output for `images` when the caller already has it (stage 2's
        feature cache); it is computed here otherwise."""
        if teacher is None:
            with torch.no_grad():
                teacher = self.teacher(images)
        student = self.student(teacher.amplified)
        if not with_map:
            return AANDOutput(teacher, student)
        size = tuple(images.shape[-2:])
        if not (all_maps or self.fusion.enabled):  # the paper's map alone: nothing else is computed
            maps, scores = self.anomaly_map(teacher.amplified, student, size)
            return AANDOutput(teacher, student, maps, scores)
        names = self.map_names()
        by_name = {"aand": self.anomaly_map(teacher.amplified, student, size)[0]}
        if "gate" in names:
            by_name["gate"] = self.anomaly_map.gate_map(teacher.gates, size)[0]
        if "fused" in names:
            by_name["fused"] = self.fusion(by_name["aand"], by_name["gate"])
        maps, scores = by_name[self.map_name], image_scores(by_name[scored_map(self.map_name)])
        return AANDOutput(teacher, student, maps, scores, by_name if all_maps else None)
