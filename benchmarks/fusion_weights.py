"""Judge the fused map's weighting: every map of trained stage-2 models on their test sets.

For each job of a sweep (`<job>/distill/checkpoints/last.ckpt`), the model's maps of the job's normal
validation images, and its gate on synthetic anomalies drawn on them, calibrate the fusion exactly as
training does (the statistics, and the weight that `anomaly_map.fusion=auto` chooses). The test
split is then only scored, for the paper's map, the gate map, the fused map with the rule's weight,
and fused maps with fixed weights beside it; as in the model, a fused map's images are scored by the
paper's map (`fusion.scored_map`). Nothing is chosen on the test split: the table is there to judge
the rule, not to tune it.

  python benchmarks/fusion_weights.py multirun/<sweep> [more sweeps] [--weights 0.25 0.5 0.75]
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from aand_lightning.checkpoint import load_model
from aand_lightning.data.datamodule import AnomalyDataModule
from aand_lightning.metrics.anomaly_metrics import AnomalyMetrics
from aand_lightning.models.aand import AAND
from aand_lightning.models.anomaly_map import image_scores
from aand_lightning.models.fusion import AUTO, MapFusion, scored_map
from aand_lightning.stages.distill import anomalous_gate_values

COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "per_image_pro")


def job_datamodule(job: Path) -> AnomalyDataModule:
    """The job's own datamodule (same split, same validation images), from its saved Hydra config."""
    cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
    cfg.paths.root_dir = OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.runtime.cwd
    datamodule = instantiate(cfg.datamodule, num_workers=0)
    datamodule.setup()
    return datamodule


@torch.no_grad()
def component_maps(model: AAND, datamodule: AnomalyDataModule, split: str) -> dict[str, torch.Tensor]:
    """The paper's and the gate maps of a split ('val': normal validation images, 'test'), with labels."""
    samples, mode = (datamodule.val_samples, "normal") if split == "val" else (datamodule.splits.test, "test")
    loader = datamodule.loader(datamodule.dataset(samples, mode), datamodule.eval_batch_size)
    parts: dict[str, list[torch.Tensor]] = {"aand": [], "gate": [], "label": [], "mask": []}
    for batch in loader:
        maps = model(batch.image, all_maps=True).maps_by_name
        for name in ("aand", "gate"):
            parts[name].append(maps[name])
        parts["label"].append(batch.label)
        parts["mask"].append(batch.mask[:, 0] > 0.5)
    return {name: torch.cat(values) for name, values in parts.items()}


def metrics(maps: dict[str, torch.Tensor], name: str, fpr_limit: float) -> dict[str, float]:
    """The metrics of map `name` of the test split `maps` (scored as the model scores it)."""
    metric = AnomalyMetrics(fpr_limit=fpr_limit)
    metric.update(image_scores(maps[scored_map(name)]), maps["label"], maps[name][:, 0], maps["mask"])
    return {key: float(value) for key, value in metric.compute().items()}


def evaluate(job: Path, weights: list[float], fpr_limit: float) -> tuple[str, list[tuple[str, dict]]] | None:
    """(title, [(map label, metrics)]) of one job; every fusion is calibrated on validation images only.
    None for an RD job (no RAA, so no gate map), as a benchmark sweep has beside the AAND ones."""
    model, config = load_model(job / "distill" / "checkpoints" / "last.ckpt")
    if not config["raa"]["enabled"]:
        return None
    datamodule = job_datamodule(job)
    val, test = component_maps(model, datamodule, "val"), component_maps(model, datamodule, "test")
    draws = datamodule.synthetic_draws(datamodule.val_samples, model.fusion.draws)
    anomalous = anomalous_gate_values(model, draws, torch.device("cpu"))
    rows = [(name, metrics(test, name, fpr_limit)) for name in ("aand", "gate")]
    for setting in (AUTO, *weights):
        fusion = MapFusion(setting)
        fusion.calibrate(val["aand"], val["gate"], anomalous)
        label = f"fused, w={setting}" if setting != AUTO else f"fused, auto (w={float(fusion.weight):.2f})"
        rows.append(
            (label, metrics({**test, "fused": fusion(test["aand"], test["gate"])}, "fused", fpr_limit))
        )
    title = f"{datamodule.category} ({config['backbone']['name']}, weights={config['backbone']['weights']})"
    return title, rows


def _pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{100 * value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--weights", nargs="*", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--fpr-limit", type=float, default=0.3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    for sweep in args.sweeps:
        jobs = sorted(p.parents[2] for p in sweep.rglob("distill/checkpoints/last.ckpt"))
        lines = [f"## {sweep}", "", "| category | map | " + " | ".join(COLUMNS) + " |", "|" + "---|" * 6]
        means: dict[str, list[list[float]]] = {}
        for job in jobs:
            evaluated = evaluate(job, args.weights, args.fpr_limit)
            if evaluated is None:
                continue
            title, rows = evaluated
            for label, values in rows:
                key = label.split(" (w=")[0]
                means.setdefault(key, []).append([values[c] for c in COLUMNS])
                lines.append(f"| {title} | {label} | " + " | ".join(_pct(values[c]) for c in COLUMNS) + " |")
        for key, group in means.items():
            mean = [sum(column) / len(column) for column in zip(*group, strict=True)]
            lines.append(f"| **mean** | {key} | " + " | ".join(_pct(v) for v in mean) + " |")
        print("\n".join(lines) + "\n", flush=True)


if __name__ == "__main__":
    main()
