"""Stage 2: distil the frozen teacher into a reverse-distillation student (normal images only)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from aand_lightning.data.batch import Batch
from aand_lightning.data.datamodule import NormalSplit
from aand_lightning.data.preprocessing import Preprocessing
from aand_lightning.metrics.distributed import gather_uneven
from aand_lightning.models.aand import AAND, AANDOutput
from aand_lightning.models.anomaly_map import MapName, image_scores
from aand_lightning.models.teacher import TeacherFeatures
from aand_lightning.stages.base import AnomalyStage, OptimizerFactory, SchedulerFactory
from aand_lightning.stages.feature_cache import FeatureCacheSettings, TeacherFeatureCache

# The maps calibration is measured on (the fused map is derived from them).
_COMPONENTS = (MapName.AAND, MapName.GATE)


class CalibrationData(Protocol):
    """Where calibration gets its images (the datamodule offers them; the entry point hands it over)."""

    def normal_images(self, split: NormalSplit) -> Iterable[Batch]: ...

    def synthetic_anomalies(self, split: NormalSplit, draws: int) -> Iterable[Batch] | None: ...


class NormalityDistillation(AnomalyStage):
    """Trains bottleneck + decoder with a distillation loss against the teacher's (amplified) features.

    After each validation epoch on held-out normal images, their maps calibrate the model: the fused
    map's normal statistics and weight (its gate weight from `gate_draws` synthetic anomalies per
    held-out image of `calibration_data`), then the decision threshold, the `threshold_quantile` of
    their image scores, and the mask threshold, the same quantile of the output map's maxima, so a
    checkpoint can predict on its own. Without such images (a tiny train split, `val_fraction=0`, or
    validation on the test set) the last epoch calibrates on the training images of
    `calibration_data` instead, with a warning: never NaN. Nothing else ever reaches the calibration:
    the test pass only reads it. `model_config` is the plain description needed to rebuild the model
    (with `preprocessing`). `feature_cache` (`distill.feature_cache`: enabled, dtype, max_gb) keeps the
    frozen teacher's features of each item with a sample id after its first use, and flags the id in
    `skip_image` (the datamodule's; see stages/feature_cache.py).
    """

    stage_name = "distill"

    def __init__(
        self,
        model: AAND,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        preprocessing: Preprocessing | None = None,
        model_config: dict[str, Any] | None = None,
        threshold_quantile: float = 0.99,
        gate_draws: int = 8,
        calibration_data: CalibrationData | None = None,
        feature_cache: Mapping[str, Any] | None = None,
        skip_image: torch.Tensor | None = None,
        fpr_limit: float = 0.3,
        validate_on_test: bool = False,
        selection_metrics: Sequence[str] = ("image_auroc", "pixel_auroc"),
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(
            optimizer, scheduler, preprocessing, fpr_limit, validate_on_test, channels_last, compile
        )
        self.selection_metrics = tuple(selection_metrics)
        config = dict(model_config or {})
        if preprocessing is not None:
            config["preprocessing"] = preprocessing.to_dict()
        self.save_hyperparameters({"model_config": config, "threshold_quantile": threshold_quantile})
        self.model = model
        self.loss = loss
        self.threshold_quantile = threshold_quantile
        self.gate_draws = gate_draws
        self.calibration_data = calibration_data
        self._val_maps: list[dict[MapName, torch.Tensor]] = []
        self._train_calibrated_at: int | None = None  # the epoch whose weights the train thresholds are of
        self._anomalous_gate_values: dict[str, torch.Tensor] = {}
        self.feature_cache_settings = FeatureCacheSettings(**(feature_cache or {}))
        self.skip_image = skip_image
        self.feature_cache: TeacherFeatureCache | None = None

    @property
    def output_map(self) -> MapName:
        return self.model.output

    def map_names(self) -> list[MapName]:
        return self.model.map_names()

    def named_maps(self, images: torch.Tensor) -> dict[MapName, torch.Tensor]:
        return self.model(images, maps=self.map_names()).maps

    def map_details(self) -> dict[str, Any]:
        """The fused map's setting, its weight and normal statistics (when the model has RAA gates)."""
        return self.model.fused_map.describe() if self.model.teacher.amplifies else {}

    def trainable(self) -> nn.Module:
        return self.model.student

    def compile_targets(self) -> list[nn.Module]:
        return [self.model.teacher, self.model.student]

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.skip_image is not None:  # fresh per fit: a resumed run rebuilds it
            # on the host, the processes of one machine share its memory (CPU DDP: one per device)
            self.feature_cache = TeacherFeatureCache(
                self.feature_cache_settings, self.skip_image, self.trainer.num_devices
            )

    def on_before_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """Sample ids stay on the host: the feature cache looks them up without a device sync."""
        if isinstance(batch.sample_id, torch.Tensor):
            batch.sample_id = batch.sample_id.tolist()
        return batch

    def _teacher_features(self, batch: Batch) -> TeacherFeatures | None:
        """The teacher's features for a training or validation batch: from the feature cache where it
        has them (None, the model computes them, without a cache or during the sanity check)."""
        if self.feature_cache is None or self.trainer.sanity_checking:
            return None
        return self.feature_cache(self.model.teacher, batch.image, batch.sample_id)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        teacher, student = self.model.distill(batch.image, self._teacher_features(batch))
        loss = self.loss(teacher.amplified, student)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if self.validate_on_test:
            self.validate_on_test_batch(batch)
            return
        names = self._component_maps()
        out = self.model(batch.image, maps=names, teacher_features=self._teacher_features(batch))
        loss = self.loss(out.teacher_features.amplified, out.student)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch))
        self._val_maps.append({name: maps.detach() for name, maps in out.maps.items()})

    def on_validation_epoch_end(self) -> None:
        if self.validate_on_test and not self.trainer.sanity_checking:
            # the authors' protocol may keep this epoch (its callback saves it next): with thresholds
            self._calibrate_on_train()
        super().on_validation_epoch_end()
        if self._val_maps:
            self._calibrate(self._val_maps, "val")
            self._val_maps.clear()

    def _component_maps(self) -> list[MapName]:
        """The maps of `_COMPONENTS` that the model computes: what validation and calibration measure."""
        return [name for name in self.model.map_names() if name in _COMPONENTS]

    def _calibrate(self, batches: list[dict[MapName, torch.Tensor]], split: NormalSplit) -> None:
        """From normal images' maps (all ranks): the fused map's statistics and weight, then the thresholds:
        on the image scores, and on the output map's maxima (so that the same share of normal images
        shows a mask). `split` says which normal images they are."""
        maps = {name: gather_uneven(torch.cat([b[name] for b in batches])) for name in batches[0]}
        fused = self.model.fused_map
        if MapName.GATE in maps:
            anomalous = None if fused.fixed_weight is not None else self._anomalous_gate(split)
            if anomalous is not None or fused.fixed_weight is not None or self.output_map is MapName.FUSED:
                fused.calibrate(maps[MapName.AAND], maps[MapName.GATE], anomalous)
                maps[MapName.FUSED] = fused(maps[MapName.AAND], maps[MapName.GATE])
        for threshold, name in (
            (self.model.threshold, self.output_map.scored_by),
            (self.model.map_threshold, self.output_map),
        ):
            scores = image_scores(maps[name]).float()
            threshold.fill_(torch.quantile(scores, self.threshold_quantile).item())

    def _anomalous_gate(self, split: NormalSplit) -> torch.Tensor | None:
        """Gate-map values inside `gate_draws` synthetic anomalies on each image of the split (the
        validation images are held out from stage 1's training), for the weight of `fused_weight=auto`.
        Measured once per fit and split: the teacher, so the gate, does not change in stage 2. None
        without calibration data that can synthesise (then only a fixed weight can be used)."""
        if split not in self._anomalous_gate_values:
            loader = (
                None
                if self.calibration_data is None
                else self.calibration_data.synthetic_anomalies(split, self.gate_draws)
            )
            if loader is None:
                return None
            self._anomalous_gate_values[split] = anomalous_gate_values(self.model, loader, self.device)
        return self._anomalous_gate_values[split]

    def on_train_epoch_end(self) -> None:
        """The feature cache's checks of this epoch (see `TeacherFeatureCache.verify`); then, in the last
        epoch (or the one the authors' protocol stops at) without normal validation images, the
        thresholds from the train images."""
        if self.feature_cache is not None:
            self.feature_cache.verify()
        last_epoch = self.current_epoch + 1 >= self.trainer.max_epochs or self.trainer.should_stop
        stale = self.validate_on_test and self._train_calibrated_at != self.current_epoch
        if last_epoch and (stale or torch.isnan(self.model.threshold)):
            self._calibrate_on_train()

    def _calibrate_on_train(self) -> None:
        """Thresholds (and the fused map's statistics) from the training images, when no normal
        validation images are held out."""
        if self.calibration_data is None:
            return
        names = self._component_maps()
        self.model.eval()  # the student's BatchNorm must not update on these images
        with torch.no_grad():
            maps = [
                {k: v.detach() for k, v in self.model(batch.image.to(self.device), maps=names).maps.items()}
                for batch in self.calibration_data.normal_images("train")
            ]
        self.model.train()
        self._calibrate(maps, "train")
        self._train_calibrated_at = self.current_epoch
        rank_zero_warn(
            f"No normal validation images: the stored thresholds are the {self.threshold_quantile} "
            "quantile of the training images' scores and maps, and the fused map's statistics come from "
            "them, which the student has fitted (expect more false alarms); hold out images with "
            "datamodule.val_fraction > 0 for better ones."
        )

    def selection_score(self, results: dict[str, torch.Tensor]) -> torch.Tensor:
        """The authors keep the stage-2 epoch with the best sum of `selection_metrics` on the test set,
        each rounded to 3 digits as their loop prints them (image + pixel AUROC; their ViT: image only)."""
        return sum(results[name].round(decimals=3) for name in self.selection_metrics)

    def output(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        return out.map, out.score

    def predict_step(self, batch: Batch, batch_idx: int) -> AANDOutput:
        """`Trainer.predict`: the model's output for the batch (its `score` and `map`; `inference.py`'s
        `Inferencer` adds the decision, normalised score and mask)."""
        return self.model(batch.image)


@torch.no_grad()
def anomalous_gate_values(model: AAND, loader: Iterable[Batch], device: torch.device) -> torch.Tensor:
    """Gate-map values inside the masks of synthetic anomalies (the teacher alone runs), on the CPU."""
    values = []
    for batch in loader:
        images, masks = batch.image.to(device), batch.mask.to(device) > 0.5
        gate, _ = model.anomaly_map.gate_map(model.teacher(images).gates, tuple(images.shape[-2:]))
        values.append(gate[masks].cpu())
    return torch.cat(values)
