"""Hydra entry point: `python -m aand_lightning.train stage=amplify|distill|all dataset=<name> ...`.

Each stage trains, then tests on the dataset's test split and writes `<run dir>/<stage>/metrics.json`;
stage 1 also writes the frozen amplified teacher (`<run dir>/amplify/teacher.pt`) that stage 2 loads.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from aand_lightning import handoff
from aand_lightning.callbacks.last_checkpoint import LAST, LastCheckpoint
from aand_lightning.callbacks.teacher_handoff import TeacherHandoff
from aand_lightning.checks import check_config
from aand_lightning.cli import FAILED, exit_with, full_error, mark_failed, reason, user_error
from aand_lightning.config import config_dir
from aand_lightning.data.datamodule import AnomalyDataModule
from aand_lightning.errors import UserError
from aand_lightning.models.build import build_aand, build_amplified_teacher, build_anomaly_map
from aand_lightning.stages import AnomalyAmplification, NormalityDistillation
from aand_lightning.stages.base import AnomalyStage
from aand_lightning.summary import format_table

log = logging.getLogger(__name__)

METRIC_NOTES = {
    "aupro": "dataset-level AUPRO, integrated to FPR fpr_limit and normalised by fpr_limit",
    "per_image_pro": "RD-style PRO: per-image AUPRO to fpr_limit, averaged over anomalous images",
}


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _loggers(cfg: DictConfig) -> list:
    if not cfg.get("logger"):
        return []
    logger = instantiate(cfg.logger)
    logger.log_hyperparams(_plain(cfg))
    return [logger]


def _best_checkpoint(stage_dir: Path) -> Path:
    return stage_dir / "checkpoints" / "best.ckpt"


def _trainer(cfg: DictConfig, stage_dir: Path, epochs: int, callbacks: list) -> L.Trainer:
    """The configured callbacks (`callbacks` group), and those a run depends on: `last.ckpt` after every
    epoch (for resuming); when validating on the test set (the authors'
    protocol) also the epoch with the best `val/selection` (`best.ckpt`, which is then tested), and a
    stop once the test image AUROC passes `protocol.<stage>.stop_above`."""
    rule = cfg.protocol[stage_dir.name]
    extra: list = []
    if cfg.datamodule.validate_on_test:
        best = _best_checkpoint(stage_dir)
        extra.append(
            ModelCheckpoint(
                dirpath=best.parent, filename=best.stem, save_top_k=1, monitor="val/selection", mode="max"
            )
        )
        if rule.stop_above is not None:
            extra.append(
                EarlyStopping(
                    monitor="val/image_auroc",
                    mode="max",
                    stopping_threshold=rule.stop_above,
                    patience=epochs,
                    check_on_train_epoch_end=False,
                )
            )
    configured = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    return instantiate(
        cfg.trainer,
        max_epochs=epochs,
        min_epochs=rule.min_epochs,
        check_val_every_n_epoch=cfg.protocol.check_val_every_n_epoch,
        default_root_dir=str(stage_dir),
        logger=_loggers(cfg),
        # last: Lightning runs checkpoint callbacks in list order, and last.ckpt must hold the state
        # the others reach at this epoch's end (a ModelCheckpoint may update its best only then)
        callbacks=[*extra, *configured, *callbacks, LastCheckpoint(stage_dir / "checkpoints")],
    )


def _resume_from(cfg: DictConfig, stage_dir: Path, after_finished_stage: bool) -> str | None:
    """The checkpoint `ckpt_path` means for this stage: None (start), the stage's last.ckpt, or a file."""
    if cfg.ckpt_path != "last":
        return cfg.ckpt_path
    last = stage_dir / "checkpoints" / LAST
    if last.is_file():
        log.info("Resuming stage %s from %s", stage_dir.name, last)
        return str(last)
    if after_finished_stage:  # killed before this stage's first epoch ended: nothing to resume yet
        log.info("No checkpoint of stage %s yet in %s: starting it", stage_dir.name, last.parent)
        return None
    raise UserError(
        f"ckpt_path=last found no checkpoint in {last.parent}; pass hydra.run.dir=<the run dir to resume> "
        "(it holds <stage>/checkpoints/last.ckpt), or leave ckpt_path out to start afresh."
    )


def _finished(stage_dir: Path) -> dict[str, Any] | None:
    """The metrics record of a stage that already finished in this run dir (when resuming)."""
    metrics = stage_dir / "metrics.json"
    teacher = stage_dir / handoff.ARTIFACT_NAME
    done = metrics.is_file() and (stage_dir.name != "amplify" or teacher.is_file())
    return json.loads(metrics.read_text()) if done else None


def _protocol_label(cfg: DictConfig) -> str:
    """What the tested model was chosen with, as tables print it."""
    label = "selected on test" if cfg.datamodule.validate_on_test else "no test-set selection"
    return label if cfg.protocol.name == "clean" else f"{label} ({cfg.protocol.name})"


def _peak_memory_mb(module: AnomalyStage) -> dict[str, float]:
    """Peak process RSS (Linux reports KiB) and, on CUDA, peak allocated device memory."""
    peak = {"host_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if module.device.type == "cuda":
        peak["cuda_allocated"] = torch.cuda.max_memory_allocated(module.device) / 2**20
    return peak


def _run_stage(
    cfg: DictConfig,
    name: str,
    module: AnomalyStage,
    datamodule: AnomalyDataModule,
    run_dir: Path,
    callbacks: list,
    ckpt_path: str | None,
    textures: str | None,
) -> dict[str, Any]:
    """Fit (from `ckpt_path` when resuming), test, write metrics.json (rank 0); returns the record."""
    OmegaConf.update(cfg, "current_stage", name)
    stage_dir = run_dir / name
    trainer = _trainer(cfg, stage_dir, cfg[name].epochs, callbacks)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - start
    if datamodule.has_test:
        best = _best_checkpoint(stage_dir)
        trainer.test(module, datamodule=datamodule, ckpt_path=str(best) if best.is_file() else None)
    else:
        log.warning(
            "No test images for %s: stage %s is trained but not evaluated.", cfg.dataset.category, name
        )
    record = {
        "stage": name,
        "dataset": cfg.dataset.name,
        "category": cfg.dataset.category,
        "seed": cfg.seed,
        "map": module.map_name,
        "backbone": cfg.backbone.name,
        "raa": cfg.raa.enabled,
        "fpr_limit": cfg.evaluation.fpr_limit,
        "textures": textures,
        "protocol": _protocol_label(cfg),
        "metrics": module.test_results,
        "metrics_by_map": module.test_results_by_map,
        "map_details": module.map_details(),
        "notes": METRIC_NOTES,
        "performance": {
            "fit_seconds": fit_seconds,
            "epochs": cfg[name].epochs,
            "resumed_from": ckpt_path,
            "inference_images_per_second": module.inference_images / max(module.inference_seconds, 1e-9),
            "inference_batch_size": datamodule.eval_batch_size,
            "peak_memory_mb": _peak_memory_mb(module),
        },
    }
    if trainer.is_global_zero:
        (stage_dir / "metrics.json").write_text(json.dumps(record, indent=2))
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()  # the next stage (or multirun job) starts its own wandb run
    return record


def _seed(cfg: DictConfig) -> None:
    """Every stage starts from `cfg.seed`, so stage 2 in `stage=all` is the same run as `stage=distill`
    from that stage 1's teacher, whether stage 1 trained just before or came from the cache."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)


def run_amplify(
    cfg: DictConfig, datamodule: AnomalyDataModule, run_dir: Path, ckpt_path: str | None
) -> tuple[Path, dict[str, Any]]:
    _seed(cfg)
    teacher = build_amplified_teacher(cfg.backbone, cfg.raa)
    module = AnomalyAmplification(
        teacher,
        instantiate(cfg.amplify.loss),
        instantiate(cfg.amplify.optimizer),
        instantiate(cfg.amplify.scheduler),
        fpr_limit=cfg.evaluation.fpr_limit,
        seed=cfg.seed,
        anomaly_map=build_anomaly_map(cfg.anomaly_map),
        **cfg.performance,
    )
    # read here, in the main process: a DTD source fetches its images now (progress bar, one-line error)
    textures = datamodule.synthesizer.texture_source.description
    artifact = run_dir / "amplify" / handoff.ARTIFACT_NAME
    best = _best_checkpoint(run_dir / "amplify") if cfg.datamodule.validate_on_test else None
    handoff_callback = TeacherHandoff(artifact, _plain(cfg.backbone), _plain(cfg.raa), textures, best)
    record = _run_stage(cfg, "amplify", module, datamodule, run_dir, [handoff_callback], ckpt_path, textures)
    return artifact, record


def run_distill(
    cfg: DictConfig,
    datamodule: AnomalyDataModule,
    run_dir: Path,
    teacher_path: Path | None,
    ckpt_path: str | None,
) -> dict:
    _seed(cfg)
    textures = None  # the RD baseline has no stage 1, so no synthetic anomalies
    if cfg.raa.enabled:
        teacher, about = handoff.load_teacher(teacher_path, _plain(cfg.backbone), _plain(cfg.raa))
        textures = about.get("textures")
        log.info("Stage 2 uses the stage-1 teacher %s", teacher_path)
    else:
        teacher = build_amplified_teacher(cfg.backbone, cfg.raa)
    model = build_aand(cfg.backbone, cfg.raa, cfg.anomaly_map, teacher=teacher)
    model_config = {
        "backbone": _plain(cfg.backbone),
        "raa": _plain(cfg.raa),
        "anomaly_map": _plain(cfg.anomaly_map),
        "image_size": _plain(cfg.dataset.image_size),
        "interpolation": cfg.datamodule.interpolation,
        "mean": list(datamodule.mean),
        "std": list(datamodule.std),
    }
    module = NormalityDistillation(
        model,
        instantiate(cfg.loss),
        instantiate(cfg.distill.optimizer),
        instantiate(cfg.distill.scheduler),
        model_config=model_config,
        threshold_quantile=cfg.distill.threshold_quantile,
        fpr_limit=cfg.evaluation.fpr_limit,
        feature_cache=_plain(cfg.distill.feature_cache),
        **cfg.performance,
    )
    return _run_stage(cfg, "distill", module, datamodule, run_dir, [], ckpt_path, textures)


def run(cfg: DictConfig, run_dir: Path) -> list[dict[str, Any]]:
    """Run the configured stages in one process; returns each stage's metrics record.

    Config and data are checked first, before any model or Trainer is built. With `ckpt_path=last`
    a stage that already finished in `run_dir` is kept and the one that was running continues.
    """
    check_config(cfg)
    stages = list(cfg.stage.run)
    (run_dir / FAILED).unlink(missing_ok=True)
    _seed(cfg)
    datamodule: AnomalyDataModule = instantiate(cfg.datamodule)
    datamodule.setup()  # lists and decodes every file now: bad data fails before a model is built
    resuming = cfg.ckpt_path is not None
    key = handoff.cache_key(cfg, datamodule.all_samples) if cfg.raa.enabled else ""
    cached = handoff.cached_teacher(cfg.teacher_cache, key) if key else None
    stage1_started = (run_dir / "amplify" / "checkpoints" / LAST).is_file()  # resume it, not the cache
    teacher_path = Path(cfg.teacher_ckpt) if cfg.teacher_ckpt else None
    records: list[dict[str, Any]] = []
    if "amplify" in stages:
        finished = _finished(run_dir / "amplify") if resuming else None
        if finished is not None:
            log.info("Stage 1 already finished in %s: continuing with what follows it", run_dir)
            teacher_path = run_dir / "amplify" / handoff.ARTIFACT_NAME
            records.append(finished)
        elif cached is not None and "distill" in stages and not (resuming and stage1_started):
            log.info("Reusing the cached stage-1 teacher %s (stage-1 config hash %s)", cached, key)
            teacher_path = cached
            if (cached.parent / "metrics.json").is_file():
                records.append(
                    json.loads((cached.parent / "metrics.json").read_text()) | {"cached_from": str(cached)}
                )
        else:
            ckpt = _resume_from(cfg, run_dir / "amplify", after_finished_stage=False)
            teacher_path, record = run_amplify(cfg, datamodule, run_dir, ckpt)
            records.append(record)
            if rank_zero_only.rank == 0:
                handoff.store_teacher(cfg.teacher_cache, key, run_dir / "amplify")
    elif teacher_path is None and cached is not None:
        log.info("stage=distill uses the cached stage-1 teacher %s (stage-1 config hash %s)", cached, key)
        teacher_path = cached
    if "distill" in stages:
        ckpt = _resume_from(cfg, run_dir / "distill", after_finished_stage=bool(records))
        records.append(run_distill(cfg, datamodule, run_dir, teacher_path, ckpt))
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
        if rank_zero_only.rank == 0:
            keys = {"dataset": "dataset.name", "category": "dataset.category", "stage": "current_stage"}
            mark_failed(run_dir, error, {k: OmegaConf.select(cfg, v, default=None) for k, v in keys.items()})
        if full_error():
            raise
        if hydra_cfg.mode == RunMode.MULTIRUN:
            log.error("This job failed: %s (traceback in %s)", reason(error), run_dir / FAILED)
            return
        if user_error(error) is not None:
            exit_with(error)
        raise


if __name__ == "__main__":
    main()
