import pytest
import torch
import torch.nn.functional as F

from aand_lightning.config import config_file
from aand_lightning.models.build import build_teacher
from aand_lightning.models.losses import AmplificationLoss, amplification_loss, focal_loss
from aand_lightning.models.raa import forced_gate

RESNET18 = {**config_file("backbone/resnet18.yaml"), "weights": "none"}
RAA = {**config_file("raa/default.yaml"), "num_prototypes": 4}


def _stage1_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 64, 64, generator=gen)
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, :, 8:42, 8:42] = 1  # half-covered border cells: in at threshold 0.3, out at 0.9
    foreground = torch.ones(2, 1, 64, 64)
    foreground[1, :, :, :16] = 0
    return images, mask, foreground


def test_the_forced_gates_come_with_the_mask_and_forcing_puts_them_in_the_residual():
    torch.manual_seed(0)
    teacher = build_teacher(RESNET18, RAA).eval()
    images, mask, _ = _stage1_inputs()
    plain = teacher(images)
    assert plain.forced_gates is None
    unforced = teacher(images, mask)  # stage-1 validation: targets, predicted gates in the residual
    forced = teacher(images, mask, forcing=True)
    for level, (f, g) in enumerate(zip(forced.features, forced.forced_gates, strict=True)):
        assert torch.equal(g, forced_gate(mask, f.shape[-2:], 0.3))
        assert torch.equal(unforced.forced_gates[level], g)
        assert torch.equal(unforced.amplified[level], plain.amplified[level])
        assert torch.equal(forced.gates[level], plain.gates[level])  # predicted gates either way
        assert not torch.equal(forced.amplified[level], plain.amplified[level])
    assert teacher(images, mask, mask_threshold=0.9).forced_gates[0].sum() < forced.forced_gates[0].sum()
    with pytest.raises(ValueError, match="mask"):
        teacher(images, forcing=True)


def test_the_stage1_loss_of_one_forward_equals_the_four_step_computation():
    """Backbone, level targets, amplify, loss (which pooled the targets again): the old stage-1 step."""
    torch.manual_seed(0)
    teacher = build_teacher(RESNET18, RAA)
    loss = AmplificationLoss(max_normal=40, max_anomalous=20)
    images, mask, foreground = _stage1_inputs()

    with torch.no_grad():
        features = teacher.encoder(images)
    targets = [forced_gate(mask, f.shape[-2:], loss.mask_threshold) for f in features]
    out = teacher.amplify(features, targets)
    generator = torch.Generator().manual_seed(3)
    focal = amp = torch.zeros(())
    for f, fa, gate, target in zip(features, out.amplified, out.gates, targets, strict=True):
        focal = focal + focal_loss(gate, target)
        normal = (target == 0) & (F.adaptive_avg_pool2d(foreground, f.shape[-2:]) > loss.mask_threshold)
        amp = amp + amplification_loss(f, fa, target > 0, normal, 0.3, 40, 20, generator)
    expected = 1.0 * focal + 0.1 * amp

    one = teacher(images, mask, forcing=True, mask_threshold=loss.mask_threshold)
    losses = loss(one, foreground, torch.Generator().manual_seed(3))
    assert amp > 0 and focal > 0
    assert torch.equal(losses["focal"], focal) and torch.equal(losses["amplification"], amp)
    assert torch.equal(losses["loss"], expected)
