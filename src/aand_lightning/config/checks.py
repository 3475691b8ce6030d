"""Checks that run before any model or Trainer is built, so that a bad value fails in a second.

Each failure is one sentence naming the config key and a value that works.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig, ListConfig, OmegaConf

from aand_lightning.data.synthesis.synthesizer import FRACTIONS, check_fractions
from aand_lightning.errors import UserError
from aand_lightning.models.aand import OUTPUTS
from aand_lightning.models.anomaly_map import MapName
from aand_lightning.models.encoder import ENCODER_STRIDES
from aand_lightning.models.fused_map import parse_weight
from aand_lightning.models.teacher import require_raa
from aand_lightning.reporting.loggers import wandb_config
from aand_lightning.stages.feature_cache import FeatureCacheSettings

# The student's bottleneck halves the deepest (stride-16) level once more, and its decoder doubles
# back up: sizes must divide by this for the levels to line up.
SIZE_MULTIPLE = 2 * max(ENCODER_STRIDES)
_WANDB_NO_LOGIN = ("offline", "dryrun", "disabled")


class ConfigError(UserError):
    """A config value out of range; the message names the key."""


def _value(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=True)


def _integer(cfg: DictConfig, key: str, minimum: int, optional: bool = False) -> None:
    value = _value(cfg, key)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value} is not valid; pass an integer >= {minimum}.")


def _fraction(
    cfg: DictConfig, key: str, low: float, high: float, closed_low: bool, closed_high: bool
) -> None:
    value = _value(cfg, key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = (
        ok
        and (low <= value if closed_low else low < value)
        and (value <= high if closed_high else value < high)
    )
    if not ok:
        interval = f"{'[' if closed_low else '('}{low}, {high}{']' if closed_high else ')'}"
        raise ConfigError(f"{key}={value} is not valid; pass a number in {interval}.")


def _image_size(cfg: DictConfig) -> None:
    value = _value(cfg, "dataset.image_size")
    sides = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    valid = len(sides) in (1, 2) and all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 and s % SIZE_MULTIPLE == 0 for s in sides
    )
    if not valid:
        raise ConfigError(
            f"dataset.image_size={value} is not valid; pass a positive multiple of {SIZE_MULTIPLE} "
            f"(e.g. 256), or [height, width] of such multiples (the student works at stride {SIZE_MULTIPLE})."
        )


def _feature_cache(cfg: DictConfig) -> None:
    try:
        FeatureCacheSettings(**OmegaConf.to_container(_value(cfg, "distill.feature_cache")))
    except UserError as error:
        raise ConfigError(str(error)) from None


def _raa(cfg: DictConfig, stage1: bool = False, fused: bool = False) -> None:
    try:
        require_raa(cfg.raa.enabled, stage1, fused)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _anomaly_map(cfg: DictConfig) -> None:
    """The output map is one stage 2 gives; the fused map needs RAA gates and normal validation images
    for its statistics."""
    output = _value(cfg, "anomaly_map.output")
    choices = [name.value for name in OUTPUTS]
    if output not in choices:
        raise ConfigError(f"anomaly_map.output={output} is not valid; pass one of {', '.join(choices)}.")
    try:
        parse_weight(_value(cfg, "anomaly_map.fused_weight"))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if output == MapName.FUSED:
        _raa(cfg, fused=True)
        if cfg.datamodule.validate_on_test:
            raise ConfigError(
                "anomaly_map.output=fused takes its statistics from normal validation images, which "
                "protocol=authors replaces by the test set; pass anomaly_map.output=aand with it."
            )


def check_config(cfg: DictConfig) -> None:
    """Sizes, batch sizes, epochs, fractions, the anomaly maps and the resume setting of a training config."""
    _image_size(cfg)
    _integer(cfg, "datamodule.batch_size", 1)
    _integer(cfg, "datamodule.eval_batch_size", 1, optional=True)
    _integer(cfg, "datamodule.num_workers", 0)
    _integer(cfg, "seed", 0)
    _integer(cfg, "protocol.check_val_every_n_epoch", 1)
    for stage in cfg.stage.run:
        _integer(cfg, f"{stage}.epochs", 1)
        _integer(cfg, f"protocol.{stage}.min_epochs", 1, optional=True)
    _fraction(cfg, "datamodule.val_fraction", 0.0, 1.0, closed_low=True, closed_high=False)
    _fraction(cfg, "distill.threshold_quantile", 0.0, 1.0, closed_low=True, closed_high=True)
    _fraction(cfg, "evaluation.fpr_limit", 0.0, 1.0, closed_low=False, closed_high=True)
    try:
        check_fractions({key: _value(cfg, f"synthesis.{key}") for key in FRACTIONS})
    except UserError as error:
        raise ConfigError(str(error)) from None
    _feature_cache(cfg)
    _anomaly_map(cfg)
    _integer(cfg, "distill.gate_draws", 1)
    stages = list(cfg.stage.run)
    _raa(cfg, stage1="amplify" in stages)
    ckpt = cfg.ckpt_path
    if ckpt not in (None, "last") and not Path(ckpt).is_file():
        raise ConfigError(f"ckpt_path={ckpt} is not a file; pass ckpt_path=last or the path of a .ckpt file.")
    if ckpt not in (None, "last") and len(stages) > 1:
        raise ConfigError(
            f"ckpt_path={ckpt} resumes one stage; pass stage=amplify or stage=distill with it, "
            "or ckpt_path=last to continue a stage=all run."
        )
    wandb = wandb_config(cfg.get("logger"))
    if wandb is not None:
        check_wandb(bool(wandb.get("offline", False)))


def _netrc_has(host: str) -> bool:
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    try:
        return path.is_file() and netrc.netrc(path).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def check_wandb(offline: bool = False) -> None:
    """wandb must find credentials (or run offline) without ever showing its interactive login prompt."""
    if offline or os.environ.get("WANDB_MODE", "").lower() in _WANDB_NO_LOGIN:
        return
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    if _netrc_has(host):
        return
    raise ConfigError(
        f"logger=wandb found no wandb credentials for {host}; run `wandb login` (or set WANDB_API_KEY), "
        "set WANDB_MODE=offline to log locally, or pass logger=csv."
    )
