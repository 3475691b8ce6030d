"""Build the models from plain config mappings (Hydra calls these; so do predict and export).

The values come from the configs (`conf/backbone/*.yaml`, `conf/raa/*.yaml`, `anomaly_map` in
`conf/train.yaml`), never from defaults here: a missing key is an error that names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aand_lightning.errors import UserError
from aand_lightning.models.aand import AAND
from aand_lightning.models.amplified_teacher import AmplifiedTeacher
from aand_lightning.models.anomaly_map import AnomalyMapGenerator
from aand_lightning.models.encoder import Encoder
from aand_lightning.models.fusion import MapFusion
from aand_lightning.models.student import Student

RAA_KEYS = ("enabled", "num_prototypes", "temperature", "max_hidden", "eps")
STUDENT_KEYS = ("block", "fusion_blocks", "decoder_layers", "width_per_group", "fusion_width_per_group")


class ModelConfigError(UserError):
    """A model setting is missing from the config mapping; the message names its key."""


def _settings(section: Mapping[str, Any], name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """`keys` of `section` (the config node `name`), in that order; the error names the first one it lacks."""
    missing = [k for k in keys if k not in section]
    if missing:
        raise ModelConfigError(
            f"The model config lacks {name}.{missing[0]}; set it (conf/ holds the value of each setting)."
        )
    return {k: section[k] for k in keys}


def build_amplified_teacher(
    backbone: Mapping[str, Any], raa: Mapping[str, Any], weights: str | None = None
) -> AmplifiedTeacher:
    """Encoder from `backbone` (name, weights; `weights` overrides) with RAA per `raa` (enabled, L, τ...)."""
    source = _settings(backbone, "backbone", ("name",) if weights is not None else ("name", "weights"))
    encoder = Encoder(source["name"], source["weights"] if weights is None else weights)
    return AmplifiedTeacher(encoder, **_settings(raa, "raa", RAA_KEYS))


def build_aand(
    backbone: Mapping[str, Any],
    raa: Mapping[str, Any],
    anomaly_map: Mapping[str, Any],
    weights: str | None = None,
    teacher: AmplifiedTeacher | None = None,
) -> AAND:
    """Full model; the student is sized from the teacher's channels and `backbone.student`."""
    teacher = teacher or build_amplified_teacher(backbone, raa, weights)
    student = _settings(
        _settings(backbone, "backbone", ("student",))["student"], "backbone.student", STUDENT_KEYS
    )
    student["decoder_layers"] = tuple(student["decoder_layers"])
    fusion = MapFusion(*_settings(anomaly_map, "anomaly_map", ("fusion", "fusion_draws")).values())
    return AAND(teacher, Student(teacher.channels, **student), build_anomaly_map(anomaly_map), fusion)


def build_anomaly_map(anomaly_map: Mapping[str, Any]) -> AnomalyMapGenerator:
    """The smoothing of `anomaly_map` (σ, truncate); the `fusion*` keys belong to the model (`build_aand`)."""
    return AnomalyMapGenerator(**{k: v for k, v in anomaly_map.items() if not k.startswith("fusion")})
