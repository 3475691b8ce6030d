"""Build the models from plain config mappings (Hydra calls these; so do predict and export).

The values come from the configs (`conf/backbone/*.yaml`, `conf/raa/*.yaml`, `anomaly_map` in
`conf/train.yaml`), never from defaults here: a missing key is an error that names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aand_lightning.errors import ModelConfigError
from aand_lightning.models.aand import AAND
from aand_lightning.models.anomaly_map import AnomalyMapGenerator, MapName
from aand_lightning.models.encoder import Encoder
from aand_lightning.models.fused_map import FusedMap
from aand_lightning.models.raa import RAASettings
from aand_lightning.models.student import Student
from aand_lightning.models.teacher import Teacher

STUDENT_KEYS = (
    "block", "bottleneck_blocks", "decoder_layers", "width_per_group", "bottleneck_width_per_group",
)  # fmt: skip
ANOMALY_MAP_KEYS = ("sigma", "truncate", "output", "fused_weight")


def _settings(section: Mapping[str, Any], name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """`keys` of `section` (the config node `name`), in that order; the error names the first one it lacks."""
    missing = [k for k in keys if k not in section]
    if missing:
        raise ModelConfigError(
            f"The model config lacks {name}.{missing[0]}; set it (conf/ holds the value of each setting)."
        )
    return {k: section[k] for k in keys}


def build_teacher(backbone: Mapping[str, Any], raa: Mapping[str, Any], weights: str | None = None) -> Teacher:
    """Encoder from `backbone` (name, weights; `weights` overrides) with RAA per `raa` (enabled, L, τ...)."""
    source = _settings(backbone, "backbone", ("name",) if weights is not None else ("name", "weights"))
    encoder = Encoder(source["name"], source["weights"] if weights is None else weights)
    return Teacher(encoder, RAASettings.from_config(raa))


def build_aand(
    backbone: Mapping[str, Any],
    raa: Mapping[str, Any],
    anomaly_map: Mapping[str, Any],
    weights: str | None = None,
    teacher: Teacher | None = None,
) -> AAND:
    """Full model; the student is sized from the teacher's channels and `backbone.student`."""
    teacher = teacher or build_teacher(backbone, raa, weights)
    student = _settings(
        _settings(backbone, "backbone", ("student",))["student"], "backbone.student", STUDENT_KEYS
    )
    student["decoder_layers"] = tuple(student["decoder_layers"])
    settings = _settings(anomaly_map, "anomaly_map", ANOMALY_MAP_KEYS)
    return AAND(
        teacher,
        Student(teacher.channels, **student),
        build_anomaly_map(settings),
        FusedMap(settings["fused_weight"]),
        MapName(settings["output"]),
    )


def build_anomaly_map(anomaly_map: Mapping[str, Any]) -> AnomalyMapGenerator:
    """The smoothing of `anomaly_map` (σ, truncate); the other keys belong to the model (`build_aand`)."""
    return AnomalyMapGenerator(**_settings(anomaly_map, "anomaly_map", ("sigma", "truncate")))
