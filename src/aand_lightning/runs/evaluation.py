"""`eval`: a stage-2 checkpoint tested on a dataset's test split by training's own test pass (the stage's
test loop and metrics, the configured callbacks' heatmaps, ROC and histogram, metrics.json)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from aand_lightning.artifacts.checkpoint import MODEL_SETTINGS, TrainedModel, load_model
from aand_lightning.config.checks import check_config
from aand_lightning.data.records import DatasetError
from aand_lightning.errors import ConfigError
from aand_lightning.reporting.failures import FAILED
from aand_lightning.reporting.summary import format_table
from aand_lightning.runs.stage import METRICS, stage_trainer, test_and_record
from aand_lightning.runs.training import distill_module

log = logging.getLogger(__name__)


def use_checkpoint_model(cfg: DictConfig, trained: TrainedModel) -> None:
    """The checkpoint decides the model: its settings and preprocessing replace the config's."""
    for key in MODEL_SETTINGS:
        OmegaConf.update(cfg, key, trained.settings[key], merge=False)
    preprocessing = {"_target_": cfg.preprocessing._target_, **trained.preprocessing.to_dict()}
    OmegaConf.update(cfg, "preprocessing", preprocessing, merge=False)


def test_checkpoint(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Test the checkpoint `cfg.ckpt` on the configured dataset's test split, as training tests stage 2;
    writes `<run dir>/distill/metrics.json` (and the pictures of the configured callbacks) and
    `<run dir>/metrics.json`; returns the record."""
    if OmegaConf.is_missing(cfg, "ckpt"):
        raise ConfigError("eval tests a trained model; pass ckpt=<run dir>/distill/checkpoints/last.ckpt.")
    trained = load_model(cfg.ckpt)
    use_checkpoint_model(cfg, trained)
    check_config(cfg)
    (run_dir / FAILED).unlink(missing_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.datamodule)
    if not datamodule.has_test:  # lists and decodes every file: bad data fails before testing starts
        raise DatasetError(
            f"Category {datamodule.category!r} of dataset {cfg.dataset.name} has no test images; eval "
            "needs labelled test images (dataset=folder: pass dataset.test_dir=/path/to/test)."
        )
    size, interpolation = trained.preprocessing.image_size, trained.preprocessing.interpolation
    log.info("Testing %s: its model and preprocessing (%sx%s, %s)", cfg.ckpt, *size, interpolation)
    module = distill_module(cfg, trained.model, datamodule)
    trainer = stage_trainer(cfg, run_dir)
    record = test_and_record(
        cfg, trainer, module, datamodule, run_dir, about={"checkpoint": str(Path(cfg.ckpt).resolve())}
    )
    if rank_zero_only.rank == 0:
        (run_dir / METRICS).write_text(json.dumps([record], indent=2))
        print(format_table([record]))
    return record
