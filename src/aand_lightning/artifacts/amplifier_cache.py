"""Finished stage-1 runs by content address, and where a run's stage 2 gets its amplifier from.

The key of a stage-1 run is every setting that shapes what stage 1 learns or reports, and the size and
modification time of every data file: a cached amplifier is reused only for the same data and settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from aand_lightning.artifacts.amplifier import NAME, in_folder
from aand_lightning.callbacks.last_checkpoint import LAST
from aand_lightning.config import plain
from aand_lightning.data.records import Sample

log = logging.getLogger(__name__)

# Bump when what stage 1 learns changes without a config change (e.g. the data path: 2 = PIL resize,
# native-resolution foreground, the authors' texture augmenters; 3 = the texture ops draw from one
# albumentations state per sample), so cached amplifiers are not reused.
STAGE1_CODE_VERSION = 3

# Config keys that do not shape what stage 1 learns or reports: stage 2, logging, where outputs go,
# how a run is resumed; everything else (data, backbone, RAA, synthesis, schedule, seed...) is in the key.
_NOT_STAGE1 = frozenset({
    "distill", "loss", "logger", "stage", "amplifier", "amplifier_cache", "ckpt_path", "run_name",
    "current_stage", "paths", "hydra", "callbacks",
})  # fmt: skip
_NOT_STAGE1_ANOMALY_MAP = frozenset({"output", "fused_weight"})  # stage 2's choice of map
_NOT_STAGE1_DATAMODULE = frozenset({"num_workers", "eval_batch_size", "cache_dir"})
_NOT_STAGE1_TRAINER = frozenset(
    {"enable_progress_bar", "log_every_n_steps", "enable_model_summary", "devices"}
)


def _files_fingerprint(samples: Iterable[Sample]) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime) of every image and mask: a changed, added or removed file changes it."""
    paths = sorted({str(p) for s in samples for p in (s.image, s.mask) if p is not None})
    if not paths:
        return []
    base = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    stats = [(p, os.stat(p)) for p in paths]
    return [(os.path.relpath(p, base), st.st_size, st.st_mtime_ns) for p, st in stats]


def _stage1_settings(cfg: DictConfig) -> dict[str, Any]:
    keyed = {k: plain(cfg[k]) for k in cfg if k not in _NOT_STAGE1 | {"protocol"}}
    # The protocol's callbacks are built from its other fields (and name per-run folders): key on those.
    keyed["protocol"] = {k: plain(v) for k, v in cfg.get("protocol", {}).items() if k != "callbacks"}
    keyed["datamodule"] = {k: v for k, v in keyed["datamodule"].items() if k not in _NOT_STAGE1_DATAMODULE}
    keyed["trainer"] = {k: v for k, v in keyed["trainer"].items() if k not in _NOT_STAGE1_TRAINER}
    keyed["evaluation"] = {k: v for k, v in keyed.get("evaluation", {}).items() if k != "heatmaps"}
    keyed["anomaly_map"] = {k: v for k, v in keyed["anomaly_map"].items() if k not in _NOT_STAGE1_ANOMALY_MAP}
    keyed["backbone"] = {k: v for k, v in keyed["backbone"].items() if k != "student"}  # stage 2's
    keyed["dataset"] = {k: v for k, v in keyed["dataset"].items() if k not in ("categories", "download")}
    keyed["dataset"]["source"] = {k: v for k, v in keyed["dataset"]["source"].items() if k != "download"}
    if keyed["synthesis"].get("textures") != "dtd":  # where DTD would go matters only when it is used
        keyed["synthesis"].pop("dtd_root", None)
    for node in ("source", "synthesizer", "augment"):  # the datamodule's copies of top-level nodes
        keyed["datamodule"].pop(node, None)
    return keyed


def cache_key(cfg: DictConfig, samples: Iterable[Sample]) -> str:
    """Content address of a stage-1 run: every stage-1 setting (the data source's fields included) and
    the size and modification time of every data file."""
    parts = {
        "code": STAGE1_CODE_VERSION,
        "settings": _stage1_settings(cfg),
        "files": _files_fingerprint(samples),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_amplifier(cache_dir: str | Path | None, key: str) -> Path | None:
    """The cached amplifier for `key`, if any."""
    if cache_dir is None:
        return None
    path = Path(cache_dir) / key / NAME
    return path if path.is_file() else None


def store_amplifier(cache_dir: str | Path | None, key: str, stage_dir: Path) -> None:
    """Copy a finished stage-1 run's amplifier and metrics into the cache (atomically, by rename)."""
    if cache_dir is None or not (stage_dir / NAME).is_file():
        return
    target = Path(cache_dir) / key
    tmp = target.with_name(f".{key}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (NAME, "metrics.json"):
        if (stage_dir / name).is_file():
            shutil.copy2(stage_dir / name, tmp / name)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    log.info("Stored the stage-1 amplifier in the cache: %s", target)


@dataclass
class Stage1Plan:
    """Where stage 2's amplifier comes from: `train` stage 1 now, or `amplifier` (None: none needed
    or none found); `records` are the metrics of a stage 1 that is reused (finished in this run dir,
    or cached); `key` is the stage-1 cache key ("" without RAA)."""

    train: bool
    amplifier: Path | None
    key: str
    records: list[dict[str, Any]] = field(default_factory=list)


def finished_record(stage_dir: Path) -> dict[str, Any] | None:
    """The metrics record of a stage that already finished in this run dir (when resuming)."""
    metrics = stage_dir / "metrics.json"
    done = metrics.is_file() and (stage_dir.name != "amplify" or in_folder(stage_dir) is not None)
    return json.loads(metrics.read_text()) if done else None


def plan_stage1(cfg: DictConfig, run_dir: Path, samples: Iterable[Sample]) -> Stage1Plan:
    """With `ckpt_path=last` a stage 1 that finished in `run_dir` is kept and one that was running
    continues; otherwise `stage=all` reuses a cached amplifier of the same key, and `stage=distill`
    takes `amplifier=`, else the cached one."""
    stages = list(cfg.stage.run)
    key = cache_key(cfg, samples) if cfg.raa.enabled else ""
    cached = cached_amplifier(cfg.amplifier_cache, key) if key else None
    given = Path(cfg.amplifier) if cfg.amplifier else None
    resuming = cfg.ckpt_path is not None
    if "amplify" not in stages:
        if given is None and cached is not None:
            log.info(
                "stage=distill uses the cached stage-1 amplifier %s (stage-1 config hash %s)", cached, key
            )
            return Stage1Plan(False, cached, key)
        return Stage1Plan(False, given, key)
    finished = finished_record(run_dir / "amplify") if resuming else None
    if finished is not None:
        log.info("Stage 1 already finished in %s: continuing with what follows it", run_dir)
        return Stage1Plan(False, in_folder(run_dir / "amplify"), key, [finished])
    started = (run_dir / "amplify" / "checkpoints" / LAST).is_file()  # resume it, not the cache
    if cached is not None and "distill" in stages and not (resuming and started):
        log.info("Reusing the cached stage-1 amplifier %s (stage-1 config hash %s)", cached, key)
        metrics = cached.parent / "metrics.json"
        records = (
            [json.loads(metrics.read_text()) | {"cached_from": str(cached)}] if metrics.is_file() else []
        )
        return Stage1Plan(False, cached, key, records)
    return Stage1Plan(True, None, key)
