import torch

from aand_lightning.models.encoder import Encoder


def test_levels_frozen_and_bn_stays_eval():
    encoder = Encoder("resnet18", weights="none")
    assert encoder.channels == [64, 128, 256]
    assert not any(p.requires_grad for p in encoder.parameters())
    parent = torch.nn.Sequential(encoder)
    parent.train()
    assert all(not m.training for m in encoder.backbone.modules())
    features = encoder(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in features] == [16, 8, 4]


def test_efficientnet_encoder_drops_unused_blocks():
    encoder = Encoder("tf_efficientnet_lite0", weights="none")
    assert encoder.channels == [24, 40, 112]
    assert len(encoder.backbone.blocks) == 5
    assert [f.shape[-1] for f in encoder(torch.randn(1, 3, 64, 64))] == [16, 8, 4]
