import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from aand_lightning.metrics.anomaly_metrics import AnomalyMetrics


def _rank_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann–Whitney U with tied ranks averaged."""
    ranks = rankdata(scores)
    n_pos, n_neg = labels.sum(), (1 - labels).sum()
    return (ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@pytest.mark.parametrize("seed", [0, 1])
def test_auroc_matches_rank_formula_on_raw_scores(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(labels * 0.7, 1.0) * 3 + 5, 1)  # outside [0, 1], with ties
    metric = AnomalyMetrics(compute_pixel=False)
    metric.update(torch.from_numpy(scores), torch.from_numpy(labels))
    assert metric.compute()["image_auroc"].item() == pytest.approx(_rank_auroc(scores, labels), abs=1e-6)


def test_batches_accumulate_like_one_batch_and_pixel_keys():
    rng = np.random.default_rng(0)
    maps = torch.from_numpy(rng.random((6, 16, 16)).astype(np.float32))
    masks = torch.zeros(6, 16, 16, dtype=torch.bool)
    masks[3:, 4:9, 4:9] = True
    maps[masks] += 0.5
    scores, labels = maps.flatten(1).amax(1), torch.tensor([0, 0, 0, 1, 1, 1])

    whole = AnomalyMetrics()
    whole.update(scores, labels, maps, masks)
    parts = AnomalyMetrics()
    for i in range(0, 6, 2):
        parts.update(scores[i : i + 2], labels[i : i + 2], maps[i : i + 2], masks[i : i + 2])
    a, b = whole.compute(), parts.compute()
    assert set(a) == {"image_auroc", "image_f1_max", "pixel_auroc", "pixel_f1_max", "aupro", "per_image_pro"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    pixel_auroc = _rank_auroc(maps.flatten().numpy(), masks.flatten().numpy().astype(int))
    assert a["pixel_auroc"].item() == pytest.approx(pixel_auroc, abs=1e-6)

    image_only = AnomalyMetrics(compute_pixel=False)
    image_only.update(scores, labels, maps, masks)
    assert set(image_only.compute()) == {"image_auroc", "image_f1_max"}


def test_f1_max_hand_case():
    # separable → 1.0; then a normal 0.85 outranks an anomaly: best is t = 0.8 → TP 2, FP 1 → F1 = 0.8
    metric = AnomalyMetrics(compute_pixel=False)
    metric.update(torch.tensor([0.1, 0.6, 0.8, 0.9, 0.3]), torch.tensor([0, 0, 1, 1, 0]))
    assert metric.compute()["image_f1_max"].item() == pytest.approx(1.0)
    metric = AnomalyMetrics(compute_pixel=False)
    metric.update(torch.tensor([0.1, 0.85, 0.8, 0.9, 0.3]), torch.tensor([0, 0, 1, 1, 0]))
    assert metric.compute()["image_f1_max"].item() == pytest.approx(0.8)


def test_one_class_gives_nan_with_warning():
    metric = AnomalyMetrics(compute_pixel=False)
    metric.update(torch.rand(4), torch.zeros(4, dtype=torch.long))
    with pytest.warns(UserWarning, match="Only one class"):
        assert torch.isnan(metric.compute()["image_auroc"])
