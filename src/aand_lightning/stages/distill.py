"""Stage 2: distil the frozen amplified teacher into a reverse-distillation student (normal images only)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from aand_lightning.data.batch import Batch
from aand_lightning.distributed import gather_uneven
from aand_lightning.models.aand import AAND
from aand_lightning.models.amplified_teacher import TeacherOutput
from aand_lightning.models.anomaly_map import image_scores
from aand_lightning.models.fusion import scored_map
from aand_lightning.stages.base import AnomalyStage, OptimizerFactory, SchedulerFactory
from aand_lightning.stages.feature_cache import FeatureCacheSettings, TeacherFeatureCache


class NormalityDistillation(AnomalyStage):
    """Trains bottleneck + decoder with a distillation loss against the amplified teacher features.

    After each validation epoch on held-out normal images, their maps calibrate the model: the fused
    map's normal statistics and weight, then the decision threshold, the `threshold_quantile` of their
    image scores, and the mask threshold, the same quantile of the configured map's maxima, so a
    checkpoint can predict on its own. Without such images (a
    tiny train split, `val_fraction=0`, or validation on the test set) the last epoch calibrates on the
    training images instead, with a warning: never NaN. Nothing else ever reaches the calibration: the
    test pass only reads it. `model_config` is the plain description needed to rebuild the model.
    `feature_cache` (`distill.feature_cache`: enabled, dtype, max_gb) keeps the frozen teacher's output
    for each train and validation image after its first use (see stages/feature_cache.py).
    """

    def __init__(
        self,
        model: AAND,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        model_config: dict[str, Any] | None = None,
        threshold_quantile: float = 0.99,
        fpr_limit: float = 0.3,
        channels_last: bool = False,
        compile: bool = False,
        feature_cache: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(optimizer, scheduler, fpr_limit, channels_last, compile)
        self.save_hyperparameters(
            {"model_config": model_config or {}, "threshold_quantile": threshold_quantile}
        )
        self.model = model
        self.loss = loss
        self.threshold_quantile = threshold_quantile
        self._val_maps: list[dict[str, torch.Tensor]] = []
        self._anomalous_gate_values: dict[str, torch.Tensor] = {}
        self.feature_cache_settings = FeatureCacheSettings(**(feature_cache or {}))
        self.feature_cache: TeacherFeatureCache | None = None

    @property
    def map_name(self) -> str:
        return self.model.map_name

    def map_names(self) -> list[str]:
        return self.model.map_names()

    def maps_by_name(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(images, all_maps=True).maps_by_name

    def map_details(self) -> dict[str, Any]:
        """The fusion setting, its weight and normal statistics (when the model has RAA gates)."""
        return self.model.fusion.describe() if self.model.teacher.enabled else {}

    def trainable(self) -> nn.Module:
        return self.model.student

    def compile_targets(self) -> list[nn.Module]:
        return [self.model.teacher, self.model.student]

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":  # a fresh cache per fit: a resumed run rebuilds it from the files
            # on the host, the processes of one machine share its memory (CPU DDP: one per device)
            self.feature_cache = TeacherFeatureCache(self.feature_cache_settings, self.trainer.num_devices)

    def on_before_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """Dataset indices stay on the host: the feature cache looks them up without a device sync."""
        if isinstance(batch.index, torch.Tensor):
            batch.index = batch.index.tolist()
        return batch

    def _teacher(self, batch: Batch, loaders: Any) -> TeacherOutput | None:
        """The teacher's output for a training or validation batch: from the feature cache where it has
        it (None, the model computes it, when there is no cache or during the sanity check)."""
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        dataset = getattr(loader, "dataset", None)
        if self.feature_cache is None or dataset is None or self.trainer.sanity_checking:
            return None
        return self.feature_cache(self.model.teacher, batch.image, dataset, batch.index)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        teacher = self._teacher(batch, self.trainer.train_dataloader)
        out = self.model(batch.image, with_map=False, teacher=teacher)
        loss = self.loss(out.teacher.amplified, out.student)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if self._validate_on_test():
            self.validate_on_test_batch(batch)
            return
        teacher = self._teacher(batch, self.trainer.val_dataloaders)
        out = self.model(batch.image, all_maps=True, teacher=teacher)
        loss = self.loss(out.teacher.amplified, out.student)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch))
        self._val_maps.append(_components(out.maps_by_name))

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self._val_maps:
            self._calibrate(self._val_maps, "val")
            self._val_maps.clear()

    def _calibrate(self, batches: list[dict[str, torch.Tensor]], split: Literal["val", "train"]) -> None:
        """From normal images' maps (all ranks): the fused map's statistics and weight, then the thresholds:
        on the image scores, and on the configured map's maxima (so that the same share of normal images
        shows a mask). `split` says which normal images they are."""
        maps = {name: gather_uneven(torch.cat([b[name] for b in batches])) for name in batches[0]}
        fusion = self.model.fusion
        if "gate" in maps:
            anomalous = None if fusion.fixed_weight is not None else self._anomalous_gate(split)
            if anomalous is not None or fusion.fixed_weight is not None or fusion.enabled:
                fusion.calibrate(maps["aand"], maps["gate"], anomalous)
                maps["fused"] = fusion(maps["aand"], maps["gate"])
        for threshold, name in (
            (self.model.threshold, scored_map(self.map_name)),
            (self.model.map_threshold, self.map_name),
        ):
            scores = image_scores(maps[name]).float()
            threshold.fill_(torch.quantile(scores, self.threshold_quantile).item())

    def _anomalous_gate(self, split: Literal["val", "train"]) -> torch.Tensor | None:
        """Gate-map values inside `fusion.draws` synthetic anomalies on each image of the split (the
        validation images are held out from stage 1's training), for the weight of `fusion=auto`.
        Measured once per fit and split: the teacher, so the gate, does not change in stage 2. None
        without an AnomalyDataModule that can synthesise (then only a fixed weight can be used)."""
        if split not in self._anomalous_gate_values:
            datamodule = getattr(self.trainer, "datamodule", None)
            if getattr(datamodule, "synthesizer", None) is None:
                return None
            samples = datamodule.val_samples if split == "val" else datamodule.splits.train
            loader = datamodule.synthetic_draws(samples, self.model.fusion.draws)
            self._anomalous_gate_values[split] = anomalous_gate_values(self.model, loader, self.device)
        return self._anomalous_gate_values[split]

    def on_train_epoch_end(self) -> None:
        """The feature cache's checks of this epoch (see `TeacherFeatureCache.verify`); then, in the last
        epoch without a threshold from normal validation images, fall back to the train images."""
        if self.feature_cache is not None:
            self.feature_cache.verify()
        datamodule = self.trainer.datamodule  # None when fit on bare loaders: no split to fall back on
        last_epoch = self.current_epoch + 1 >= self.trainer.max_epochs
        if datamodule is None or not last_epoch or not torch.isnan(self.model.threshold):
            return
        loader = datamodule.loader(
            datamodule.dataset(datamodule.splits.train, "normal"), datamodule.eval_batch_size
        )
        self.model.eval()  # the student's BatchNorm must not update on these images
        with torch.no_grad():
            maps = [
                _components(self.model(batch.image.to(self.device), all_maps=True).maps_by_name)
                for batch in loader
            ]
        self.model.train()
        self._calibrate(maps, "train")
        rank_zero_warn(
            f"No normal validation images: the stored thresholds are the {self.threshold_quantile} "
            "quantile of the training images' scores and maps, and the fused map's statistics come from "
            "them, which the student has fitted (expect more false alarms); hold out images with "
            "datamodule.val_fraction > 0 for better ones."
        )

    def selection_score(self, results: dict[str, torch.Tensor]) -> torch.Tensor:
        """The authors keep the stage-2 epoch with the best image + pixel AUROC on the test set."""
        return results["image_auroc"] + results["pixel_auroc"]

    def anomaly_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        return out.maps, out.scores


def _components(maps_by_name: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The maps the calibration is measured on (the fused map is derived from them)."""
    return {name: maps.detach() for name, maps in maps_by_name.items() if name in ("aand", "gate")}


@torch.no_grad()
def anomalous_gate_values(model: AAND, loader: Iterable[Batch], device: torch.device) -> torch.Tensor:
    """Gate-map values inside the masks of synthetic anomalies (the teacher alone runs), on the CPU."""
    values = []
    for batch in loader:
        images, masks = batch.image.to(device), batch.mask.to(device) > 0.5
        gate, _ = model.anomaly_map.gate_map(model.teacher(images).gates, tuple(images.shape[-2:]))
        values.append(gate[masks].cpu())
    return torch.cat(values)
