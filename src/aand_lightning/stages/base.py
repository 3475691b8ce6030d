"""What both stages share: evaluation of anomaly maps on the test set (and optionally on validation)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from aand_lightning.data.batch import Batch
from aand_lightning.data.preprocessing import Preprocessing
from aand_lightning.errors import UserError
from aand_lightning.metrics.anomaly_metrics import PIXEL_METRICS, AnomalyMetrics, PixelCoverage
from aand_lightning.models.anomaly_map import MapName, image_scores

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


def rng_states() -> dict:
    """The global random streams as tensors and plain values, so checkpoints stay weights-only loadable."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(tuple(s if not isinstance(s, list) else tuple(s) for s in states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _floats(results: dict[str, torch.Tensor]) -> dict[str, float | None]:
    """Computed metrics as floats; the pixel metrics that could not be computed (no mask known) as None."""
    return {k: float(v) for k, v in results.items()} | {k: None for k in PIXEL_METRICS if k not in results}


@dataclass
class EvaluationOutput:
    """What `test_step` hands the callbacks: the output map (B,1,H,W) and image scores (B,)."""

    maps: torch.Tensor
    scores: torch.Tensor


class AnomalyStage(L.LightningModule):
    """A stage turns a batch into maps (one per name it can report); this base evaluates them with
    raw-score metrics.

    `test_results` holds the computed metrics of the output map (`output_map`) after `trainer.test`,
    `test_results_by_map` those of every map of the same forward pass (identical on every rank: the
    metric states are gathered across processes before computing), pixel metrics None where no
    anomalous test image has a mask; `test_coverage` says which images the pixel metrics cover.
    `synthetic_train` says whether the stage trains on synthetic anomalies (the entry point tells the
    datamodule); `validate_on_test` (the authors' protocol) that its validation batches are the
    labelled test set. `preprocessing` is what turned the files into its inputs (pictures undo it).
    """

    stage_name = ""
    synthetic_train = False
    textures: str | None = None  # the texture source of the stage-1 synthetic anomalies (for the record)

    def __init__(
        self,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        preprocessing: Preprocessing | None = None,
        fpr_limit: float = 0.3,
        validate_on_test: bool = False,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.preprocessing = preprocessing
        self.validate_on_test = validate_on_test
        self.channels_last = channels_last
        self.compile_modules = compile
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.fpr_limit = fpr_limit
        self.test_metrics = nn.ModuleDict()  # one AnomalyMetrics per reported map, made per test pass
        self.val_metrics = AnomalyMetrics(fpr_limit=fpr_limit)  # only fed when validating on the test set
        self.test_results: dict[str, float | None] = {}
        self.test_results_by_map: dict[str, dict[str, float | None]] = {}
        self.test_coverage: PixelCoverage | None = None
        self.inference_seconds = 0.0
        self.inference_images = 0

    def trainable(self) -> nn.Module:
        raise NotImplementedError

    def compile_targets(self) -> list[nn.Module]:
        """The modules whose forward does the heavy work (compiled in place with `compile=True`)."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        """Fast paths (`performance.*` in the config), off by default; state-dict keys stay unchanged."""
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        if self.compile_modules:
            for module in self.compile_targets():
                module.compile()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Global random streams (torch, CUDA, numpy, Python) travel with the checkpoint; the data order,
        the synthetic anomalies and the L_amp subsets are already pure functions of seed, epoch and step."""
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        if self.channels_last:
            batch.image = batch.image.contiguous(memory_format=torch.channels_last)
        return batch

    @property
    def output_map(self) -> MapName:
        """The map the stage gives (and is tested, and its threshold chosen, on)."""
        raise NotImplementedError

    def output(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(maps, scores) of the output map."""
        raise NotImplementedError

    def map_names(self) -> list[MapName]:
        """The maps this stage reports (the keys of `named_maps`), `output_map` among them."""
        return [self.output_map]

    def named_maps(self, images: torch.Tensor) -> dict[MapName, torch.Tensor]:
        """Every map of `map_names`, from one forward pass."""
        return {self.output_map: self.output(images)[0]}

    def map_details(self) -> dict[str, Any]:
        """What a reader of the metrics needs to know about how the maps were made (none by default)."""
        return {}

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(
            params=[p for p in self.trainable().parameters() if p.requires_grad]
        )
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer)}}

    def validate_on_test_batch(self, batch: Batch) -> None:
        """Authors' protocol (opt-in): maps and scores of labelled test images during validation."""
        maps, scores = self.output(batch.image)
        self.val_metrics.update(scores, batch.label, maps[:, 0], batch.mask[:, 0] > 0.5, batch.mask_known)

    def on_validation_batch_start(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """The authors' protocol selects epochs by pixel-level results on the test set: every mask needed."""
        if self.validate_on_test and batch.mask_known is not None and not bool(batch.mask_known.all()):
            raise UserError(
                "protocol=authors selects epochs by pixel metrics on the test set, so every anomalous test "
                "image needs a mask; pass protocol=clean or add the missing masks (dataset.mask_dir)."
            )

    def selection_score(self, results: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the authors' protocol keeps the best epoch by (logged as `val/selection`)."""
        raise NotImplementedError

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_test_epoch_start(self) -> None:
        self.inference_seconds, self.inference_images = 0.0, 0
        self.test_metrics = nn.ModuleDict(
            {name.value: AnomalyMetrics(fpr_limit=self.fpr_limit) for name in self.map_names()}
        ).to(self.device)

    def test_step(self, batch: Batch, batch_idx: int) -> EvaluationOutput:
        """Evaluate a batch on every map; the time of image → maps + scores (not of metrics or pictures)
        is summed. The output map is what the callbacks (overlays, score plots) get."""
        self._sync()
        start = time.perf_counter()
        by_name = self.named_maps(batch.image)
        scores = {name: image_scores(by_name[name.scored_by]) for name in by_name}
        self._sync()
        self.inference_seconds += time.perf_counter() - start
        self.inference_images += len(batch)
        masks = batch.mask[:, 0] > 0.5
        for name, maps in by_name.items():
            self.test_metrics[name].update(scores[name], batch.label, maps[:, 0], masks, batch.mask_known)
        return EvaluationOutput(by_name[self.output_map], scores[self.output_map])

    def on_test_epoch_end(self) -> None:
        self.test_results_by_map = {
            name: _floats(metrics.compute()) for name, metrics in self.test_metrics.items()
        }
        self.test_coverage = self.test_metrics[self.output_map.value].coverage()
        self.test_metrics = nn.ModuleDict()
        self.test_results = self.test_results_by_map[self.output_map.value]
        self.log_dict(
            {f"test/{k}": v for k, v in self.test_results.items() if v is not None},
            sync_dist=False,
            rank_zero_only=True,
        )
        others = {
            f"test_{name}/{k}": v
            for name, results in self.test_results_by_map.items()
            if name != self.output_map
            for k, v in results.items()
            if v is not None
        }
        self.log_dict(others, sync_dist=False, rank_zero_only=True)

    def on_validation_epoch_end(self) -> None:
        if self.validate_on_test:
            results = self.val_metrics.compute()
            self.val_metrics.reset()
            self.log("val/image_auroc", results["image_auroc"], prog_bar=True)
            self.log("val/selection", self.selection_score(results))
