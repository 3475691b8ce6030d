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
from aand_lightning.models.encoder import Encoder, feature_indices
from aand_lightning.models.fused_map import FusedMap
from aand_lightning.models.raa import RAASettings
from aand_lightning.models.student import Student
from aand_lightning.models.teacher import Teacher
from aand_lightning.models.vit_encoder import ViTEncoder, check_vit
from aand_lightning.models.vit_student import ViTStudent

# The teacher families (`backbone.family`) and the student each needs (`backbone.student.kind`, set by
# the `student` config group): RD's mirrored CNN for a CNN's three levels, the ViT decoder for a ViT's taps.
STUDENT_OF_FAMILY = {"cnn": "rd", "vit": "vit_decoder"}
BACKBONE_OF_FAMILY = {"cnn": "wide_resnet50_2", "vit": "clip_vit_b16"}
STUDENT_KEYS = {
    "rd": ("block", "bottleneck_blocks", "decoder_layers", "width_per_group", "bottleneck_width_per_group"),
    "vit_decoder": ("taps", "num_heads", "mlp_ratio", "pos_grid"),
}
ANOMALY_MAP_KEYS = ("sigma", "truncate", "output", "fused_weight")
# What describes the teacher's encoder (a stage-1 amplifier stores these; the student is stage 2's).
TEACHER_KEYS = ("name", "weights", "family", "taps", "model_args")


def _settings(section: Mapping[str, Any], name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """`keys` of `section` (the config node `name`), in that order; the error names the first one it lacks."""
    missing = [k for k in keys if k not in section]
    if missing:
        raise ModelConfigError(
            f"The model config lacks {name}.{missing[0]}; set it (conf/ holds the value of each setting)."
        )
    return {k: section[k] for k in keys}


def _family(backbone: Mapping[str, Any]) -> str:
    """`backbone.family`; a description without it (written before the ViT variant) is a CNN's."""
    return backbone.get("family", "cnn")


def check_pairing(backbone: Mapping[str, Any]) -> tuple[str, str]:
    """The teacher family and student kind of `backbone`, refused in one sentence when they do not pair."""
    family = _family(backbone)
    if family not in STUDENT_OF_FAMILY:
        raise ModelConfigError(f"backbone.family={family} is not one of {', '.join(STUDENT_OF_FAMILY)}.")
    kind = _settings(backbone.get("student") or {}, "backbone.student", ("kind",))["kind"]
    if kind not in STUDENT_KEYS:
        raise ModelConfigError(f"student={kind} is not one of {', '.join(STUDENT_KEYS)}.")
    wanted = STUDENT_OF_FAMILY[family]
    if kind != wanted:
        other = next(f for f, k in STUDENT_OF_FAMILY.items() if k == kind)
        raise ModelConfigError(
            f"student={kind} needs a {other.upper()} teacher but backbone {backbone['name']} is a "
            f"{family.upper()}; pass student={wanted} (or backbone={BACKBONE_OF_FAMILY[other]})."
        )
    return family, kind


def check_backbone(backbone: Mapping[str, Any]) -> None:
    """The backbone settings, checked without building anything (meta-device probes): the pairing, the
    timm name, a CNN's stride-4/8/16 levels or a ViT's taps."""
    family, _ = check_pairing(backbone)
    if family == "vit":
        vit = _settings(backbone, "backbone", ("taps", "model_args"))
        check_vit(backbone["name"], list(vit["taps"]), vit["model_args"])
    else:
        feature_indices(backbone["name"])


def build_encoder(backbone: Mapping[str, Any], weights: str | None = None) -> Encoder | ViTEncoder:
    """The frozen encoder of `backbone` (`TEACHER_KEYS`; `weights` overrides)."""
    family = _family(backbone)
    source = _settings(backbone, "backbone", ("name",) if weights is not None else ("name", "weights"))
    weights = source["weights"] if weights is None else weights
    if family == "vit":
        vit = _settings(backbone, "backbone", ("taps", "model_args"))
        return ViTEncoder(source["name"], weights, tuple(vit["taps"]), vit["model_args"])
    return Encoder(source["name"], weights)


def build_teacher(backbone: Mapping[str, Any], raa: Mapping[str, Any], weights: str | None = None) -> Teacher:
    """Encoder from `backbone` with RAA per `raa` (enabled, L, τ...)."""
    return Teacher(build_encoder(backbone, weights), RAASettings.from_config(raa))


def build_student(channels: list[int], backbone: Mapping[str, Any]) -> Student | ViTStudent:
    """The student `backbone.student` describes, sized from the teacher's `channels`."""
    _, kind = check_pairing(backbone)
    settings = _settings(backbone["student"], "backbone.student", STUDENT_KEYS[kind])
    if kind == "vit_decoder":
        return ViTStudent(channels, tuple(settings.pop("taps")), **settings)
    settings["decoder_layers"] = tuple(settings["decoder_layers"])
    return Student(channels, **settings)


def build_aand(
    backbone: Mapping[str, Any],
    raa: Mapping[str, Any],
    anomaly_map: Mapping[str, Any],
    weights: str | None = None,
    teacher: Teacher | None = None,
) -> AAND:
    """Full model; the student is sized from the teacher's channels and `backbone.student`."""
    teacher = teacher or build_teacher(backbone, raa, weights)
    settings = _settings(anomaly_map, "anomaly_map", ANOMALY_MAP_KEYS)
    return AAND(
        teacher,
        build_student(teacher.channels, backbone),
        build_anomaly_map(settings),
        FusedMap(settings["fused_weight"]),
        MapName(settings["output"]),
    )


def build_anomaly_map(anomaly_map: Mapping[str, Any]) -> AnomalyMapGenerator:
    """The smoothing of `anomaly_map` (σ, truncate); the other keys belong to the model (`build_aand`)."""
    return AnomalyMapGenerator(**_settings(anomaly_map, "anomaly_map", ("sigma", "truncate")))
