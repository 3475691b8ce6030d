import pytest
import torch

from aand_lightning.models.losses import (
    AmplificationLoss,
    CosineDistillationLoss,
    HardKnowledgeDistillationLoss,
    amplification_loss,
    focal_loss,
    random_subset,
)
from aand_lightning.models.raa import forced_gate
from aand_lightning.models.teacher import TeacherFeatures


def test_focal_loss_matches_formula():
    p = torch.tensor([0.9, 0.2, 0.6])
    y = torch.tensor([1.0, 0.0, 1.0])
    expected = torch.stack([
        -0.8 * 0.1**2 * torch.log(torch.tensor(0.9)),
        -0.2 * 0.2**2 * torch.log(torch.tensor(0.8)),
        -0.8 * 0.4**2 * torch.log(torch.tensor(0.6)),
    ]).mean()  # fmt: skip
    assert torch.isclose(focal_loss(p, y), expected)


def test_amplification_loss_zero_without_anomalies_and_positive_when_too_similar():
    torch.manual_seed(0)
    features = torch.randn(2, 8, 4, 4)
    none = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    assert amplification_loss(features, features * 3, none, ~none).item() == 0.0

    anomalous = none.clone()
    anomalous[0, 0, 1, 1] = True
    # amplified == vanilla: S_A − (S − 0.3) = 0.3 > 0 everywhere → loss = 0.3 exactly
    assert torch.isclose(amplification_loss(features, features, anomalous, ~anomalous), torch.tensor(0.3))
    # amplified anomaly = −(normal direction) makes it far less similar → hinge inactive for most pairs
    pushed = features.clone()
    pushed[0, :, 1, 1] = -features[0, :, 0, 0]
    only_one_normal = none.clone()
    only_one_normal[0, 0, 0, 0] = True
    assert amplification_loss(features, pushed, anomalous, only_one_normal).item() == 0.0


def test_amplification_loss_respects_sample_limits():
    torch.manual_seed(0)
    features = torch.randn(1, 4, 10, 10)
    anomalous = torch.rand(1, 1, 10, 10) > 0.5
    gen = torch.Generator().manual_seed(0)
    value = amplification_loss(
        features, features, anomalous, ~anomalous, max_normal=3, max_anomalous=2, generator=gen
    )
    assert torch.isclose(value, torch.tensor(0.3))


def test_random_subset_picks_only_selected_uniformly():
    selected = torch.zeros(200, dtype=torch.bool)
    selected[::2] = True
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(200)
    for _ in range(400):
        index, valid = random_subset(selected, 10, gen)
        assert valid.all() and selected[index].all() and index.unique().numel() == 10
        counts[index] += 1
    assert counts[1::2].sum() == 0
    assert counts[::2].min() > 15 and counts[::2].max() < 65  # Binomial(400, 0.1): 40 ± 6


def test_random_subset_with_fewer_selected_than_limit_marks_the_rest_invalid():
    selected = torch.zeros(10, dtype=torch.bool)
    selected[[1, 4, 7]] = True
    index, valid = random_subset(selected, 5)
    assert index.numel() == 5 and valid.sum() == 3
    assert sorted(index[valid].tolist()) == [1, 4, 7]


def test_stage1_loss_combines_levels_with_weights():
    torch.manual_seed(0)
    features = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    gates = [torch.rand(2, 1, 8, 8), torch.rand(2, 1, 4, 4)]
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, :16, :16] = 1
    loss = AmplificationLoss()
    targets = [forced_gate(mask, f.shape[-2:]) for f in features]
    out = loss(TeacherFeatures(features, features, gates, targets))
    focal = sum(focal_loss(g, t) for g, t in zip(gates, targets, strict=True))
    assert torch.isclose(out["focal"], focal)
    assert torch.isclose(out["amplification"], torch.tensor(0.6))  # 0.3 per level, amplified == vanilla
    assert torch.isclose(out["loss"], focal + 0.1 * 0.6)


def test_normal_positions_need_the_pooled_foreground_above_the_mask_threshold():
    """A level cell 40 % covered by foreground is normal at the authors' threshold 0.3 (not at 0.5)."""
    features = [torch.randn(1, 8, 2, 2, generator=torch.Generator().manual_seed(0))]
    gates = [torch.full((1, 1, 2, 2), 0.5)]
    mask = torch.zeros(1, 1, 10, 10)
    mask[..., :5, :5] = 1  # top-left cell anomalous
    foreground = torch.zeros(1, 1, 10, 10)
    foreground[..., :2, 5:] = 1  # top-right cell: 10 of 25 pixels, pooled 0.4
    out = AmplificationLoss()(
        TeacherFeatures(features, features, gates, [forced_gate(mask, (2, 2))]), foreground
    )
    assert torch.isclose(out["amplification"], torch.tensor(0.3))  # one valid pair, amplified == vanilla
    targets = [forced_gate(mask, (2, 2), threshold=0.5)]
    strict = AmplificationLoss(mask_threshold=0.5)(
        TeacherFeatures(features, features, gates, targets), foreground
    )
    assert strict["amplification"].item() == 0.0  # no normal position left


def test_hkd_picks_exactly_the_k_hardest_patches():
    teacher = torch.zeros(1, 2, 2, 2)
    teacher[:, 0] = 1.0  # every teacher patch points along channel 0
    student = torch.zeros(1, 2, 2, 2)
    angles = torch.tensor([[0.0, 0.5], [1.0, 1.5]])  # patch distances 1 − cos(angle)
    student[0, 0], student[0, 1] = torch.cos(angles), torch.sin(angles)
    distances = 1 - torch.cos(angles).flatten()
    hardest_two = distances.sort(descending=True).values[:2].mean()
    global_term = 1 - torch.nn.functional.cosine_similarity(teacher.flatten(1), student.flatten(1)).mean()

    hkd = HardKnowledgeDistillationLoss(k_hard=2)
    assert torch.isclose(hkd([teacher], [student]), hardest_two + global_term, atol=1e-6)
    assert torch.isclose(CosineDistillationLoss()([teacher], [student]), global_term, atol=1e-6)
    # ratio 0.75 of 4 patches → 3 hardest
    ratio = HardKnowledgeDistillationLoss(k_hard_ratio=0.75)
    hardest_three = distances.sort(descending=True).values[:3].mean()
    assert torch.isclose(ratio([teacher], [student]), hardest_three + global_term, atol=1e-6)


def test_hkd_rejects_bad_k():
    with pytest.raises(ValueError, match="loss=rd"):
        HardKnowledgeDistillationLoss(k_hard=0)
    with pytest.raises(ValueError):
        HardKnowledgeDistillationLoss(k_hard_ratio=1.5)
