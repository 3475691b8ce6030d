"""AnomalyMetrics: exact values, batch-independence, and which keys it reports."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from aand_lightning.metrics import AnomalyMetrics, PixelCoverage
from aand_lightning.metrics.aupro import aupro, per_image_pro

IMAGE_KEYS = {"image_auroc", "image_f1_max"}
PIXEL_KEYS = {"pixel_auroc", "pixel_f1_max", "aupro", "per_image_pro"}


def mann_whitney_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUROC as the Mann–Whitney U statistic, tied scores given their average rank."""
    ranks = rankdata(scores)
    positives, negatives = int(labels.sum()), int((1 - labels).sum())
    u = ranks[labels == 1].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def pixel_test_set(seed: int, images: int = 6, size: int = 16):
    """Maps, bool masks (first two images normal), image labels and image scores (max of the map)."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(images, size, size, dtype=torch.bool)
    for image in range(2, images):
        top, left = torch.randint(0, size - 4, (2,), generator=generator).tolist()
        masks[image, top : top + 4, left : left + 3] = True
    maps = torch.rand(images, size, size, generator=generator) + 0.4 * masks
    labels = masks.flatten(1).any(dim=1).long()
    return maps, masks, labels, maps.flatten(1).amax(dim=1)


def test_image_auroc_matches_mann_whitney_on_raw_scores_with_ties() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 30 + [1] * 20)
    scores = np.round(rng.normal(3.0 + labels, 2.0), 1)  # outside [0, 1], with ties
    metric = AnomalyMetrics()
    metric.update(torch.from_numpy(scores).float(), torch.from_numpy(labels))
    result = metric.compute()
    assert result["image_auroc"].item() == pytest.approx(mann_whitney_auroc(scores, labels), abs=1e-6)


def test_close_large_scores_are_not_merged() -> None:
    scores = torch.tensor([10.0, 10.000001, 10.000002, 10.000003])
    metric = AnomalyMetrics()
    metric.update(scores, torch.tensor([0, 1, 0, 1]))
    assert metric.compute()["image_auroc"].item() == pytest.approx(0.75)


def test_f1_max_on_hand_made_case() -> None:
    # Thresholds 0.8 / 0.4 / 0.35 / 0.1 give F1 2/3, 4/7, 4/5, 2/3: the best is 0.8.
    metric = AnomalyMetrics()
    metric.update(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
    assert metric.compute()["image_f1_max"].item() == pytest.approx(0.8)


def test_pixel_metrics_match_their_definitions() -> None:
    maps, masks, labels, scores = pixel_test_set(1)
    metric = AnomalyMetrics(fpr_limit=0.2)
    metric.update(scores, labels, maps, masks)
    result = metric.compute()
    pixel_auroc = mann_whitney_auroc(maps.flatten().numpy(), masks.flatten().long().numpy())
    assert result["pixel_auroc"].item() == pytest.approx(pixel_auroc, abs=1e-6)
    assert result["aupro"].item() == pytest.approx(aupro(maps, masks, 0.2), abs=1e-6)
    assert result["per_image_pro"].item() == pytest.approx(per_image_pro(maps, masks, 0.2), abs=1e-6)
    assert 0.5 < result["pixel_f1_max"].item() <= 1.0


def test_several_batches_equal_one_batch() -> None:
    maps, masks, labels, scores = pixel_test_set(2)
    whole, batched = AnomalyMetrics(), AnomalyMetrics()
    whole.update(scores, labels, maps, masks)
    for start in range(0, len(scores), 4):
        part = slice(start, start + 4)
        batched.update(scores[part], labels[part], maps[part], masks[part].float())
    expected, result = whole.compute(), batched.compute()
    assert set(result) == IMAGE_KEYS | PIXEL_KEYS
    for key, value in expected.items():
        assert result[key].item() == pytest.approx(value.item(), abs=1e-7), key


def test_keys_with_and_without_pixel_data() -> None:
    maps, masks, labels, scores = pixel_test_set(3)
    image_only, pixels_off = AnomalyMetrics(), AnomalyMetrics(compute_pixel=False)
    image_only.update(scores, labels)
    pixels_off.update(scores, labels, maps, masks)
    assert set(image_only.compute()) == IMAGE_KEYS
    assert set(pixels_off.compute()) == IMAGE_KEYS


def test_one_class_gives_nan_and_a_warning() -> None:
    maps, _, _, scores = pixel_test_set(4)
    metric = AnomalyMetrics()
    metric.update(scores, torch.zeros(len(scores)), maps, torch.zeros(maps.shape, dtype=torch.bool))
    with pytest.warns(UserWarning, match="Only one class"):
        result = metric.compute()
    assert all(math.isnan(value.item()) for value in result.values())


def test_inconsistent_pixel_data_raises() -> None:
    maps, masks, labels, scores = pixel_test_set(5)
    metric = AnomalyMetrics()
    with pytest.raises(ValueError, match="together"):
        metric.update(scores, labels, maps)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        metric.update(scores, labels, maps[:2], masks[:2])
    metric.update(scores, labels, maps, masks)
    metric.update(scores, labels)
    with pytest.raises(ValueError, match="every update"):
        metric.compute()


def test_pixel_metrics_leave_out_images_whose_mask_is_unknown() -> None:
    """Mixed case: image metrics over every image, pixel metrics over the images with known masks only
    (an unknown mask is stored as all zero, which would count its defect as normal pixels)."""
    maps, masks, labels, scores = pixel_test_set(6, images=8)
    known = torch.tensor([True, True, True, False, True, False, True, True])
    unknown_masks = masks.clone()
    unknown_masks[~known] = False  # what the dataset gives for an anomalous image without a mask file
    metric, subset = AnomalyMetrics(), AnomalyMetrics()
    metric.update(scores[:5], labels[:5], maps[:5], unknown_masks[:5], known[:5])
    metric.update(scores[5:], labels[5:], maps[5:], unknown_masks[5:], known[5:])
    subset.update(scores[known], labels[known], maps[known], masks[known])
    result, expected = metric.compute(), subset.compute()
    image_only = AnomalyMetrics()
    image_only.update(scores, labels)
    assert result["image_auroc"] == image_only.compute()["image_auroc"]
    for key in PIXEL_KEYS:
        assert result[key].item() == expected[key].item(), key
    assert metric.coverage() == PixelCoverage(
        images=8, pixel_images=6, anomalous_images=6, anomalous_with_mask=4
    )
    assert metric.coverage().note == (
        "Pixel metrics cover the 6 of 8 test images whose masks are known: 2 of the 6 anomalous images "
        "have no mask."
    )


def test_no_anomalous_mask_gives_image_metrics_only_and_says_why() -> None:
    maps, masks, labels, scores = pixel_test_set(7)
    known = labels == 0
    metric = AnomalyMetrics()
    metric.update(scores, labels, maps, torch.zeros_like(masks), known)
    result = metric.compute()
    assert set(result) == IMAGE_KEYS and 0.0 <= result["image_auroc"].item() <= 1.0
    coverage = metric.coverage()
    assert not coverage.available and coverage.record() == {
        "images": 6,
        "pixel_images": 2,
        "anomalous_images": 4,
        "anomalous_with_mask": 0,
        "note": "Pixel metrics are not available: none of the 4 anomalous test images has a mask.",
    }


def test_every_mask_known_is_the_default_digit_for_digit() -> None:
    maps, masks, labels, scores = pixel_test_set(8)
    default, flagged = AnomalyMetrics(), AnomalyMetrics()
    default.update(scores, labels, maps, masks)
    flagged.update(scores, labels, maps, masks, torch.ones(len(scores), dtype=torch.bool))
    assert {k: v.item() for k, v in default.compute().items()} == {
        k: v.item() for k, v in flagged.compute().items()
    }
    assert default.coverage().complete and default.coverage().note is None


def test_no_coverage_without_maps() -> None:
    _, _, labels, scores = pixel_test_set(9)
    metric = AnomalyMetrics()
    metric.update(scores, labels)
    assert metric.coverage() is None


def _mixed_test_set() -> tuple[torch.Tensor, ...]:
    """update()'s arguments: scores, labels, maps, masks as the dataset gives them (an unknown one all
    zero) and the known-mask flags."""
    maps, masks, labels, scores = pixel_test_set(10, images=9)
    known = torch.tensor([True, True, True, False, True, True, False, True, True])
    return scores, labels, maps, masks & known[:, None, None], known


def test_two_processes_give_the_single_process_metrics_and_coverage(tmp_path) -> None:
    """DDP (gloo, 2 ranks with uneven shares): the gathered states, known-mask flags included, give
    exactly the one-process result on every rank."""
    torch.save(_mixed_test_set(), tmp_path / "inputs.pt")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    script = Path(__file__).with_name("ddp_rank.py")
    ranks = [subprocess.Popen([sys.executable, script, str(rank), str(port), tmp_path]) for rank in range(2)]
    assert [rank.wait(timeout=120) for rank in ranks] == [0, 0]
    single = AnomalyMetrics()
    single.update(*_mixed_test_set())
    expected = ({key: value.item() for key, value in single.compute().items()}, single.coverage().record())
    assert expected[1]["pixel_images"] == 7 and set(expected[0]) == IMAGE_KEYS | PIXEL_KEYS
    for rank in range(2):
        assert torch.load(tmp_path / f"{rank}.pt") == expected
