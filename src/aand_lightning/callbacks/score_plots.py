"""Per-category ROC curve and score histogram of the test pass, as PNGs and in the image loggers."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from aand_lightning.data.batch import Batch
from aand_lightning.metrics.distributed import gather_uneven
from aand_lightning.reporting.loggers import log_images
from aand_lightning.reporting.visualization import score_plots, write_png
from aand_lightning.stages.base import EvaluationOutput


class ScorePlots(Callback):
    """Writes `roc.png` and `score_histogram.png` into `output_dir` after each test pass (rank 0)."""

    def __init__(self, output_dir: str | Path, title: str = "") -> None:
        self.output_dir = Path(output_dir)
        self.title = title
        self._scores: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._scores, self._labels = [], []

    def on_test_batch_end(
        self, trainer, pl_module, outputs: EvaluationOutput, batch: Batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._scores.append(outputs.scores.detach().float().cpu())
        self._labels.append(batch.label.detach().cpu())

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        scores = gather_uneven(torch.cat(self._scores).to(pl_module.device)).cpu().numpy()
        labels = gather_uneven(torch.cat(self._labels).to(pl_module.device)).cpu().numpy()
        if not trainer.is_global_zero or len(np.unique(labels)) < 2:
            return
        roc, histogram = score_plots(scores, labels, self.title)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_png(self.output_dir / "roc.png", roc)
        write_png(self.output_dir / "score_histogram.png", histogram)
        log_images(
            trainer.loggers, "test/score_plots", [roc, histogram], ["roc", "score_histogram"],
            ["ROC", "scores"], trainer.global_step,
        )  # fmt: skip
