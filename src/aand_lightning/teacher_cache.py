"""Reuse stage-1 teachers across runs: a teacher is keyed by a hash of everything that shaped it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from aand_lightning.callbacks.teacher_handoff import ARTIFACT_NAME

# Raised whenever the code changes what stage 1 sees for an unchanged config, so older teachers are not
# reused: 2 = PIL resize, native-resolution foregrounds, imgaug's texture ops, L_amp foreground > 0.3.
DATA_PATH_VERSION = 2

# Trainer keys that change how a run looks or is placed, not what stage 1 learns.
COSMETIC_TRAINER_KEYS = {"enable_progress_bar", "log_every_n_steps", "enable_model_summary", "devices"}


def stage1_fingerprint(cfg: DictConfig) -> str:
    """Short hash of the stage-1 inputs: data, backbone, RAA, synthesis, stage-1 schedule, seed, trainer."""
    trainer = {
        k: v
        for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()
        if k not in COSMETIC_TRAINER_KEYS
    }
    datamodule = OmegaConf.to_container(cfg.datamodule, resolve=True)
    parts: dict[str, Any] = {
        "dataset": {
            k: OmegaConf.to_container(cfg.dataset, resolve=True)[k]
            for k in ("name", "root", "category", "image_size", "foreground_rules")
        },
        "backbone": OmegaConf.to_container(cfg.backbone, resolve=True),
        "raa": OmegaConf.to_container(cfg.raa, resolve=True),
        "synthesis": OmegaConf.to_container(cfg.synthesis, resolve=True),
        "amplify": OmegaConf.to_container(cfg.amplify, resolve=True),
        "data": {k: datamodule.get(k) for k in ("batch_size", "val_fraction", "seed", "interpolation")},
        "data_path_version": DATA_PATH_VERSION,
        "seed": cfg.seed,
        "trainer": trainer,
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
    tmp = target.with_name(f".{key}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (ARTIFACT_NAME, "metrics.json"):
        if (stage_dir / name).is_file():
            shutil.copy2(stage_dir / name, tmp / name)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
