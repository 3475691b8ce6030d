"""The experiment loggers of a stage: build every configured one, send pictures to those that take
them, and close each stage's runs.

`conf/logger/*.yaml` key each logger by its name, so `logger=[csv,tensorboard,mlflow]` chooses several
and `+logger.<name>._target_=...` adds any other Lightning logger.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig

from aand_lightning.errors import UserError


def logger_configs(node: DictConfig | None) -> dict[str, DictConfig]:
    """The chosen loggers' configs by name (`logger=none` → none; `logger.<name>=null` drops one)."""
    configs = {name: value for name, value in (node or {}).items() if value is not None}
    for name, value in configs.items():
        if not isinstance(value, DictConfig) or "_target_" not in value:
            raise UserError(
                f"logger.{name} is not a logger config; choose logger=csv|tensorboard|mlflow|wandb|none "
                f"(or a list of them), or add one with +logger.<name>._target_=<Lightning logger class>."
            )
    return configs


def wandb_config(node: DictConfig | None) -> DictConfig | None:
    """The wandb logger's config when wandb is one of the chosen loggers."""
    return next((c for c in logger_configs(node).values() if "Wandb" in str(c._target_)), None)


def build_loggers(node: DictConfig | None, hyperparameters: dict[str, Any]) -> list[Logger]:
    """Every chosen logger, with the run's resolved config logged as its hyperparameters."""
    loggers = []
    for name, config in logger_configs(node).items():
        try:
            logger = instantiate(config)
        except InstantiationException as error:
            if not isinstance(error.__cause__, ImportError):
                raise
            raise UserError(
                f"logger.{name} needs a package that is not installed ({error.__cause__}); install it "
                "(MLflow: pip install 'aand-lightning[mlflow]') or choose other loggers."
            ) from None
        logger.log_hyperparams(hyperparameters)
        loggers.append(logger)
    return loggers


def log_images(
    loggers: Iterable[Logger],
    key: str,
    images: Sequence[np.ndarray],
    names: Sequence[str],
    captions: Sequence[str],
    step: int,
) -> None:
    """Log RGB uint8 images under `key` to every logger that takes images: a wandb image list,
    TensorBoard images tagged `key/<name>`, MLflow artifacts `key/<name>.png`. CSV takes none."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key, list(images), caption=list(captions))
        elif isinstance(logger, TensorBoardLogger):
            for image, name in zip(images, names, strict=True):
                logger.experiment.add_image(f"{key}/{name}", image, step, dataformats="HWC")
        elif isinstance(logger, MLFlowLogger):
            for image, name in zip(images, names, strict=True):
                logger.experiment.log_image(logger.run_id, image, artifact_file=f"{key}/{name}.png")


def finish_stage(loggers: Iterable[Logger]) -> None:
    """End the stage's wandb run, so that the next stage (or multirun job) starts its own."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()
