"""The amplifier: the file stage 1 hands to stage 2 (the frozen encoder and its trained RAA modules).

This module owns its format, save/read/validation, and rebuilding the frozen teacher for stage 2
from the file's own settings; `amplifier_cache` finds or stores finished stage-1 runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from aand_lightning.artifacts.migrate import migrate_settings, migrate_teacher_state
from aand_lightning.artifacts.torch_file import load_torch_file
from aand_lightning.config import backbone_override
from aand_lightning.errors import UserError
from aand_lightning.models.build import TEACHER_KEYS, build_teacher
from aand_lightning.models.teacher import Teacher

FORMAT = "aand-amplifier/3"
NAME = "amplifier.pt"
_OLD_NAMES = ("teacher.pt",)  # written before the file had its own name
_READABLE_FORMATS = ("aand-teacher/1", "aand-teacher/2", FORMAT)
_PASS = "pass amplifier=<stage-1 run dir>/amplify/amplifier.pt"


class AmplifierError(UserError):
    """The stage-1 amplifier is missing, unreadable, or does not fit the stage-2 config."""


def save_amplifier(
    path: str | Path,
    teacher: Teacher,
    backbone: Mapping[str, Any],
    raa: Mapping[str, Any],
    textures: str | None = None,
) -> None:
    """Weights of backbone + RAA, the settings they were trained with and the texture source of their
    synthetic anomalies; written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "backbone": {key: backbone[key] for key in TEACHER_KEYS if key in backbone},
        "raa": dict(raa),
        "textures": textures,
        "state_dict": teacher.state_dict(),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def in_folder(folder: Path) -> Path | None:
    """The amplifier file in a stage-1 folder (today's name, or the name it had before), if any."""
    return next((folder / name for name in (NAME, *_OLD_NAMES) if (folder / name).is_file()), None)


def locate(path: str | Path | None) -> Path:
    """The file behind `amplifier=`: the file itself, or a stage-1 run dir (or its amplify/)."""
    if path is None:
        raise AmplifierError(
            f"Stage 2 needs a stage-1 amplifier: {_PASS}, run stage=all, "
            "or set raa=off for the plain RD baseline."
        )
    path = Path(path)
    if path.is_dir():
        path = in_folder(path) or in_folder(path / "amplify") or path
    if not path.is_file():
        raise AmplifierError(f"No stage-1 amplifier at {path}; {_PASS}.")
    return path


def read_amplifier(path: str | Path | None) -> dict[str, Any]:
    """Load and check a file's format; older files get the current layout, settings and keys."""
    path = locate(path)
    payload = load_torch_file(path, "a stage-1 amplifier", _PASS, AmplifierError)
    if payload.get("format") not in _READABLE_FORMATS or "state_dict" not in payload:
        raise AmplifierError(f"{path} is not a stage-1 amplifier; {_PASS}.")
    if isinstance(payload["backbone"], str):
        payload["backbone"] = {"name": payload["backbone"]}
    payload["state_dict"] = migrate_teacher_state(payload["state_dict"])
    return migrate_settings(payload) | {"path": path}


def check_compatible(payload: Mapping[str, Any], backbone: Mapping[str, Any], raa: Mapping[str, Any]) -> None:
    """Refuse a stage-2 config that disagrees with the teacher; the message names the setting to pass."""
    path, trained = payload["path"], payload["backbone"]["name"]
    if trained != backbone["name"]:
        theirs, ours = backbone_override(trained), backbone_override(backbone["name"])
        raise AmplifierError(
            f"The amplifier at {path} was trained with {theirs}, but this run uses {ours}; "
            f"pass {theirs} or an amplifier trained with {ours}."
        )
    settings = [  # a ViT teacher's shape (absent for CNNs), then every RAA setting
        *((f"backbone.{k}", payload["backbone"].get(k), backbone.get(k)) for k in ("taps", "model_args")),
        *((f"raa.{k}", payload["raa"].get(k), raa.get(k)) for k in sorted(set(payload["raa"]) | set(raa))),
    ]
    for name, theirs, ours in settings:
        if theirs != ours:
            raise AmplifierError(
                f"The amplifier at {path} was trained with {name}={theirs}, but this run sets "
                f"{name}={ours}; pass {name}={theirs} or an amplifier trained with {name}={ours}."
            )


def load_amplifier(
    path: str | Path | None, backbone: Mapping[str, Any], raa: Mapping[str, Any]
) -> tuple[Teacher, dict[str, Any]]:
    """The frozen teacher of stage 2, rebuilt from the amplifier's own backbone and RAA settings, and
    what the file says of it (path, backbone, raa, textures)."""
    payload = read_amplifier(path)
    check_compatible(payload, backbone, raa)
    teacher = build_teacher(payload["backbone"], payload["raa"], weights="none")
    teacher.load_state_dict(payload.pop("state_dict"))
    return teacher, payload
