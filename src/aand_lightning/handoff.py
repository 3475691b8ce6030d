"""The stage-1 artifact, end to end: what stage 1 hands to stage 2.

One module owns its format, save/read/validation, the content-addressed cache of finished stage-1
runs, and rebuilding the frozen amplified teacher for stage 2 from the artifact's own settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from aand_lightning.config import with_config_defaults
from aand_lightning.data.records import Sample
from aand_lightning.errors import UserError
from aand_lightning.files import load_torch_file
from aand_lightning.models.amplified_teacher import AmplifiedTeacher
from aand_lightning.models.build import build_amplified_teacher

log = logging.getLogger(__name__)

ARTIFACT_FORMAT = "aand-teacher/2"
ARTIFACT_NAME = "teacher.pt"
_READABLE_FORMATS = ("aand-teacher/1", ARTIFACT_FORMAT)
# Bump when what stage 1 learns changes without a config change (e.g. the data path: 2 = PIL resize,
# native-resolution foreground, the authors' texture augmenters), so cached teachers are not reused.
STAGE1_CODE_VERSION = 2
_PASS = "pass teacher_ckpt=<stage-1 run dir>/amplify/teacher.pt"

# Config keys that do not shape what stage 1 learns or reports: stage 2, logging, where outputs go,
# how a run is resumed; everything else (data, backbone, RAA, synthesis, schedule, seed...) is in the key.
_NOT_STAGE1 = frozenset({
    "distill", "loss", "logger", "stage", "teacher_ckpt", "teacher_cache", "ckpt_path", "run_name",
    "current_stage", "paths", "hydra", "callbacks",
})  # fmt: skip
_NOT_STAGE1_DATAMODULE = frozenset({"num_workers", "eval_batch_size", "cache_dir"})
_NOT_STAGE1_TRAINER = frozenset(
    {"enable_progress_bar", "log_every_n_steps", "enable_model_summary", "devices"}
)


class TeacherArtifactError(UserError):
    """The stage-1 teacher is missing, unreadable, or does not fit the stage-2 config."""


def save_teacher(
    path: str | Path,
    teacher: AmplifiedTeacher,
    backbone: Mapping[str, Any],
    raa: Mapping[str, Any],
    textures: str | None = None,
) -> None:
    """Weights of backbone + RAA, the settings they were trained with and the texture source of their
    synthetic anomalies; written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": ARTIFACT_FORMAT,
        "backbone": {"name": backbone["name"], "weights": backbone.get("weights")},
        "raa": dict(raa),
        "textures": textures,
        "state_dict": teacher.state_dict(),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def locate(path: str | Path | None) -> Path:
    """The artifact file behind `teacher_ckpt`: the file itself, or a stage-1 run dir (or its amplify/)."""
    if path is None:
        raise TeacherArtifactError(
            f"Stage 2 needs a stage-1 teacher: {_PASS}, run stage=all, "
            "or set raa=off for the plain RD baseline."
        )
    path = Path(path)
    if path.is_dir():
        path = next(
            (p for p in (path / ARTIFACT_NAME, path / "amplify" / ARTIFACT_NAME) if p.is_file()), path
        )
    if not path.is_file():
        raise TeacherArtifactError(f"No stage-1 teacher at {path}; {_PASS}.")
    return path


def read_teacher(path: str | Path | None) -> dict[str, Any]:
    """Load and check an artifact's format; old artifacts get the current layout and settings."""
    path = locate(path)
    payload = load_torch_file(path, "a stage-1 teacher artifact", _PASS, TeacherArtifactError)
    if payload.get("format") not in _READABLE_FORMATS or "state_dict" not in payload:
        raise TeacherArtifactError(f"{path} is not a stage-1 teacher artifact; {_PASS}.")
    if isinstance(payload["backbone"], str):
        payload["backbone"] = {"name": payload["backbone"]}
    return with_config_defaults(payload) | {"path": path}


def check_compatible(payload: Mapping[str, Any], backbone: Mapping[str, Any], raa: Mapping[str, Any]) -> None:
    """Refuse a stage-2 config that disagrees with the teacher; the message names the setting to pass."""
    path, trained = payload["path"], payload["backbone"]["name"]
    if trained != backbone["name"]:
        raise TeacherArtifactError(
            f"The teacher at {path} was trained with backbone={trained}, but this run uses "
            f"backbone={backbone['name']}; pass backbone={trained} or a teacher trained with "
            f"backbone={backbone['name']}."
        )
    for key in sorted(set(payload["raa"]) | set(raa)):
        theirs, ours = payload["raa"].get(key), raa.get(key)
        if theirs != ours:
            raise TeacherArtifactError(
                f"The teacher at {path} was trained with raa.{key}={theirs}, but this run sets "
                f"raa.{key}={ours}; pass raa.{key}={theirs} or a teacher trained with raa.{key}={ours}."
            )


def load_teacher(
    path: str | Path | None, backbone: Mapping[str, Any], raa: Mapping[str, Any]
) -> tuple[AmplifiedTeacher, dict[str, Any]]:
    """The frozen amplified teacher of stage 2, rebuilt from the artifact's own backbone and RAA
    settings, and what the artifact says of it (path, backbone, raa, textures)."""
    payload = read_teacher(path)
    check_compatible(payload, backbone, raa)
    teacher = build_amplified_teacher(payload["backbone"], payload["raa"], weights="none")
    teacher.load_state_dict(payload.pop("state_dict"))
    return teacher, payload


def _files_fingerprint(samples: Iterable[Sample]) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime) of every image and mask: a changed, added or removed file changes it."""
    paths = sorted({str(p) for s in samples for p in (s.image, s.mask) if p is not None})
    if not paths:
        return []
    base = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    stats = [(p, os.stat(p)) for p in paths]
    return [(os.path.relpath(p, base), st.st_size, st.st_mtime_ns) for p, st in stats]


def _resolved(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


def _stage1_settings(cfg: DictConfig) -> dict[str, Any]:
    plain = {k: _resolved(cfg[k]) for k in cfg if k not in _NOT_STAGE1}
    plain["datamodule"] = {k: v for k, v in plain["datamodule"].items() if k not in _NOT_STAGE1_DATAMODULE}
    plain["trainer"] = {k: v for k, v in plain["trainer"].items() if k not in _NOT_STAGE1_TRAINER}
    plain["evaluation"] = {k: v for k, v in plain.get("evaluation", {}).items() if k != "heatmaps"}
    plain["dataset"] = {k: v for k, v in plain["dataset"].items() if k not in ("categories", "download")}
    plain["dataset"]["source"] = {k: v for k, v in plain["dataset"]["source"].items() if k != "download"}
    if plain["synthesis"].get("textures") != "dtd":  # where DTD would go matters only when it is used
        plain["synthesis"].pop("dtd_root", None)
    for copy in ("source", "synthesizer"):  # the datamodule's copies of dataset.source and synthesis
        plain["datamodule"].pop(copy, None)
    return plain


def cache_key(cfg: DictConfig, samples: Iterable[Sample]) -> str:
    """Content address of a stage-1 run: every stage-1 setting (the data source's fields included) and
    the size and modification time of every data file."""
    parts = {
        "code": STAGE1_CODE_VERSION,
        "settings": _stage1_settings(cfg),
        "files": _files_fingerprint(samples),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_teacher(cache_dir: str | Path | None, key: str) -> Path | None:
    """The cached artifact for `key`, if any."""
    if cache_dir is None:
        return None
    path = Path(cache_dir) / key / ARTIFACT_NAME
    return path if path.is_file() else None


def store_teacher(cache_dir: str | Path | None, key: str, stage_dir: Path) -> None:
    """Copy a finished stage-1 run's teacher and metrics into the cache (atomically, by rename)."""
    if cache_dir is None or not (stage_dir / ARTIFACT_NAME).is_file():
        return
    target = Path(cache_dir) / key
    tmp = target.with_name(f".{key}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (ARTIFACT_NAME, "metrics.json"):
        if (stage_dir / name).is_file():
            shutil.copy2(stage_dir / name, tmp / name)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    log.info("Stored the stage-1 teacher in the cache: %s", target)
