"""One stage's Trainer and test pass, shared by training and `eval`: the configured loggers and
callbacks, the test on the dataset's test split, its metrics.json, and the record of a failure."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from aand_lightning.config import plain
from aand_lightning.data.datamodule import AnomalyDataModule
from aand_lightning.reporting.failures import mark_failed, user_error
from aand_lightning.reporting.loggers import build_loggers, finish_stage
from aand_lightning.reporting.summary import stage_record
from aand_lightning.stages.base import AnomalyStage

METRICS = "metrics.json"

log = logging.getLogger(__name__)


def stage_trainer(
    cfg: DictConfig, run_dir: Path, first: Sequence[Callback] = (), last: Sequence[Callback] = (),
    **trainer_args: Any,
) -> L.Trainer:  # fmt: skip
    """The Trainer of the stage `cfg.current_stage` (`cfg.trainer` + `trainer_args`, root
    `<run dir>/<stage>`): the configured loggers, given the resolved config, and the callbacks `first`,
    the configured ones, then `last`."""
    configured = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    return instantiate(
        cfg.trainer, default_root_dir=str(run_dir / cfg.current_stage),
        logger=build_loggers(cfg.get("logger"), plain(cfg)), callbacks=[*first, *configured, *last],
        **trainer_args,
    )  # fmt: skip


def test_and_record(
    cfg: DictConfig, trainer: L.Trainer, module: AnomalyStage, datamodule: AnomalyDataModule, run_dir: Path,
    ckpt_path: str | None = None, fit_seconds: float = 0.0, resumed_from: str | None = None,
    about: Mapping[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Test `module` on the test split (the weights of `ckpt_path`, else its own; a dataset without
    test images is logged and skipped); write its record, with the entries of `about`, to
    `<run dir>/<stage>/metrics.json` (rank 0); end the stage's logger runs; return the record."""
    name = module.stage_name
    if datamodule.has_test:
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path)
    else:
        log.warning(
            "No test images for %s: stage %s is trained but not evaluated.", datamodule.category, name
        )
    record = stage_record(cfg, module, fit_seconds, resumed_from, datamodule.eval_batch_size) | dict(
        about or {}
    )
    if trainer.is_global_zero:
        (run_dir / name).mkdir(parents=True, exist_ok=True)
        (run_dir / name / METRICS).write_text(json.dumps(record, indent=2))
    finish_stage(trainer.loggers)
    return record


def failure_details(cfg: DictConfig) -> dict[str, Any]:
    """What `failed.json` and the sweep summary say about the failed job besides its reason."""
    keys = {"dataset": "dataset.name", "category": "dataset.category", "stage": "current_stage"}
    return {k: OmegaConf.select(cfg, v, default=None) for k, v in keys.items()}


@contextmanager
def raising_failures(cfg: DictConfig, run_dir: Path) -> Iterator[None]:
    """Around a Python call (the entry points' `main` uses `job_failed` instead): a failure leaves
    `failed.json` in the run dir (rank 0) and is raised; a user mistake as its `UserError`, also
    when Hydra's `instantiate` wrapped it."""
    try:
        yield
    except Exception as error:
        if rank_zero_only.rank == 0:
            mark_failed(run_dir, error, failure_details(cfg))
        cause = user_error(error)
        if cause is None or cause is error:
            raise
        raise cause from None
