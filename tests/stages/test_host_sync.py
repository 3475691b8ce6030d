"""Training steps must not make the host wait for the device (no data-dependent shapes, no .item()).

On CPU nothing waits, so the test records the aten ops of a Lightning training step (forward, loss,
logging, backward) and fails on the ops that force a device→host sync on an accelerator. The optimizer
step is left out: torch's Adam keeps its step counts on the host, so its `.item()` waits for nothing.
"""

from functools import partial

import lightning as L
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from aand_lightning.config import config_file
from aand_lightning.models.build import build_aand, build_teacher
from aand_lightning.models.losses import (
    AmplificationLoss,
    CosineDistillationLoss,
    HardKnowledgeDistillationLoss,
)
from aand_lightning.stages import AnomalyAmplification, NormalityDistillation

SYNCING = {
    torch.ops.aten.nonzero.default,
    torch.ops.aten._local_scalar_dense.default,  # .item(), int(), bool() of a tensor
    torch.ops.aten.masked_select.default,
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.equal.default,
    torch.ops.aten._unique2.default,
}

RAA, ANOMALY_MAP = config_file("raa/default.yaml"), config_file("train.yaml")["anomaly_map"]


class SyncRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.syncing: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        bool_index = func is torch.ops.aten.index.Tensor and any(
            i is not None and i.dtype == torch.bool for i in args[1]
        )
        if func in SYNCING or bool_index:
            self.syncing.append(str(func))
        return func(*args, **(kwargs or {}))


class RecordTrainingStep(L.Callback):
    """Records from the start of a training batch to the end of its backward pass."""

    def __init__(self) -> None:
        self.recorder = SyncRecorder()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.recorder.__enter__()

    def on_after_backward(self, trainer, pl_module) -> None:
        self.recorder.__exit__(None, None, None)


def _stage(name: str, backbone: dict, skip_image: torch.Tensor) -> L.LightningModule:
    torch.manual_seed(0)
    adam = partial(torch.optim.Adam, lr=1e-3)
    if name == "amplify":
        teacher = build_teacher(backbone, {**RAA, "num_prototypes": 4})
        return AnomalyAmplification(teacher, AmplificationLoss(max_normal=40, max_anomalous=20), adam)
    raa = name in ("distill", "distill_cached")
    loss = HardKnowledgeDistillationLoss() if raa else CosineDistillationLoss()
    model = build_aand(backbone, {**RAA, "num_prototypes": 4, "enabled": raa}, ANOMALY_MAP)
    # the feature cache is on, as the entry point sets it up: items without a sample id pass it by
    return NormalityDistillation(model, loss, adam, skip_image=skip_image)


@pytest.mark.parametrize("stage", ["amplify", "distill", "distill_rd", "distill_cached"])
def test_training_step_has_no_host_sync(stage, loader, indexed_loader, resnet18_backbone, tmp_path):
    callback = RecordTrainingStep()
    cached = stage == "distill_cached"  # two epochs: the second reads every item from the cache
    data = indexed_loader if cached else loader
    skip_image = getattr(data.dataset, "skip_image", torch.zeros(len(data.dataset), dtype=torch.bool))
    trainer = L.Trainer(
        max_steps=4 if cached else 2, accelerator="cpu", logger=False, enable_checkpointing=False,
        callbacks=[callback], enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(_stage(stage, resnet18_backbone, skip_image), train_dataloaders=data)
    assert callback.recorder.syncing == []
    assert not cached or indexed_loader.dataset.skip_image.all()


def test_recorder_catches_a_sync():
    """The test above can fail: the old L_amp sampler (bool mask → nonzero) is caught."""
    with SyncRecorder() as recorder:
        x = torch.randn(10)
        x[x > 0].sum().item()
    assert "aten.nonzero.default" in recorder.syncing or "aten.index.Tensor" in recorder.syncing
    assert "aten._local_scalar_dense.default" in recorder.syncing
