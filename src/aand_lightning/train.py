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
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from aand_lightning.callbacks.heatmaps import HeatmapWriter
from aand_lightning.callbacks.score_plots import ScorePlots
from aand_lightning.callbacks.teacher_handoff import ARTIFACT_NAME, TeacherHandoff, read_teacher
from aand_lightning.config import config_dir
from aand_lightning.data.datamodule import AnomalyDataModule
from aand_lightning.models.build import build_aand, build_amplified_teacher
from aand_lightning.stages import AnomalyAmplification, NormalityDistillation
from aand_lightning.stages.base import AnomalyStage
from aand_lightning.summary import format_table
from aand_lightning.teacher_cache import cached_teacher, stage1_fingerprint, store_teacher

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


def _trainer(cfg: DictConfig, stage_dir: Path, epochs: int, callbacks: list) -> L.Trainer:
    """Checkpoint every epoch (last.ckpt, for resuming); with the authors' opt-in protocol also the
    epoch with the best validation-on-test image AUROC (best.ckpt), which is then what gets tested."""
    select_on_test = cfg.datamodule.validate_on_test
    checkpoint = ModelCheckpoint(
        dirpath=stage_dir / "checkpoints",
        filename="best",
        save_last=True,
        save_top_k=1 if select_on_test else 0,
        monitor="val/image_auroc" if select_on_test else None,
        mode="max",
        every_n_epochs=1,
    )
    heatmaps = HeatmapWriter(stage_dir / "heatmaps", cfg.evaluation.heatmaps)
    plots = ScorePlots(stage_dir, f"{cfg.dataset.name}/{cfg.dataset.category} {stage_dir.name}")
    return instantiate(
        cfg.trainer,
        max_epochs=epochs,
        default_root_dir=str(stage_dir),
        logger=_loggers(cfg),
        callbacks=[checkpoint, heatmaps, plots, *callbacks],
    )


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
) -> dict[str, Any]:
    """Fit, test, write metrics.json (rank 0); returns the metrics record."""
    OmegaConf.update(cfg, "current_stage", name)
    stage_dir = run_dir / name
    trainer = _trainer(cfg, stage_dir, cfg[name].epochs, callbacks)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    fit_seconds = time.perf_counter() - start
    if datamodule.has_test:
        trainer.test(
            module, datamodule=datamodule, ckpt_path="best" if cfg.datamodule.validate_on_test else None
        )
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
        "protocol": "selected on test (authors)"
        if cfg.datamodule.validate_on_test
        else "no test-set selection",
        "metrics": module.test_results,
        "notes": METRIC_NOTES,
        "performance": {
            "fit_seconds": fit_seconds,
            "epochs": cfg[name].epochs,
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


def run_amplify(cfg: DictConfig, datamodule: AnomalyDataModule, run_dir: Path) -> tuple[Path, dict[str, Any]]:
    teacher = build_amplified_teacher(cfg.backbone, cfg.raa)
    module = AnomalyAmplification(
        teacher,
        instantiate(cfg.amplify.loss),
        instantiate(cfg.amplify.optimizer),
        instantiate(cfg.amplify.scheduler),
        fpr_limit=cfg.evaluation.fpr_limit,
        seed=cfg.seed,
        **cfg.performance,
    )
    artifact = run_dir / "amplify" / ARTIFACT_NAME
    handoff = TeacherHandoff(artifact, cfg.backbone.name, _plain(cfg.raa))
    return artifact, _run_stage(cfg, "amplify", module, datamodule, run_dir, [handoff])


def run_distill(
    cfg: DictConfig, datamodule: AnomalyDataModule, run_dir: Path, teacher_path: Path | None
) -> dict:
    if cfg.raa.enabled:
        payload = read_teacher(teacher_path, cfg.backbone.name, cfg.raa)
        teacher = build_amplified_teacher(cfg.backbone, cfg.raa, weights="none")
        teacher.load_state_dict(payload["state_dict"])
        log.info("Stage 2 uses the stage-1 teacher %s", teacher_path)
    else:
        teacher = build_amplified_teacher(cfg.backbone, cfg.raa)
    model = build_aand(cfg.backbone, cfg.raa, cfg.anomaly_map, teacher=teacher)
    model_config = {
        "backbone": _plain(cfg.backbone),
        "raa": _plain(cfg.raa),
        "anomaly_map": _plain(cfg.anomaly_map),
        "image_size": _plain(cfg.dataset.image_size),
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
        **cfg.performance,
    )
    return _run_stage(cfg, "distill", module, datamodule, run_dir, [])


def run(cfg: DictConfig, run_dir: Path) -> list[dict[str, Any]]:
    """Run the configured stages in one process; returns each stage's metrics record."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule: AnomalyDataModule = instantiate(cfg.datamodule)
    records = []
    teacher_path = Path(cfg.teacher_ckpt) if cfg.teacher_ckpt else None
    stages = list(cfg.stage.run)
    key = stage1_fingerprint(cfg)
    cached = cached_teacher(cfg.teacher_cache, key) if cfg.raa.enabled else None
    if "amplify" in stages and not cfg.raa.enabled:
        raise ValueError(
            "stage=amplify trains RAA but raa.enabled=false; use stage=distill for the RD baseline."
        )
    if stages == ["amplify", "distill"] and cached is not None:
        log.info("Reusing the cached stage-1 teacher %s (stage-1 config hash %s)", cached, key)
        teacher_path = cached
        if (cached.parent / "metrics.json").is_file():
            records.append(
                json.loads((cached.parent / "metrics.json").read_text()) | {"cached_from": str(cached)}
            )
    elif "amplify" in stages:
        teacher_path, record = run_amplify(cfg, datamodule, run_dir)
        records.append(record)
        if rank_zero_only.rank == 0:
            store_teacher(cfg.teacher_cache, key, run_dir / "amplify")
    elif teacher_path is None and cached is not None:
        log.info("stage=distill uses the cached stage-1 teacher %s (stage-1 config hash %s)", cached, key)
        teacher_path = cached
    if "distill" in stages:
        records.append(run_distill(cfg, datamodule, run_dir, teacher_path))
    if records and rank_zero_only.rank == 0:
        (run_dir / "metrics.json").write_text(json.dumps(records, indent=2))
        print(format_table(records))
    return records


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> None:
    run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
