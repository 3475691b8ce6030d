"""Hand the frozen amplified teacher from stage 1 to stage 2 as a small self-describing artifact."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from aand_lightning.models.amplified_teacher import AmplifiedTeacher

ARTIFACT_FORMAT = "aand-teacher/1"
ARTIFACT_NAME = "teacher.pt"


class TeacherArtifactError(ValueError):
    """The stage-1 teacher is missing or does not fit the stage-2 config; the message names the fix."""


def save_teacher(path: str | Path, teacher: AmplifiedTeacher, backbone: str, raa: Mapping[str, Any]) -> None:
    """Weights of backbone + RAA and the config needed to rebuild them; written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": ARTIFACT_FORMAT,
        "backbone": backbone,
        "raa": dict(raa),
        "state_dict": teacher.state_dict(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def read_teacher(path: str | Path | None, backbone: str, raa: Mapping[str, Any]) -> dict[str, Any]:
    """Load an artifact and check it against the stage-2 config (backbone name and RAA shape)."""
    if path is None:
        raise TeacherArtifactError(
            "Stage 2 needs a stage-1 teacher: pass teacher_ckpt=<stage-1 run dir>/amplify/teacher.pt, "
            "run stage=all, or set raa.enabled=false for the plain RD baseline."
        )
    path = Path(path)
    if path.is_dir():
        path = next((p for p in (path / ARTIFACT_NAME, path / "amplify" / ARTIFACT_NAME) if p.exists()), path)
    if not path.is_file():
        raise TeacherArtifactError(
            f"No stage-1 teacher at {path}; pass teacher_ckpt=<stage-1 run dir>/amplify/teacher.pt."
        )
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != ARTIFACT_FORMAT:
        raise TeacherArtifactError(
            f"{path} is not a stage-1 teacher artifact; pass the teacher.pt written by stage=amplify."
        )
    if payload["backbone"] != backbone:
        raise TeacherArtifactError(
            f"The teacher at {path} was trained with backbone={payload['backbone']}, but this run uses "
            f"backbone={backbone}; pass backbone={payload['backbone']} or a matching teacher_ckpt."
        )
    for key in ("num_prototypes", "max_hidden"):
        if key in payload["raa"] and payload["raa"][key] != raa.get(key):
            raise TeacherArtifactError(
                f"The teacher at {path} has raa.{key}={payload['raa'][key]} but this run sets raa.{key}="
                f"{raa.get(key)}; pass raa.{key}={payload['raa'][key]} or a matching teacher_ckpt."
            )
    return payload


class TeacherHandoff(Callback):
    """At the end of stage-1 fit, rank 0 writes the teacher artifact; every rank waits until it exists."""

    def __init__(self, path: str | Path, backbone: str, raa: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.backbone = backbone
        self.raa = dict(raa)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            save_teacher(self.path, pl_module.teacher, self.backbone, self.raa)
        trainer.strategy.barrier("teacher_handoff")
