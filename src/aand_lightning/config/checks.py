"""Checks that run before any model or Trainer is built, so that a bad value fails in a second.

Each failure is one sentence naming the config key and a value that works.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator
from omegaconf import DictConfig, ListConfig, OmegaConf

from aand_lightning.callbacks.authors_protocol import AuthorsRule
from aand_lightning.data.synthesis.synthesizer import CHOICES, FRACTIONS, check_choices, check_fractions
from aand_lightning.errors import ConfigError, UserError, did_you_mean
from aand_lightning.models.aand import OUTPUTS
from aand_lightning.models.anomaly_map import MapName
from aand_lightning.models.build import check_backbone
from aand_lightning.models.encoder import ENCODER_STRIDES
from aand_lightning.models.fused_map import parse_weight
from aand_lightning.models.teacher import require_raa
from aand_lightning.reporting.loggers import wandb_config
from aand_lightning.reporting.wandb_login import check_wandb_login
from aand_lightning.stages.feature_cache import FeatureCacheSettings

# The student's bottleneck halves the deepest (stride-16) level once more, and its decoder doubles
# back up: sizes must divide by this for the levels to line up.
SIZE_MULTIPLE = 2 * max(ENCODER_STRIDES)


def _value(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=True)


def _integer(cfg: DictConfig, key: str, minimum: int, optional: bool = False) -> None:
    value = _value(cfg, key)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value} is not valid; pass an integer >= {minimum}.")


def _boolean(cfg: DictConfig, key: str) -> None:
    value = _value(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value} is not valid; pass true or false.")


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


_INSTANTIATE_KEYS = {"_target_", "_partial_", "_args_", "_recursive_", "_convert_"}


def check_targets(node: Any, path: str = "") -> None:
    """Every setting of a `_target_` node is a parameter of what it builds (a key added with
    `+datamodule.batchsize=4` fails here in one sentence, not as a TypeError once the data is read)."""
    if isinstance(node, DictConfig | ListConfig):
        node = OmegaConf.to_container(node, resolve=False)
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in children:
        check_targets(child, f"{path}.{key}" if path else str(key))
    target = node.get("_target_") if isinstance(node, dict) else None
    if not isinstance(target, str):
        return
    parameters = inspect.signature(get_object(target)).parameters.values()
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    names = [p.name for p in parameters]
    for key in sorted(set(node) - _INSTANTIATE_KEYS - set(names)):
        where = f"{path}.{key}" if path else str(key)
        raise ConfigError(
            f"{where} is not a setting of {target}{did_you_mean(str(key), names)}; "
            f"its settings are {', '.join(names)}."
        )


def _accelerator(cfg: DictConfig) -> None:
    """A GPU run on a machine without one stops here, not with Lightning's "No supported gpu backend"."""
    accelerator, devices = str(cfg.trainer.get("accelerator", "auto")), cfg.trainer.get("devices", "auto")
    if accelerator not in ("gpu", "cuda", "mps"):
        return
    found = {"cuda": CUDAAccelerator.is_available(), "mps": MPSAccelerator.is_available()}
    if not (any(found.values()) if accelerator == "gpu" else found[accelerator]):
        raise ConfigError(
            f"trainer.accelerator={accelerator} needs a GPU and torch sees none on this machine; "
            "pass trainer=cpu (the paper recipes choose trainer=gpu)."
        )
    count = CUDAAccelerator.auto_device_count() if found["cuda"] else 1
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > count:
        raise ConfigError(
            f"trainer.devices={devices} but this machine has {count} GPU(s); pass trainer.devices={count}."
        )


def _selects(cfg: DictConfig) -> None:
    """A protocol that keeps an epoch by a rule (protocol=authors) must reach one it can keep."""
    for stage in cfg.stage.run:
        node = cfg.protocol.get(stage)
        if node is None:
            continue
        _integer(cfg, f"protocol.{stage}.every", 1)
        epochs, rule = _value(cfg, f"{stage}.epochs"), AuthorsRule(**node)
        if rule.first_selection(epochs) is None:
            first = rule.first_selection(rule.select_after + rule.every + 1)
            raise ConfigError(
                f"{stage}.epochs={epochs} ends before protocol={cfg.protocol.name} keeps an epoch (the first "
                f"it can keep is epoch {first}, 0-indexed), so none would be selected; pass "
                f"{stage}.epochs>={first + 1}."
            )


def check_config(cfg: DictConfig) -> None:
    """Sizes, batch sizes, epochs, fractions, the anomaly maps and the resume setting of a training config,
    and the settings of everything it builds."""
    check_targets(cfg)
    _accelerator(cfg)
    check_backbone(cfg.backbone)
    _image_size(cfg)
    _integer(cfg, "datamodule.batch_size", 1)
    _integer(cfg, "datamodule.eval_batch_size", 1, optional=True)
    _integer(cfg, "datamodule.num_workers", 0)
    _integer(cfg, "seed", 0)
    _boolean(cfg, "amplify.teacher_forcing")
    _integer(cfg, "protocol.check_val_every_n_epoch", 1)
    for stage in cfg.stage.run:
        _integer(cfg, f"{stage}.epochs", 1)
    _selects(cfg)
    _fraction(cfg, "datamodule.val_fraction", 0.0, 1.0, closed_low=True, closed_high=False)
    _fraction(cfg, "distill.threshold_quantile", 0.0, 1.0, closed_low=True, closed_high=True)
    _fraction(cfg, "evaluation.fpr_limit", 0.0, 1.0, closed_low=False, closed_high=True)
    try:
        check_fractions({key: _value(cfg, f"synthesis.{key}") for key in FRACTIONS})
        check_choices({key: _value(cfg, f"synthesis.{key}") for key in CHOICES})
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
        check_wandb_login(bool(wandb.get("offline", False)))
