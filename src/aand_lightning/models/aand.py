"""The full AAND inference path: image → teacher, student, anomaly maps and image score."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from aand_lightning.models.anomaly_map import AnomalyMapGenerator, MapName, image_scores
from aand_lightning.models.fused_map import FusedMap
from aand_lightning.models.student import Student
from aand_lightning.models.teacher import Teacher, TeacherFeatures, require_raa

# The maps stage 2 can give as its output (`anomaly_map.output`); the gate map is stage 1's.
OUTPUTS = (MapName.AAND, MapName.FUSED)


@dataclass
class AANDOutput:
    """The output map (B,1,H,W) and image scores (B,); `maps` holds the named maps asked for, from the
    same forward pass; `teacher_features` and `student` are the features they were computed from."""

    score: torch.Tensor
    map: torch.Tensor
    teacher_features: TeacherFeatures
    student: list[torch.Tensor]
    maps: dict[MapName, torch.Tensor] = field(default_factory=dict)


class AAND(nn.Module):
    """Frozen teacher + trainable student; the maps compare the student with the teacher's targets.

    `threshold` is a buffer so that checkpoints and exports carry the decision threshold on the image
    score chosen on normal validation images (NaN until one is chosen), `map_threshold` the one on the
    output map's pixels (the masks); `fused_map` holds the fused map's weight and normal statistics the
    same way. `output` is the map the model gives (`anomaly_map.output`): the fused map's images are
    scored by the paper's map, so only then do the two thresholds differ.
    """

    def __init__(
        self,
        teacher: Teacher,
        student: Student,
        anomaly_map: AnomalyMapGenerator,
        fused_map: FusedMap | None = None,
        output: MapName = MapName.AAND,
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.student = student
        self.anomaly_map = anomaly_map
        self.fused_map = fused_map or FusedMap()
        self.output = MapName(output)
        if self.output not in OUTPUTS:
            choices = ", ".join(name.value for name in OUTPUTS)
            raise ValueError(f"anomaly_map.output={self.output} is not valid; pass one of {choices}.")
        require_raa(teacher.amplifies, fused=self.output is MapName.FUSED)
        self.teacher.requires_grad_(False)
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self.register_buffer("map_threshold", torch.tensor(float("nan")))

    def map_names(self) -> list[MapName]:
        """The maps this model can give: the gate map needs RAA, the fused map a weight and statistics
        (or being the output)."""
        names = [MapName.AAND]
        if self.teacher.amplifies:
            names.append(MapName.GATE)
            if self.output is MapName.FUSED or self.fused_map.calibrated:
                names.append(MapName.FUSED)
        return names

    def train(self, mode: bool = True) -> AAND:
        """The teacher (backbone and RAA) stays in eval mode: only the student ever trains."""
        super().train(mode)
        self.teacher.eval()
        return self

    def distill(
        self, images: torch.Tensor, teacher_features: TeacherFeatures | None = None
    ) -> tuple[TeacherFeatures, list[torch.Tensor]]:
        """The teacher's features (`teacher_features` when the caller already has them, stage 2's feature
        cache) and the student's levels: what the distillation loss compares."""
        if teacher_features is None:
            with torch.no_grad():
                teacher_features = self.teacher(images)
        return teacher_features, self.student(teacher_features.amplified)

    def forward(
        self,
        images: torch.Tensor,
        maps: Iterable[MapName] = (),
        teacher_features: TeacherFeatures | None = None,
    ) -> AANDOutput:
        """The output map and scores, and the named `maps` asked for, from one pass."""
        features, student = self.distill(images, teacher_features)
        size = tuple(images.shape[-2:])
        wanted = {self.output, *maps}
        computed: dict[MapName, torch.Tensor] = {}
        if wanted & {MapName.AAND, MapName.FUSED}:
            computed[MapName.AAND] = self.anomaly_map(features.amplified, student, size)[0]
        if wanted & {MapName.GATE, MapName.FUSED}:
            computed[MapName.GATE] = self.anomaly_map.gate_map(features.gates, size)[0]
        if MapName.FUSED in wanted:
            computed[MapName.FUSED] = self.fused_map(computed[MapName.AAND], computed[MapName.GATE])
        score = image_scores(computed[self.output.scored_by])
        named = {name: computed[name] for name in maps}
        return AANDOutput(score, computed[self.output], features, student, named)
