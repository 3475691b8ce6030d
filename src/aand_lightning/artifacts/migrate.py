"""The one place files of older versions are brought up to date: settings and state-dict keys.

A stage-2 checkpoint stores `model_config` (backbone, raa, anomaly_map, preprocessing) and the
model's state dict; a stage-1 amplifier stores backbone, raa and the teacher's state dict. Keys an
older version did not write come from the configs; keys it wrote under an older name are renamed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from aand_lightning.config import backbone_option, config_file
from aand_lightning.models.anomaly_map import MapName

# Old name → new name, per settings section.
_STUDENT_RENAMES = {
    "fusion_blocks": "bottleneck_blocks",
    "fusion_width_per_group": "bottleneck_width_per_group",
}
# Old state-dict key prefix → new (relative to the teacher, or to the stage-2 model).
_TEACHER_KEYS = {"teacher.": "encoder."}  # the encoder was called `teacher` inside the teacher
_MODEL_KEYS = {"teacher.teacher.": "teacher.encoder.", "fusion.": "fused_map."}


def _student_defaults(name: str) -> dict[str, Any]:
    """`student` of the backbone option for the timm `name` (e.g. wide_resnet50_2.tv_in1k); {} if none."""
    option = backbone_option(name)
    return option[1].get("student", {}) if option else {}


def _anomaly_map(stored: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """`anomaly_map.fusion` (off | auto | a weight) was both the output choice and the fused weight."""
    current = {k: v for k, v in stored.items() if k not in ("fusion", "fusion_draws")}
    if "fusion" in stored:
        fusion = stored["fusion"]
        off = fusion is False or fusion == "off"
        current.setdefault("output", MapName.AAND.value if off else MapName.FUSED.value)
        current.setdefault("fused_weight", "auto" if off else fusion)
    return {**defaults, **current}


def _preprocessing(model: Mapping[str, Any], train: Mapping[str, Any]) -> dict[str, Any]:
    """Older checkpoints kept image size, interpolation, mean and std beside the model settings."""
    if "preprocessing" in model:
        return dict(model["preprocessing"])
    old = {k: model[k] for k in ("image_size", "interpolation", "mean", "std") if k in model}
    old.setdefault("interpolation", train["preprocessing"]["interpolation"])
    return old


def migrate_settings(model: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a checkpoint (`model_config`) or amplifier stores, in today's names and keys."""
    filled = dict(model)
    if "raa" in model:
        filled["raa"] = {**config_file("raa/default.yaml"), **model["raa"]}
    if "backbone" in model:  # before the ViT variant every teacher was a CNN with RD's student
        filled["backbone"] = {"family": "cnn", **model["backbone"]}
    if "student" in model.get("backbone", {}):
        backbone = filled["backbone"]
        student = {_STUDENT_RENAMES.get(k, k): v for k, v in backbone["student"].items()}
        student = {"kind": "rd", **_student_defaults(backbone["name"]), **student}
        filled["backbone"] = {**backbone, "student": student}
    if "anomaly_map" in model:  # a stage-2 checkpoint's model_config
        train = config_file("train.yaml")
        filled["anomaly_map"] = _anomaly_map(model["anomaly_map"], train["anomaly_map"])
        filled["preprocessing"] = _preprocessing(model, train)
        for key in ("image_size", "interpolation", "mean", "std"):
            filled.pop(key, None)
    return filled


def _renamed(state: Mapping[str, Any], renames: Mapping[str, str]) -> dict[str, Any]:
    out = {}
    for key, value in state.items():
        old = next((o for o in renames if key.startswith(o)), None)
        out[key if old is None else renames[old] + key[len(old) :]] = value
    return out


def migrate_teacher_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A stage-1 amplifier's teacher state dict in today's keys."""
    return _renamed(state, _TEACHER_KEYS)


def migrate_model_state(state: Mapping[str, torch.Tensor], output: MapName) -> dict[str, torch.Tensor]:
    """A stage-2 model's state dict (keys without the `model.` prefix) in today's keys and buffers."""
    state = _renamed(state, _MODEL_KEYS)
    if "map_threshold" not in state:  # written before the masks had their own threshold
        state["map_threshold"] = state["threshold"].clone()
        if output is MapName.FUSED:  # its threshold was chosen on the fused map's maxima, not today's score
            state["threshold"] = torch.full_like(state["threshold"], float("nan"))
    return state
