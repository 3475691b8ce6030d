import torch

from aand_lightning.models.teacher import Teacher


def test_levels_frozen_and_bn_stays_eval():
    teacher = Teacher("resnet18", weights="none")
    assert teacher.channels == [64, 128, 256]
    assert not any(p.requires_grad for p in teacher.parameters())
    parent = torch.nn.Sequential(teacher)
    parent.train()
    assert all(not m.training for m in teacher.backbone.modules())
    features = teacher(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in features] == [16, 8, 4]


def test_efficientnet_teacher_drops_unused_blocks():
    teacher = Teacher("tf_efficientnet_lite0", weights="none")
    assert teacher.channels == [24, 40, 112]
    assert len(teacher.backbone.blocks) == 5
    assert [f.shape[-1] for f in teacher(torch.randn(1, 3, 64, 64))] == [16, 8, 4]
