from functools import partial

import torch

from aand_lightning.models.build import build_aand
from aand_lightning.models.losses import HardKnowledgeDistillationLoss
from aand_lightning.stages import NormalityDistillation


def test_stage2_step_updates_only_student_and_sets_threshold(loader, one_step_trainer, resnet18_backbone):
    torch.manual_seed(0)
    model = build_aand(resnet18_backbone, {"num_prototypes": 4}, {"sigma": 4.0})
    module = NormalityDistillation(model, HardKnowledgeDistillationLoss(), partial(torch.optim.Adam, lr=1e-3))
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in model.student.state_dict().items()}

    one_step_trainer().fit(module, train_dataloaders=loader, val_dataloaders=loader)

    assert all(torch.equal(teacher_before[k], v) for k, v in model.teacher.state_dict().items())
    assert any(not torch.equal(student_before[k], v) for k, v in model.student.state_dict().items())
    assert torch.isfinite(model.threshold)
