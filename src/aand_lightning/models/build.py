"""Build the models from plain config mappings (Hydra calls these; so do predict and export)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aand_lightning.models.aand import AAND
from aand_lightning.models.amplified_teacher import AmplifiedTeacher
from aand_lightning.models.anomaly_map import AnomalyMapGenerator
from aand_lightning.models.encoder import Encoder
from aand_lightning.models.fusion import OFF, MapFusion
from aand_lightning.models.student import Student


def build_amplified_teacher(
    backbone: Mapping[str, Any], raa: Mapping[str, Any], weights: str | None = None
) -> AmplifiedTeacher:
    """Encoder from `backbone` (name, weights; `weights` overrides) with RAA per `raa` (enabled, L, τ)."""
    encoder = Encoder(backbone["name"], backbone.get("weights", "imagenet") if weights is None else weights)
    return AmplifiedTeacher(
        encoder,
        enabled=raa.get("enabled", True),
        num_prototypes=raa.get("num_prototypes", 50),
        temperature=raa.get("temperature", 0.2),
        max_hidden=raa.get("max_hidden", 1024),
        eps=raa.get("eps", 1e-8),
    )


def build_aand(
    backbone: Mapping[str, Any],
    raa: Mapping[str, Any],
    anomaly_map: Mapping[str, Any],
    weights: str | None = None,
    teacher: AmplifiedTeacher | None = None,
) -> AAND:
    """Full model; the student is sized from the teacher's channels and `backbone.student`."""
    teacher = teacher or build_amplified_teacher(backbone, raa, weights)
    student_cfg = dict(backbone.get("student", {}))
    student = Student(
        teacher.channels,
        block=student_cfg.get("block", "bottleneck"),
        fusion_blocks=student_cfg.get("fusion_blocks", 3),
        decoder_layers=tuple(student_cfg.get("decoder_layers", (3, 4, 6))),
        width_per_group=student_cfg.get("width_per_group", 64),
        fusion_width_per_group=student_cfg.get("fusion_width_per_group"),
    )
    fusion = MapFusion(anomaly_map.get("fusion", OFF), anomaly_map.get("fusion_draws", 8))
    return AAND(teacher, student, build_anomaly_map(anomaly_map), fusion)


def build_anomaly_map(anomaly_map: Mapping[str, Any]) -> AnomalyMapGenerator:
    """The smoothing of `anomaly_map` (σ, truncate); the `fusion*` keys belong to the model (`build_aand`)."""
    return AnomalyMapGenerator(**{k: v for k, v in anomaly_map.items() if not k.startswith("fusion")})
