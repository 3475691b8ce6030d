"""Judge the fused map's weighting: every map of trained stage-2 models on their test sets.

For each job of a sweep (`<job>/distill/checkpoints/last.ckpt`), the model's maps of the job's normal
validation images, and its gate on synthetic anomalies drawn on them (`distill.gate_draws` per image),
calibrate the fused map exactly as training does (the statistics, and the weight that
`anomaly_map.fused_weight=auto` chooses). The test split is then only scored, for the paper's map, the
gate map, the fused map with the rule's weight, and fused maps with fixed weights beside it; as in the
model, a fused map's images are scored by the paper's map (`MapName.scored_by`). Nothing is chosen on
the test split: the table is there to judge the rule, not to tune it.

  python benchmarks/fusion_weights.py multirun/<sweep> [more sweeps] [--weights 0.25 0.5 0.75]
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from aand_lightning.artifacts.checkpoint import load_model
from aand_lightning.data.datamodule import AnomalyDataModule
from aand_lightning.data.preprocessing import Preprocessing
from aand_lightning.metrics.anomaly_metrics import AnomalyMetrics
from aand_lightning.models.aand import AAND
from aand_lightning.models.anomaly_map import MapName, image_scores
from aand_lightning.models.fused_map import AUTO, FusedMap
from aand_lightning.stages.distill import anomalous_gate_values

COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "per_image_pro")
COMPONENTS = (MapName.AAND, MapName.GATE)
# The datamodule's preprocessing settings, older runs' (image_size, interpolation) and today's node.
_PREPROCESSING_KEYS = ("preprocessing", "image_size", "interpolation")


def job_config(job: Path) -> DictConfig:
    """The job's saved Hydra config, its paths resolved against the directory it ran in."""
    cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
    cfg.paths.root_dir = OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.runtime.cwd
    return cfg


def job_datamodule(cfg: DictConfig, preprocessing: Preprocessing) -> AnomalyDataModule:
    """The job's own datamodule (same split, same validation images) with the model's `preprocessing`
    (the checkpoint's; a run of an older version kept image size and interpolation in the datamodule)."""
    node = cfg.datamodule
    with open_dict(node):
        for key in _PREPROCESSING_KEYS:
            node.pop(key, None)
    # a partial: an object among instantiate's overrides would become a config node
    datamodule = instantiate(node, num_workers=0, _partial_=True)(preprocessing=preprocessing)
    datamodule.setup()
    return datamodule


def gate_draws(cfg: DictConfig) -> int:
    """Synthetic anomalies per validation image that weigh the gate: `distill.gate_draws`, in runs of
    older versions `anomaly_map.fusion_draws`."""
    draws = OmegaConf.select(cfg, "distill.gate_draws")
    return int(draws if draws is not None else cfg.anomaly_map.fusion_draws)


@torch.no_grad()
def component_maps(model: AAND, datamodule: AnomalyDataModule, split: str) -> dict[str, torch.Tensor]:
    """The paper's and the gate maps of a split ('val': normal validation images, 'test'), with labels."""
    loader = datamodule.normal_images("val") if split == "val" else datamodule.test_dataloader()
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in (*COMPONENTS, "label", "mask")}
    for batch in loader:
        maps = model(batch.image, maps=COMPONENTS).maps
        for name in COMPONENTS:
            parts[name].append(maps[name])
        parts["label"].append(batch.label)
        parts["mask"].append(batch.mask[:, 0] > 0.5)
    return {name: torch.cat(values) for name, values in parts.items()}


def metrics(maps: dict[str, torch.Tensor], name: str, fpr_limit: float) -> dict[str, float]:
    """The metrics of map `name` of the test split `maps` (scored as the model scores it)."""
    metric = AnomalyMetrics(fpr_limit=fpr_limit)
    scored_by = MapName(name).scored_by
    metric.update(image_scores(maps[scored_by]), maps["label"], maps[name][:, 0], maps["mask"])
    return {key: float(value) for key, value in metric.compute().items()}


def evaluate(job: Path, weights: list[float], fpr_limit: float) -> tuple[str, list[tuple[str, dict]]] | None:
    """(title, [(map label, metrics)]) of one job; every fused map is calibrated on validation images
    only. None for an RD job (no RAA, so no gate map), as a benchmark sweep has beside the AAND ones."""
    trained = load_model(job / "distill" / "checkpoints" / "last.ckpt")
    model, settings = trained.model, trained.settings
    if not settings["raa"]["enabled"]:
        return None
    cfg = job_config(job)
    datamodule = job_datamodule(cfg, trained.preprocessing)
    val, test = component_maps(model, datamodule, "val"), component_maps(model, datamodule, "test")
    draws = datamodule.synthetic_anomalies("val", gate_draws(cfg))
    if draws is None:
        raise SystemExit(f"{job}: no synthesizer in its datamodule to draw anomalies that weigh the gate.")
    anomalous = anomalous_gate_values(model, draws, torch.device("cpu"))
    rows = [(name.value, metrics(test, name, fpr_limit)) for name in COMPONENTS]
    for setting in (AUTO, *weights):
        fused = FusedMap(setting)
        fused.calibrate(val[MapName.AAND], val[MapName.GATE], anomalous)
        label = f"fused, w={setting}" if setting != AUTO else f"fused, auto (w={float(fused.weight):.2f})"
        with_fused = {**test, MapName.FUSED: fused(test[MapName.AAND], test[MapName.GATE])}
        rows.append((label, metrics(with_fused, MapName.FUSED, fpr_limit)))
    backbone = settings["backbone"]
    title = f"{datamodule.category} ({backbone['name']}, weights={backbone['weights']})"
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
