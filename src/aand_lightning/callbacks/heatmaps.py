"""Save heatmap overlays of test images (and log them to every logger that takes images)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback

from aand_lightning.data.batch import Batch
from aand_lightning.reporting.loggers import log_images
from aand_lightning.reporting.visualization import heatmap_overlay, write_png
from aand_lightning.stages.base import EvaluationOutput


class HeatmapWriter(Callback):
    """Collects up to `max_images` test images (None = all) and writes one overlay PNG each."""

    def __init__(self, output_dir: str | Path, max_images: int | None = 32) -> None:
        self.output_dir = Path(output_dir)
        self.max_images = max_images
        self._items: list[tuple[np.ndarray, np.ndarray, np.ndarray, float, str]] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._items = []

    def on_test_batch_end(
        self, trainer, pl_module, outputs: EvaluationOutput, batch: Batch, batch_idx, dataloader_idx=0
    ) -> None:
        room = None if self.max_images is None else self.max_images - len(self._items)
        if not trainer.is_global_zero or room == 0:
            return
        images = pl_module.preprocessing.denormalize(batch.image[:room])
        maps = outputs.maps[:room, 0].float().cpu().numpy()
        masks = (batch.mask[:room, 0] > 0.5).cpu().numpy()
        scores = outputs.scores[:room].float().cpu().tolist()
        for i, path in enumerate(batch.path[: len(images)]):
            name = f"{batch.defect[i]}_{Path(path).stem}"
            self._items.append((images[i], maps[i], masks[i], scores[i], name))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self._items:
            return
        all_maps = np.stack([m for _, m, _, _, _ in self._items])
        value_range = (float(all_maps.min()), float(all_maps.max()))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        panels, names, captions = [], [], []
        for image, amap, mask, score, name in self._items:
            panel = heatmap_overlay(image, amap, value_range, mask, score)
            write_png(self.output_dir / f"{name}.png", panel)
            panels.append(panel)
            names.append(name)
            captions.append(f"{name} score={score:.4f}")
        log_images(trainer.loggers, "test/heatmaps", panels, names, captions, trainer.global_step)
        self._items = []
