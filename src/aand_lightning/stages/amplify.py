"""Stage 1: train the RAA modules of a frozen teacher on synthetic anomalies."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MeanMetric

from aand_lightning.data.batch import Batch
from aand_lightning.data.preprocessing import Preprocessing
from aand_lightning.metrics.gate_precision import gate_precision
from aand_lightning.models.anomaly_map import AnomalyMapGenerator, MapName, image_scores
from aand_lightning.models.losses import AmplificationLoss
from aand_lightning.models.teacher import Teacher, TeacherFeatures, require_raa
from aand_lightning.stages.base import AnomalyStage, OptimizerFactory, SchedulerFactory


class AnomalyAmplification(AnomalyStage):
    """Trains only the RAA modules; the teacher backbone stays frozen with BN in eval mode.

    Training forces the gates (the residual gate is the ground-truth synthetic mask) unless
    `teacher_forcing` is off (the authors' ViT variant trains on its predicted gates); validation and
    test use the predicted gate. Its output map is the gates themselves (mean of the upsampled level
    gates): a direct measure of how well RAA finds anomalies. The test pass also reports the
    amplification map (encoder against amplified features), what the authors test stage 1 with.
    """

    stage_name = "amplify"
    synthetic_train = True
    output_map = MapName.GATE

    def __init__(
        self,
        teacher: Teacher,
        loss: AmplificationLoss,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        anomaly_map: AnomalyMapGenerator | None = None,
        preprocessing: Preprocessing | None = None,
        fpr_limit: float = 0.3,
        validate_on_test: bool = False,
        seed: int = 0,
        teacher_forcing: bool = True,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(
            optimizer, scheduler, preprocessing, fpr_limit, validate_on_test, channels_last, compile
        )
        self.seed = seed
        self.teacher_forcing = teacher_forcing
        require_raa(teacher.amplifies, stage1=True)
        self.teacher = teacher
        self.loss = loss
        self.anomaly_map = anomaly_map or AnomalyMapGenerator()
        self.gate_precision = MeanMetric()  # the authors' stage-1 selection score, per test image

    def trainable(self) -> nn.Module:
        return self.teacher.raa

    def compile_targets(self) -> list[nn.Module]:
        return [self.teacher.encoder, *self.teacher.raa]

    def _loss(
        self, batch: Batch, forcing: bool, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        out = self.teacher(batch.image, batch.mask, forcing, self.loss.mask_threshold)
        return self.loss(out, batch.foreground, generator)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        # position subsets of L_amp drawn on the device from (seed, step): identical after resuming
        generator = torch.Generator(self.device).manual_seed(self.seed * 1_000_003 + self.global_step)
        losses = self._loss(batch, forcing=self.teacher_forcing, generator=generator)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=len(batch))
        return losses["loss"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if self.validate_on_test:
            self.validate_on_test_batch(batch)
            return
        losses = self._loss(batch, forcing=False)
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, sync_dist=True, batch_size=len(batch))

    def output(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.anomaly_map.gate_map(self.teacher(images).gates, tuple(images.shape[-2:]))

    def map_names(self) -> list[MapName]:
        return [MapName.GATE, MapName.AMPLIFICATION]

    def _maps(self, out: TeacherFeatures, size: tuple[int, int]) -> dict[MapName, torch.Tensor]:
        return {
            MapName.GATE: self.anomaly_map.gate_map(out.gates, size)[0],
            MapName.AMPLIFICATION: self.anomaly_map(out.features, out.amplified, size)[0],
        }

    def named_maps(self, images: torch.Tensor) -> dict[MapName, torch.Tensor]:
        return self._maps(self.teacher(images), tuple(images.shape[-2:]))

    def validate_on_test_batch(self, batch: Batch) -> None:
        """The authors' readings: the amplification map's metrics (their stopping metric is its image
        AUROC) and the gate precision of each test image (their selection score)."""
        out = self.teacher(batch.image)
        maps = self.anomaly_map(out.features, out.amplified, tuple(batch.image.shape[-2:]))[0]
        self.gate_precision.update(
            gate_precision(out.gates, batch.mask, mask_threshold=self.loss.mask_threshold)
        )
        self.val_metrics.update(image_scores(maps), batch.label, maps[:, 0], batch.mask[:, 0] > 0.5)

    def selection_score(self, results: dict[str, torch.Tensor]) -> torch.Tensor:
        """The authors keep the stage-1 epoch with the best mean gate precision on the test set."""
        precision = self.gate_precision.compute()
        self.gate_precision.reset()
        return precision
