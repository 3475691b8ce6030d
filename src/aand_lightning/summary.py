"""Collect metrics.json files into one table (per category + dataset mean): console, CSV and Markdown."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "per_image_pro")
HEADERS = ("image AUROC", "pixel AUROC", "AUPRO@0.3", "per-image PRO")


def _rows(records: Iterable[dict[str, Any]]) -> list[list[str]]:
    records = list(records)
    rows = []
    for r in records:
        values = [r["metrics"].get(c, math.nan) for c in COLUMNS]
        rows.append(
            [r["dataset"], r["category"], r["stage"], r.get("map", ""), *(f"{100 * v:.1f}" for v in values)]
        )
    for stage in sorted({r["stage"] for r in records}):
        group = [r for r in records if r["stage"] == stage]
        if len(group) > 1:
            means = [sum(r["metrics"].get(c, math.nan) for r in group) / len(group) for c in COLUMNS]
            rows.append(
                [
                    group[0]["dataset"],
                    "mean",
                    stage,
                    group[0].get("map", ""),
                    *(f"{100 * m:.1f}" for m in means),
                ]
            )
    return rows


def format_table(records: Iterable[dict[str, Any]]) -> str:
    """Markdown table of the records' metrics in percent (AUPRO normalised by its FPR limit)."""
    header = ("dataset", "category", "stage", "map", *HEADERS)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(records)]
    return "\n".join(lines)


def collect(directory: str | Path) -> list[dict[str, Any]]:
    """Every stage record (`<job>/<stage>/metrics.json`) below a run or sweep directory."""
    return [
        json.loads(p.read_text())
        for p in sorted(Path(directory).rglob("*/metrics.json"))
        if p.parent.name in ("amplify", "distill")
    ]


def write_summary(directory: str | Path) -> str:
    """Write summary.csv and summary.md into `directory`; returns the Markdown table."""
    directory = Path(directory)
    records = collect(directory)
    table = format_table(records)
    (directory / "summary.md").write_text(table + "\n")
    with open(directory / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("dataset", "category", "stage", "map", *COLUMNS))
        writer.writerows(_rows(records))
    return table


class SummaryCallback(Callback):
    """Hydra callback: after a multirun, print and save the table of every job's metrics."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            print(write_summary(sweep_dir))
            print(f"Summary written to {sweep_dir / 'summary.md'} and summary.csv")
