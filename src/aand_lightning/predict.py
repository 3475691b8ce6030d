"""`python -m aand_lightning.predict ckpt=<stage-2 checkpoint> input=<image or folder> output=<folder>`.

A loop over `Inferencer` (inference.py): for every image, a heatmap overlay and a binary mask at the
image's own size, and a row of `scores.csv` (path, score, threshold, is_anomalous). Two thresholds,
chosen by the same rule: the decision on the image score (score > t) and the mask on the map
(map > t_map). The paper's image score is the maximum of its smoothed map, so for it t_map = t and
an image is anomalous exactly when its mask is not empty (at the model's size, and at any larger one,
since masks are enlarged by nearest neighbour). The fused map (`anomaly_map.output=fused`, weighted by
`anomaly_map.fused_weight`) keeps the paper's score, so its masks have their own threshold.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from omegaconf import DictConfig

from aand_lightning.artifacts.checkpoint import TrainedModel, load_model
from aand_lightning.config.command_line import entry_point
from aand_lightning.data.io import GOOD
from aand_lightning.inference import Inferencer, PredictError, TorchBackend, find_images
from aand_lightning.metrics.anomaly_metrics import f1_max
from aand_lightning.models.deployed import DeployedModel
from aand_lightning.reporting.failures import user_errors
from aand_lightning.reporting.visualization import heatmap_overlay, write_png

__all__ = ["PredictError", "Thresholds", "choose_thresholds", "find_images", "run"]


class Thresholds(NamedTuple):
    """`score` decides an image (image score > it); `map` draws its mask (map pixels > it)."""

    score: float
    map: float


def _values(
    trained: TrainedModel, paths: list[Path], batch_size: int, device: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image scores, the map maxima (at the model's size; equal to the scores unless the map is the
    fused one) and the labels (1 unless in a good/ folder) of the readable images of `paths`."""
    deployed = DeployedModel(trained.model, trained.preprocessing.mean, trained.preprocessing.std)
    backend = TorchBackend(deployed, device)  # the thresholds are still to be chosen: outputs only
    inferencer = Inferencer(backend, trained.preprocessing, math.nan, math.nan, batch_size)
    rows = [
        (float(out.score[0]), float(out.anomaly_map.max()), int(path.parent.name != GOOD))
        for path, _, out in inferencer.outputs(paths)
    ]
    if not rows:
        raise PredictError("None of the threshold_images could be read; pass a folder of readable images.")
    scores, peaks, labels = zip(*rows, strict=True)
    return np.array(scores), np.array(peaks), np.array(labels)


def choose_thresholds(trained: TrainedModel, cfg: DictConfig) -> Thresholds:
    """The thresholds of `cfg.threshold`: stored, a number (both), or percentile / f1, each applied to
    the image scores and to the map maxima of `threshold_images`."""
    mode = cfg.threshold
    if isinstance(mode, (int, float)):
        return Thresholds(float(mode), float(mode))
    if mode == "stored":
        stored = Thresholds(float(trained.model.threshold), float(trained.model.map_threshold))
        if math.isnan(stored.score) or math.isnan(stored.map):
            raise PredictError(
                "This checkpoint stores no threshold chosen on its validation images; pass "
                "threshold=<number>, or threshold=percentile / threshold=f1 with threshold_images=<folder>."
            )
        return stored
    if mode not in ("percentile", "f1"):
        raise PredictError(f"Unknown threshold={mode!r}; pass stored, a number, percentile or f1.")
    if not cfg.threshold_images:
        kind = "normal" if mode == "percentile" else "labelled"
        raise PredictError(f"threshold={mode} needs threshold_images=<folder> of {kind} images.")
    *values, labels = _values(trained, find_images(cfg.threshold_images), cfg.batch_size, cfg.device)
    if mode == "percentile":
        return Thresholds(*(float(np.percentile(v, cfg.threshold_percentile)) for v in values))
    if labels.min() == labels.max():
        raise PredictError(
            "threshold=f1 needs a labelled folder with a good/ subfolder and defect subfolders."
        )
    # the F1 cut t (a score: float32) predicts value >= t; our decision is value > threshold, in the
    # model's float32 buffers: step to the float32 just below t
    cuts = (np.float32(f1_max(torch.from_numpy(v), torch.from_numpy(labels))[1]) for v in values)
    return Thresholds(*(float(np.nextafter(cut, np.float32(-np.inf))) for cut in cuts))


def run(cfg: DictConfig) -> Path:
    """Predict every input image; returns the path of scores.csv."""
    trained = load_model(cfg.ckpt)
    paths = find_images(cfg.input)
    thresholds = choose_thresholds(trained, cfg)
    inferencer = Inferencer.from_checkpoint(trained, *thresholds, cfg.device, cfg.batch_size)
    output = Path(cfg.output)
    (output / "overlays").mkdir(parents=True, exist_ok=True)
    (output / "masks").mkdir(parents=True, exist_ok=True)
    root = Path(cfg.input) if Path(cfg.input).is_dir() else Path(cfg.input).parent
    predicted = 0
    with open(output / "scores.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "score", "threshold", "is_anomalous"))
        for p in inferencer.predictions(paths, progress=True):
            predicted += 1
            name = "__".join(p.path.relative_to(root).with_suffix("").parts)
            overlay = heatmap_overlay(p.image, p.anomaly_map, (0.0, 2 * thresholds.map), p.mask, p.score)
            write_png(output / "overlays" / f"{name}.png", overlay)
            write_png(
                output / "masks" / f"{name}.png", np.repeat((p.mask * 255).astype(np.uint8)[..., None], 3, 2)
            )
            writer.writerow((str(p.path), f"{p.score:.6f}", f"{thresholds.score:.6f}", int(p.is_anomalous)))
    masks = "" if thresholds.map == thresholds.score else f" (masks: map > {thresholds.map:.6f})"
    skipped = f" ({len(paths) - predicted} unreadable, skipped)" if predicted < len(paths) else ""
    print(
        f"Predicted {predicted} images{skipped} with threshold {thresholds.score:.6f}{masks}: "
        f"{output / 'scores.csv'}"
    )
    return output / "scores.csv"


@entry_point("predict")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run(cfg)


if __name__ == "__main__":
    main()
