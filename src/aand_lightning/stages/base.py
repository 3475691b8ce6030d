"""What both stages share: evaluation of anomaly maps on the test set (and optionally on validation)."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import nn

from aand_lightning.metrics.anomaly_metrics import AnomalyMetrics

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class AnomalyStage(L.LightningModule):
    """A stage turns a batch into (maps, scores); this base evaluates them with raw-score metrics.

    `test_results` holds the computed metrics after `trainer.test` (identical on every rank: the
    metric states are gathered across processes before computing).
    """

    synthetic_train = False
    map_name = ""

    def __init__(
        self,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        fpr_limit: float = 0.3,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.test_metrics = AnomalyMetrics(fpr_limit=fpr_limit)
        self.val_metrics = AnomalyMetrics(fpr_limit=fpr_limit, compute_pixel=False)
        self.test_results: dict[str, float] = {}

    def trainable(self) -> nn.Module:
        raise NotImplementedError

    def anomaly_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(
            params=[p for p in self.trainable().parameters() if p.requires_grad]
        )
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer)}}

    def _validate_on_test(self) -> bool:
        return bool(getattr(self.trainer.datamodule, "validate_on_test", False))

    def evaluate_batch(
        self, batch: dict, metrics: AnomalyMetrics, with_pixels: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        maps, scores = self.anomaly_maps(batch["image"])
        masks = batch["mask"][:, 0] > 0.5 if with_pixels else None
        metrics.update(scores, batch["label"], maps[:, 0] if with_pixels else None, masks)
        return maps, scores

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        maps, scores = self.evaluate_batch(batch, self.test_metrics, with_pixels=True)
        return {"maps": maps, "scores": scores}

    def on_test_epoch_end(self) -> None:
        results = {k: float(v) for k, v in self.test_metrics.compute().items()}
        self.test_metrics.reset()
        self.test_results = results
        self.log_dict({f"test/{k}": v for k, v in results.items()}, sync_dist=False, rank_zero_only=True)

    def on_validation_epoch_end(self) -> None:
        if self._validate_on_test():
            results = self.val_metrics.compute()
            self.val_metrics.reset()
            self.log("val/image_auroc", results["image_auroc"], prog_bar=True)
