"""`python -m aand_lightning.predict ckpt=<stage-2 checkpoint> input=<image or folder> output=<folder>`.

For every image: a heatmap overlay, a binary mask and a row of `scores.csv` (path, score, threshold,
is_anomalous). Two thresholds, chosen by the same rule: the decision on the image score (score > t)
and the mask on the map (map > t_map). The paper's image score is the maximum of its smoothed map, so
for it t_map = t and an image is anomalous exactly when its mask is not empty. The fused map
(`anomaly_map.fusion`) keeps the paper's score, so its masks have their own threshold.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from aand_lightning.artifacts.checkpoint import TrainedModel, load_model
from aand_lightning.config import config_dir
from aand_lightning.data.io import GOOD, CorruptImageError, list_images, read_image
from aand_lightning.errors import UserError
from aand_lightning.metrics.anomaly_metrics import f1_max
from aand_lightning.reporting.failures import user_errors
from aand_lightning.reporting.visualization import heatmap_overlay, write_png


class PredictError(UserError):
    """Bad predict input; the message names the fix."""


def find_images(path: str | Path) -> list[Path]:
    """One image, or every image below a folder (sorted, recursive, hidden files skipped)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PredictError(f"Input {path} does not exist; pass input=<an image or a folder of images>.")
    images = list_images(path, recursive=True)
    if not images:
        raise PredictError(f"Folder {path} holds no images; pass input=<a folder with png/jpg images>.")
    return images


def _batches(paths: Sequence[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(paths), size):
        yield list(paths[start : start + size])


def predict_images(
    trained: TrainedModel,
    paths: Sequence[Path],
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
) -> Iterator[tuple[Path, np.ndarray, np.ndarray, float]]:
    """Yield (path, resized uint8 image, map HxW, score) per readable image; unreadable ones are skipped."""
    model = trained.model.to(device)
    with tqdm(total=len(paths), disable=not progress, desc="predict", unit="img") as bar:
        for batch in _batches(paths, batch_size):
            images, inputs, kept = [], [], []
            for path in batch:
                try:
                    image, tensor = trained.preprocessing(read_image(path))
                except CorruptImageError as error:
                    warnings.warn(f"Skipping {path}: {error}", stacklevel=2)
                    continue
                images.append(image)
                inputs.append(tensor)
                kept.append(path)
            bar.update(len(batch))
            if not kept:
                continue
            with torch.no_grad():
                out = model(torch.stack(inputs).to(device))
            for path, image, amap, score in zip(
                kept, images, out.map[:, 0].cpu().numpy(), out.score.cpu().tolist(), strict=True
            ):
                yield path, image, amap, score


class Thresholds(NamedTuple):
    """`score` decides an image (image score > it); `map` draws its mask (map pixels > it)."""

    score: float
    map: float


def _scores_and_peaks(
    trained: TrainedModel, paths: Sequence[Path], batch_size: int, device: str
) -> tuple[np.ndarray, np.ndarray]:
    """The image scores and the map maxima of the images (equal unless the map is the fused one)."""
    rows = [
        (score, amap.max())
        for *_, amap, score in predict_images(trained, paths, batch_size, device, progress=False)
    ]
    if not rows:
        raise PredictError("None of the threshold_images could be read; pass a folder of readable images.")
    scores, peaks = np.array(rows).T
    return scores, peaks


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
    paths = find_images(cfg.threshold_images)
    values = _scores_and_peaks(trained, paths, cfg.batch_size, cfg.device)
    if mode == "percentile":
        return Thresholds(*(float(np.percentile(v, cfg.threshold_percentile)) for v in values))
    labels = np.array([0 if p.parent.name == GOOD else 1 for p in paths])
    if labels.min() == labels.max():
        raise PredictError(
            "threshold=f1 needs a labelled folder with a good/ subfolder and defect subfolders."
        )
    # the F1 cut t predicts value >= t; our decision is value > threshold: step just below t
    cuts = (f1_max(torch.from_numpy(v), torch.from_numpy(labels))[1] for v in values)
    return Thresholds(*(float(np.nextafter(cut, -np.inf)) for cut in cuts))


def run(cfg: DictConfig) -> Path:
    """Predict every input image; returns the path of scores.csv."""
    trained = load_model(cfg.ckpt)
    paths = find_images(cfg.input)
    thresholds = choose_thresholds(trained, cfg)
    output = Path(cfg.output)
    (output / "overlays").mkdir(parents=True, exist_ok=True)
    (output / "masks").mkdir(parents=True, exist_ok=True)
    root = Path(cfg.input) if Path(cfg.input).is_dir() else Path(cfg.input).parent
    with open(output / "scores.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "score", "threshold", "is_anomalous"))
        for path, image, amap, score in predict_images(trained, paths, cfg.batch_size, cfg.device):
            name = "__".join(path.relative_to(root).with_suffix("").parts)
            mask = amap > thresholds.map
            overlay = heatmap_overlay(image, amap, (0.0, 2 * thresholds.map), mask, score)
            write_png(output / "overlays" / f"{name}.png", overlay)
            write_png(
                output / "masks" / f"{name}.png", np.repeat((mask * 255).astype(np.uint8)[..., None], 3, 2)
            )
            writer.writerow(
                (str(path), f"{score:.6f}", f"{thresholds.score:.6f}", int(score > thresholds.score))
            )
    masks = "" if thresholds.map == thresholds.score else f" (masks: map > {thresholds.map:.6f})"
    print(
        f"Predicted {len(paths)} images with threshold {thresholds.score:.6f}{masks}: {output / 'scores.csv'}"
    )
    return output / "scores.csv"


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run(cfg)


if __name__ == "__main__":
    main()
