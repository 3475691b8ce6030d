from functools import partial

import torch

from aand_lightning.models.build import build_aand
from aand_lightning.models.losses import HardKnowledgeDistillationLoss
from aand_lightning.stages import NormalityDistillation

RESNET18 = {"name": "resnet18", "weights": "none",
            "student": {"block": "basic", "fusion_blocks": 2, "decoder_layers": [2, 2, 2]}}  # fmt: skip


def test_stage2_step_updates_only_student_and_sets_threshold(loader, one_step_trainer):
    torch.manual_seed(0)
    model = build_aand(RESNET18, {"num_prototypes": 4}, {"sigma": 4.0})
    module = NormalityDistillation(model, HardKnowledgeDistillationLoss(), partial(torch.optim.Adam, lr=1e-3))
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in model.student.state_dict().items()}

    one_step_trainer().fit(module, train_dataloaders=loader, val_dataloaders=loader)

    assert all(torch.equal(teacher_before[k], v) for k, v in model.teacher.state_dict().items())
    assert any(not torch.equal(student_before[k], v) for k, v in model.student.state_dict().items())
    assert torch.isfinite(model.threshold)
