"""Collect metrics.json files into one table (per category + dataset mean): console, CSV and Markdown.

Jobs that failed (their `failed.json`) get one row each with the one-line reason, and a multirun with
a failed job exits non-zero once the summary is written.
"""

from __future__ import annotations

import csv
import json
import math
import resource
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from aand_lightning.config import sweep_group
from aand_lightning.reporting.failures import FAILED
from aand_lightning.reporting.loggers import wandb_config

if TYPE_CHECKING:
    from aand_lightning.stages.base import AnomalyStage

COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "per_image_pro")
METRIC_NOTES = {
    "aupro": "dataset-level AUPRO, integrated to FPR fpr_limit and normalised by fpr_limit",
    "per_image_pro": "RD-style PRO: per-image AUPRO to fpr_limit, averaged over anomalous images",
}
HEADERS = ("image AUROC", "pixel AUROC", "AUPRO@0.3", "per-image PRO")
NOT_AVAILABLE = "–"  # a metric that could not be computed (pixel metrics without any mask), never a zero


def _peak_memory_mb(module: AnomalyStage) -> dict[str, float]:
    """Peak process RSS (Linux reports KiB) and, on CUDA, peak allocated device memory."""
    peak = {"host_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if module.device.type == "cuda":
        peak["cuda_allocated"] = torch.cuda.max_memory_allocated(module.device) / 2**20
    return peak


def stage_record(
    cfg: DictConfig, module: AnomalyStage, fit_seconds: float, resumed_from: str | None, eval_batch_size: int
) -> dict[str, Any]:
    """The metrics record of a tested stage (its metrics.json): what ran, on what, how well, how fast."""
    name = module.stage_name
    return {
        "stage": name,
        "dataset": cfg.dataset.name,
        "category": cfg.dataset.category,
        "seed": cfg.seed,
        "map": module.output_map.value,
        "backbone": cfg.backbone.name,
        "raa": cfg.raa.enabled,
        "fpr_limit": cfg.evaluation.fpr_limit,
        "textures": module.textures,
        "protocol": cfg.protocol.description,  # what the tested model was chosen with
        "metrics": module.test_results,
        "metrics_by_map": module.test_results_by_map,
        "pixel_coverage": module.test_coverage.record() if module.test_coverage else None,
        "map_details": module.map_details(),
        "notes": METRIC_NOTES,
        "performance": {
            "fit_seconds": fit_seconds,
            "epochs": cfg[name].epochs,
            "resumed_from": resumed_from,
            "inference_images_per_second": module.inference_images / max(module.inference_seconds, 1e-9),
            "inference_batch_size": eval_batch_size,
            "peak_memory_mb": _peak_memory_mb(module),
        },
    }


def map_rows(record: dict[str, Any]) -> list[tuple[str, dict[str, float | None]]]:
    """(map label, metrics) per map of a record: the configured map first, marked "(output)" when the
    record reports several maps of the same forward pass (`metrics_by_map`), then the others."""
    configured = record.get("map", "")
    by_map = record.get("metrics_by_map") or {}
    if len(by_map) < 2:
        return [(configured, record["metrics"])]
    others = [(name, metrics) for name, metrics in by_map.items() if name != configured]
    return [(f"{configured} (output)", record["metrics"]), *others]


def _mean(column: Iterable[float | None]) -> float | None:
    """The mean of a metric over records; not available when a record lacks it."""
    values = list(column)
    return None if None in values else sum(values) / len(values)


def _rows(records: Iterable[dict[str, Any]], missing: str = NOT_AVAILABLE) -> list[list[str]]:
    """One row per record and map, then per stage and map the mean over the records that report it;
    a metric that is not available (None) is written as `missing`."""

    def cells(values: list[float | None]) -> list[str]:
        return [missing if v is None else f"{100 * v:.1f}" for v in values]

    rows, groups = [], {}
    for r in records:
        for label, metrics in map_rows(r):
            values = [metrics.get(c, math.nan) for c in COLUMNS]
            rows.append([r["dataset"], r["category"], r["stage"], label, *cells(values)])
            groups.setdefault((r["stage"], label), (r["dataset"], []))[1].append(values)
    for (stage, label), (dataset, group) in sorted(groups.items(), key=lambda item: item[0][0]):
        if len(group) > 1:
            rows.append([dataset, "mean", stage, label, *cells([_mean(c) for c in zip(*group, strict=True)])])
    return rows


def coverage_notes(records: Iterable[dict[str, Any]]) -> list[str]:
    """One line per record whose pixel metrics leave images out (anomalous images without masks)."""
    return [
        f"{r['dataset']} {r['category']} ({r['stage']}): {r['pixel_coverage']['note']}"
        for r in records
        if (r.get("pixel_coverage") or {}).get("note")
    ]


def format_table(records: Iterable[dict[str, Any]]) -> str:
    """Markdown table of the records' metrics in percent (AUPRO normalised by its FPR limit), then one
    line per record whose pixel metrics are not available or cover only some images, saying why."""
    records = list(records)
    header = ("dataset", "category", "stage", "map", *HEADERS)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(records)]
    notes = coverage_notes(records)
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def collect(directory: str | Path) -> list[dict[str, Any]]:
    """Every stage record (`<job>/<stage>/metrics.json`) below a run or sweep directory."""
    return [
        json.loads(p.read_text())
        for p in sorted(Path(directory).rglob("*/metrics.json"))
        if p.parent.name in ("amplify", "distill")
    ]


def collect_failures(directory: str | Path) -> list[dict[str, Any]]:
    """Every failed job's record (`<job>/failed.json`) below a sweep directory."""
    return [json.loads(p.read_text()) for p in sorted(Path(directory).rglob(FAILED))]


def format_failures(failures: Iterable[dict[str, Any]]) -> str:
    """Markdown table of the failed jobs and their one-line reasons ("" when none failed)."""
    rows = [f"| {f['dataset']} | {f['category']} | {f.get('stage') or ''} | {f['error']} |" for f in failures]
    if not rows:
        return ""
    return "\n".join(["| dataset | category | failed in | reason |", "|---|---|---|---|", *rows])


def _csv_rows(records: list[dict[str, Any]], failures: list[dict[str, Any]]) -> list[list[str]]:
    """Result rows with an empty error column, then one row per failed job with its reason."""
    blanks = [""] * len(COLUMNS)
    failed = [[f["dataset"], f["category"], f.get("stage") or "", "", *blanks, f["error"]] for f in failures]
    return [[*row, ""] for row in _rows(records, missing="")] + failed


def write_summary(directory: str | Path) -> str:
    """Write summary.csv and summary.md into `directory`; returns the Markdown (results, then failures)."""
    directory = Path(directory)
    records, failures = collect(directory), collect_failures(directory)
    text = format_table(records)
    for key in ("protocol", "textures"):
        values = sorted({str(r[key]) for r in records if r.get(key)})
        if values:
            text += f"\n\n{key.capitalize()}: {'; '.join(values)}."
    if failures:
        text += f"\n\n{len(failures)} job(s) failed:\n\n{format_failures(failures)}"
    (directory / "summary.md").write_text(text + "\n")
    with open(directory / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("dataset", "category", "stage", "map", *COLUMNS, "error"))
        writer.writerows(_csv_rows(records, failures))
    return text


def log_summary_to_wandb(directory: Path, project: str | None) -> None:
    """The summary as a wandb table, in the sweep's group (what `logger=wandb` puts its jobs in)."""
    import wandb

    rows = _csv_rows(collect(directory), collect_failures(directory))
    table = wandb.Table(columns=["dataset", "category", "stage", "map", *HEADERS, "error"], data=rows)
    run = wandb.init(
        project=project,
        group=sweep_group(directory),
        job_type="summary",
        name=f"{sweep_group(directory)}/summary",
        dir=str(directory),
        reinit="create_new",
    )
    run.log({"summary": table})
    run.finish()


class SummaryCallback(Callback):
    """Hydra callback: after a multirun, print and save the table of every job's metrics and failures;
    log it to wandb when the jobs did; exit with status 1 if any job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        print(write_summary(sweep_dir))
        print(f"Summary written to {sweep_dir / 'summary.md'} and summary.csv")
        wandb = wandb_config(config.get("logger"))
        if wandb is not None:
            log_summary_to_wandb(sweep_dir, OmegaConf.select(wandb, "project"))
        failed = collect_failures(sweep_dir)
        if failed:
            raise SystemExit(
                f"{len(failed)} of the sweep's jobs failed; their reasons are in {sweep_dir / 'summary.md'}."
            )
