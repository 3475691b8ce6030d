"""The stages of a training config, in one process: stage 1 (or its cached amplifier), then stage 2;
each fits, tests and writes `<run dir>/<stage>/metrics.json`, and the run writes `<run dir>/metrics.json`."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from aand_lightning.artifacts import amplifier as amplifier_file
from aand_lightning.artifacts.amplifier_cache import plan_stage1, store_amplifier
from aand_lightning.artifacts.checkpoint import MODEL_SETTINGS
from aand_lightning.callbacks.amplifier_handoff import AmplifierHandoff, Selection
from aand_lightning.callbacks.authors_protocol import AuthorsRule
from aand_lightning.callbacks.last_checkpoint import LastCheckpoint, require_resumable, resume_from
from aand_lightning.config import plain
from aand_lightning.config.checks import check_config
from aand_lightning.data.datamodule import AnomalyDataModule
from aand_lightning.errors import ConfigError
from aand_lightning.models.aand import AAND
from aand_lightning.models.build import build_aand, build_anomaly_map, build_teacher
from aand_lightning.reporting.failures import FAILED
from aand_lightning.reporting.summary import format_table
from aand_lightning.runs.stage import METRICS, stage_trainer, test_and_record
from aand_lightning.stages import AnomalyAmplification, NormalityDistillation
from aand_lightning.stages.base import AnomalyStage

log = logging.getLogger(__name__)

Metrics = dict[str, dict[str, float | None]]  # test metrics of the output map, by stage


def _fit_and_test(
    cfg: DictConfig, module: AnomalyStage, datamodule: AnomalyDataModule, run_dir: Path,
    extra: list[Callback], ckpt: str | None,
) -> dict[str, Any]:  # fmt: skip
    """Fit (from `ckpt` when resuming) with the protocol's, the configured and the run's own callbacks;
    test the protocol's selected epoch (else the last); write metrics.json (rank 0); return the record."""
    name = module.stage_name
    OmegaConf.update(cfg, "current_stage", name)
    protocol = [instantiate(c) for c in cfg.protocol.callbacks.values()]
    selected = next((c for c in protocol if isinstance(c, Selection)), None)
    for callback in extra:
        callback.selected = selected
    trainer = stage_trainer(
        cfg, run_dir, first=protocol,
        # last: Lightning runs checkpoint callbacks in list order, and last.ckpt must hold the state the
        # others reach at this epoch's end (a ModelCheckpoint may update its best only then)
        last=[*extra, LastCheckpoint(run_dir / name / "checkpoints")],
        max_epochs=cfg[name].epochs, check_val_every_n_epoch=cfg.protocol.check_val_every_n_epoch,
    )  # fmt: skip
    datamodule.synthetic_train = module.synthetic_train
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    fit_seconds = time.perf_counter() - start
    best = (selected.best_model_path if selected is not None else "") or None
    return test_and_record(cfg, trainer, module, datamodule, run_dir, best, fit_seconds, ckpt)


def amplify(
    cfg: DictConfig, datamodule: AnomalyDataModule, run_dir: Path, ckpt: str | None
) -> dict[str, Any]:
    """Stage 1; its amplifier is written to `<run dir>/amplify/amplifier.pt`."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = AnomalyAmplification(
        build_teacher(cfg.backbone, cfg.raa), instantiate(cfg.amplify.loss),
        instantiate(cfg.amplify.optimizer), instantiate(cfg.amplify.scheduler),
        anomaly_map=build_anomaly_map(cfg.anomaly_map), preprocessing=datamodule.preprocessing,
        fpr_limit=cfg.evaluation.fpr_limit, validate_on_test=cfg.protocol.validate_on_test, seed=cfg.seed,
        teacher_forcing=cfg.amplify.teacher_forcing, **cfg.performance,
    )  # fmt: skip
    # read here, in the main process: a DTD source fetches its images now (progress bar, one-line error)
    module.textures = datamodule.synthesizer.texture_source.description
    handoff = AmplifierHandoff(run_dir / "amplify" / amplifier_file.NAME, plain(cfg.backbone), plain(cfg.raa))
    return _fit_and_test(cfg, module, datamodule, run_dir, [handoff], ckpt)


def distill_module(cfg: DictConfig, model: AAND, datamodule: AnomalyDataModule) -> NormalityDistillation:
    """The stage-2 LightningModule of `model` as the config sets it up: training's, and `eval`'s around a
    checkpoint's model (whose settings the config then holds)."""
    settings = {key: plain(cfg[key]) for key in MODEL_SETTINGS}
    rule = cfg.protocol.get("distill")  # the authors' loop: what it keeps epochs by
    selection = {} if rule is None else {"selection_metrics": tuple(AuthorsRule(**rule).select_on)}
    return NormalityDistillation(
        model, instantiate(cfg.loss), instantiate(cfg.distill.optimizer), instantiate(cfg.distill.scheduler),
        preprocessing=datamodule.preprocessing, model_config=settings,
        threshold_quantile=cfg.distill.threshold_quantile, gate_draws=cfg.distill.gate_draws,
        calibration_data=datamodule, feature_cache=plain(cfg.distill.feature_cache),
        skip_image=datamodule.skip_image, fpr_limit=cfg.evaluation.fpr_limit,
        validate_on_test=cfg.protocol.validate_on_test, **selection, **cfg.performance,
    )  # fmt: skip


def distill(
    cfg: DictConfig, datamodule: AnomalyDataModule, run_dir: Path, amplifier: Path | None, ckpt: str | None
) -> dict[str, Any]:
    """Stage 2, from the stage-1 `amplifier` (none for the RD baseline, `raa=off`)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    textures = None  # the RD baseline has no stage 1, so no synthetic anomalies
    if cfg.raa.enabled:
        teacher, about = amplifier_file.load_amplifier(amplifier, plain(cfg.backbone), plain(cfg.raa))
        textures = about.get("textures")
        log.info("Stage 2 uses the stage-1 amplifier %s", amplifier)
    else:
        teacher = build_teacher(cfg.backbone, cfg.raa)
    model = build_aand(cfg.backbone, cfg.raa, cfg.anomaly_map, teacher=teacher)
    module = distill_module(cfg, model, datamodule)
    module.textures = textures
    return _fit_and_test(cfg, module, datamodule, run_dir, [], ckpt)


def run(cfg: DictConfig, run_dir: Path) -> list[dict[str, Any]]:
    """Run the configured stages in one process; returns each stage's metrics record.

    Config and data are checked first, before any model or Trainer is built. With `ckpt_path=last`
    a stage that already finished in `run_dir` is kept and the one that was running continues.
    """
    check_config(cfg)
    check_optimized_metric(cfg)
    if cfg.ckpt_path == "last":
        require_resumable(run_dir)
    (run_dir / FAILED).unlink(missing_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.datamodule)
    datamodule.setup()  # lists and decodes every file now: bad data fails before a model is built
    plan = plan_stage1(cfg, run_dir, datamodule.all_samples)
    records, amplifier = plan.records, plan.amplifier
    if plan.train:
        records.append(
            amplify(cfg, datamodule, run_dir, resume_from(cfg.ckpt_path, run_dir / "amplify", False))
        )
        amplifier = run_dir / "amplify" / amplifier_file.NAME
        if rank_zero_only.rank == 0:
            store_amplifier(cfg.amplifier_cache, plan.key, run_dir / "amplify")
    if "distill" in cfg.stage.run:
        ckpt = resume_from(cfg.ckpt_path, run_dir / "distill", after_finished_stage=bool(records))
        records.append(distill(cfg, datamodule, run_dir, amplifier, ckpt))
    if records and rank_zero_only.rank == 0:
        (run_dir / METRICS).write_text(json.dumps(records, indent=2))
        print(format_table(records))
    return records


def stage_metrics(records: list[dict[str, Any]]) -> Metrics:
    """The test metrics of each stage's output map, by stage name (what `aand_lightning.train` returns)."""
    return {record["stage"]: record["metrics"] for record in records}


def check_optimized_metric(cfg: DictConfig) -> None:
    """`optimized_metric` (what the train entry point returns to a sweeper) names a stage this run has."""
    name = cfg.get("optimized_metric")
    if name is not None and str(name).partition("/")[0] not in cfg.stage.run:
        raise ConfigError(
            f"optimized_metric={name} is not a metric of this run's stages ({', '.join(cfg.stage.run)}); "
            "pass <stage>/<metric>, e.g. optimized_metric=distill/image_auroc, with a stage that runs."
        )


def selected_metric(metrics: Metrics, name: str) -> float:
    """The value of `optimized_metric` (`<stage>/<metric>`, e.g. distill/image_auroc) in a run's metrics."""
    stage, _, key = name.partition("/")
    value = metrics.get(stage, {}).get(key)
    if value is None:
        known = [f"{s}/{k}" for s, values in metrics.items() for k, v in values.items() if v is not None]
        raise ConfigError(
            f"optimized_metric={name} is not among this run's test metrics; pass one of "
            f"{', '.join(known) or 'them (this run has none: no test images)'}."
        )
    return value
