from functools import partial

import pytest
import torch

from aand_lightning.config import config_file
from aand_lightning.models.build import build_teacher
from aand_lightning.models.losses import AmplificationLoss
from aand_lightning.models.teacher import Teacher
from aand_lightning.stages import AnomalyAmplification

RESNET18, RAA = (
    {"name": "resnet18", "weights": "none", "family": "cnn"},
    {**config_file("raa/default.yaml"), "num_prototypes": 4},
)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_stage1_step_updates_only_raa(loader, one_step_trainer):
    torch.manual_seed(0)
    teacher = build_teacher(RESNET18, RAA)
    module = AnomalyAmplification(teacher, AmplificationLoss(), partial(torch.optim.Adam, lr=1e-2))
    backbone_before = _snapshot(teacher.encoder)
    raa_before = _snapshot(teacher.raa)
    assert any("running_mean" in k for k in backbone_before)

    one_step_trainer().fit(module, train_dataloaders=loader)

    backbone_after = teacher.encoder.state_dict()
    assert all(
        torch.equal(backbone_before[k], backbone_after[k]) for k in backbone_before
    )  # weights + BN stats
    raa_after = teacher.raa.state_dict()
    changed = [k for k in raa_before if not torch.equal(raa_before[k], raa_after[k])]
    assert any("prototypes" in k for k in changed) and any("residual" in k for k in changed)


def test_stage1_test_pass_reports_metrics(loader, one_step_trainer):
    teacher = build_teacher(RESNET18, RAA)
    module = AnomalyAmplification(teacher, AmplificationLoss(), partial(torch.optim.Adam, lr=1e-3))
    one_step_trainer().test(module, dataloaders=loader)
    assert set(module.test_results) >= {"image_auroc", "pixel_auroc", "aupro"}
    assert 0.0 <= module.test_results["image_auroc"] <= 1.0


@pytest.mark.parametrize("forcing", [True, False])
def test_stage1_trains_on_the_forced_or_the_predicted_gates(loader, one_step_trainer, monkeypatch, forcing):
    """`amplify.teacher_forcing`: the CNN recipe trains the residual on the synthetic mask, the authors'
    ViT variant on the gate the RAA predicts."""
    seen, forward = [], Teacher.forward

    def spy(self, images, mask=None, forcing=False, mask_threshold=0.3):
        seen.append((mask is not None, forcing))
        return forward(self, images, mask, forcing, mask_threshold)

    monkeypatch.setattr(Teacher, "forward", spy)
    module = AnomalyAmplification(
        build_teacher(RESNET18, RAA), AmplificationLoss(), partial(torch.optim.Adam, lr=1e-2),
        teacher_forcing=forcing,
    )  # fmt: skip
    one_step_trainer().fit(module, train_dataloaders=loader)
    assert seen == [(True, forcing)]
