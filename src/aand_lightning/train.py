"""Hydra entry point: `python -m aand_lightning.train stage=amplify|distill|all dataset=<name> ...`.

Each stage trains, then tests on the dataset's test split and writes `<run dir>/<stage>/metrics.json`;
stage 1 also writes the amplifier (`<run dir>/amplify/amplifier.pt`) that stage 2 loads.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from aand_lightning.artifacts import amplifier as amplifier_file
from aand_lightning.artifacts.amplifier_cache import plan_stage1, store_amplifier
from aand_lightning.callbacks.amplifier_handoff import AmplifierHandoff
from aand_lightning.callbacks.last_checkpoint import LastCheckpoint, resume_from
from aand_lightning.config import config_dir, plain
from aand_lightning.config.checks import check_config
from aand_lightning.data.datamodule import AnomalyDataModule
from aand_lightning.models.build import build_aand, build_anomaly_map, build_teacher
from aand_lightning.reporting.failures import FAILED, job_failed
from aand_lightning.reporting.summary import format_table, stage_record
from aand_lightning.stages import AnomalyAmplification, NormalityDistillation
from aand_lightning.stages.base import AnomalyStage

log = logging.getLogger(__name__)


def _fit_and_test(
    cfg: DictConfig,
    module: AnomalyStage,
    datamodule: AnomalyDataModule,
    run_dir: Path,
    extra: list,
    ckpt: str | None,
) -> dict[str, Any]:
    """Fit (from `ckpt` when resuming) with the configured, the protocol's and the run's own callbacks;
    test the protocol's selected epoch (else the last); write metrics.json (rank 0); return the record."""
    name = module.stage_name
    OmegaConf.update(cfg, "current_stage", name)
    stage_dir = run_dir / name
    protocol = [instantiate(c) for c in cfg.protocol.callbacks.values()]
    configured = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    selected = next((c for c in protocol if isinstance(c, ModelCheckpoint)), None)
    for callback in extra:
        callback.selected = selected
    logger = [instantiate(cfg.logger)] if cfg.get("logger") else []
    for each in logger:
        each.log_hyperparams(plain(cfg))
    trainer = instantiate(
        cfg.trainer, max_epochs=cfg[name].epochs, min_epochs=cfg.protocol[name].min_epochs,
        check_val_every_n_epoch=cfg.protocol.check_val_every_n_epoch, default_root_dir=str(stage_dir),
        logger=logger,
        # last: Lightning runs checkpoint callbacks in list order, and last.ckpt must hold the state the
        # others reach at this epoch's end (a ModelCheckpoint may update its best only then)
        callbacks=[*protocol, *configured, *extra, LastCheckpoint(stage_dir / "checkpoints")],
    )  # fmt: skip
    datamodule.synthetic_train = module.synthetic_train
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    fit_seconds = time.perf_counter() - start
    if datamodule.has_test:
        best = selected.best_model_path if selected is not None else ""
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
    else:
        log.warning(
            "No test images for %s: stage %s is trained but not evaluated.", cfg.dataset.category, name
        )
    record = stage_record(cfg, module, fit_seconds, ckpt, datamodule.eval_batch_size)
    if trainer.is_global_zero:
        (stage_dir / "metrics.json").write_text(json.dumps(record, indent=2))
    for each in trainer.loggers:
        if isinstance(each, WandbLogger):
            each.experiment.finish()  # the next stage (or multirun job) starts its own wandb run
    return record


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
        **cfg.performance,
    )  # fmt: skip
    # read here, in the main process: a DTD source fetches its images now (progress bar, one-line error)
    module.textures = datamodule.synthesizer.texture_source.description
    handoff = AmplifierHandoff(run_dir / "amplify" / amplifier_file.NAME, plain(cfg.backbone), plain(cfg.raa))
    return _fit_and_test(cfg, module, datamodule, run_dir, [handoff], ckpt)


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
    settings = {key: plain(cfg[key]) for key in ("backbone", "raa", "anomaly_map")}
    module = NormalityDistillation(
        build_aand(cfg.backbone, cfg.raa, cfg.anomaly_map, teacher=teacher), instantiate(cfg.loss),
        instantiate(cfg.distill.optimizer), instantiate(cfg.distill.scheduler),
        preprocessing=datamodule.preprocessing, model_config=settings,
        threshold_quantile=cfg.distill.threshold_quantile, gate_draws=cfg.distill.gate_draws,
        calibration_data=datamodule, feature_cache=plain(cfg.distill.feature_cache),
        skip_image=datamodule.skip_image, fpr_limit=cfg.evaluation.fpr_limit,
        validate_on_test=cfg.protocol.validate_on_test, **cfg.performance,
    )  # fmt: skip
    module.textures = textures
    return _fit_and_test(cfg, module, datamodule, run_dir, [], ckpt)


def run(cfg: DictConfig, run_dir: Path) -> list[dict[str, Any]]:
    """Run the configured stages in one process; returns each stage's metrics record.

    Config and data are checked first, before any model or Trainer is built. With `ckpt_path=last`
    a stage that already finished in `run_dir` is kept and the one that was running continues.
    """
    check_config(cfg)
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
        (run_dir / "metrics.json").write_text(json.dumps(records, indent=2))
        print(format_table(records))
    return records


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> None:
    """Run; a failure leaves `failed.json` in the run dir. A user error is one line on stderr (exit 2);
    in a multirun, a failed job is logged and the sweep goes on (the summary lists it)."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        run(cfg, run_dir)
    except Exception as error:
        keys = {"dataset": "dataset.name", "category": "dataset.category", "stage": "current_stage"}
        record = {k: OmegaConf.select(cfg, v, default=None) for k, v in keys.items()}
        job_failed(error, run_dir, record, multirun=hydra_cfg.mode == RunMode.MULTIRUN)


if __name__ == "__main__":
    main()
