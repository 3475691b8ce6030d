"""AUPRO checked against a plain per-threshold reference written with numpy and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from aand_lightning.metrics.aupro import aupro, label_regions, per_image_pro


def reference_curve_area(fprs: list[float], pros: list[float], fpr_limit: float) -> float:
    """Trapezoid area from FPR 0 to fpr_limit, the last segment cut by linear interpolation."""
    fpr, pro = np.asarray(fprs), np.asarray(pros)
    after = int(np.argmax(fpr > fpr_limit)) if (fpr > fpr_limit).any() else len(fpr)
    fpr_kept, pro_kept = list(fpr[:after]), list(pro[:after])
    if after < len(fpr):
        fraction = (fpr_limit - fpr[after - 1]) / (fpr[after] - fpr[after - 1])
        fpr_kept.append(fpr_limit)
        pro_kept.append(pro[after - 1] + fraction * (pro[after] - pro[after - 1]))
    return float(np.trapezoid(pro_kept, fpr_kept))


def reference_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """One binarisation per distinct score, regions from scipy.ndimage.label with 8-connectivity."""
    regions = []
    for image, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(image, labels == region) for region in range(1, count + 1)]
    normal = ~masks
    if not regions or not normal.any():
        return math.nan
    fprs, pros = [0.0], [0.0]
    for threshold in np.unique(maps)[::-1]:
        predicted = maps >= threshold
        fprs.append((predicted & normal).sum() / normal.sum())
        pros.append(np.mean([predicted[image][region].mean() for image, region in regions]))
    return reference_curve_area(fprs, pros, fpr_limit) / fpr_limit


def random_case(seed: int, images: int = 5, size: int = 20, levels: int | None = None):
    """Random maps (quantised to `levels` values to force ties) and random blob masks, one image normal."""
    rng = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(rng.random((images, size, size)), sigma=(0, 1.5, 1.5))
    masks = blobs > np.quantile(blobs, 0.85)
    masks[0] = False
    maps = rng.random((images, size, size)) + 0.3 * masks
    if levels is not None:
        maps = np.round(maps * levels) / levels
    return maps.astype(np.float32), masks


@pytest.mark.parametrize(("seed", "levels"), [(0, None), (1, None), (2, 12), (3, 5)])
def test_aupro_matches_per_threshold_reference(seed: int, levels: int | None) -> None:
    maps, masks = random_case(seed, levels=levels)
    expected = reference_aupro(maps, masks)
    assert 0.05 < expected < 0.95
    assert aupro(torch.from_numpy(maps), torch.from_numpy(masks)) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_matches_reference_at_other_limits(fpr_limit: float) -> None:
    maps, masks = random_case(4, levels=20)
    expected = reference_aupro(maps, masks, fpr_limit)
    assert aupro(torch.from_numpy(maps), torch.from_numpy(masks), fpr_limit) == pytest.approx(
        expected, abs=1e-6
    )


def test_per_image_pro_matches_reference_per_image() -> None:
    maps, masks = random_case(5, levels=30)
    anomalous = [image for image in range(len(masks)) if masks[image].any()]
    expected = np.mean([reference_aupro(maps[[i]], masks[[i]]) for i in anomalous])
    assert len(anomalous) == len(masks) - 1
    assert per_image_pro(torch.from_numpy(maps), torch.from_numpy(masks)) == pytest.approx(expected, abs=1e-6)


def test_per_image_pro_differs_from_dataset_level() -> None:
    maps, masks = random_case(6)
    maps[1] += 0.5  # one image scored higher overall hurts the pooled FPR, not the per-image one
    maps_t, masks_t = torch.from_numpy(maps), torch.from_numpy(masks)
    assert per_image_pro(maps_t, masks_t) > aupro(maps_t, masks_t) + 0.01


def test_perfect_and_inverted_maps() -> None:
    _, masks = random_case(7)
    perfect = torch.from_numpy(masks).float()
    masks_t = torch.from_numpy(masks)
    assert aupro(perfect, masks_t) == pytest.approx(1.0, abs=1e-12)
    assert per_image_pro(perfect, masks_t) == pytest.approx(1.0, abs=1e-12)
    assert aupro(1.0 - perfect, masks_t) == pytest.approx(0.0, abs=1e-12)


def test_values_stay_in_unit_interval() -> None:
    for seed in range(5):
        maps, masks = random_case(10 + seed, levels=3)
        value = aupro(torch.from_numpy(maps), torch.from_numpy(masks), fpr_limit=1.0)
        assert 0.0 <= value <= 1.0


def test_negative_scores_and_signed_zeros_keep_their_order() -> None:
    maps, masks = random_case(8, levels=4)
    shifted = maps - 0.5  # values on both sides of zero, with -0.0 and 0.0 among them
    shifted[shifted == 0] = -0.0
    shifted[:, 0, 0] = 0.0
    expected = reference_aupro(shifted, masks)
    assert aupro(torch.from_numpy(shifted), torch.from_numpy(masks)) == pytest.approx(expected, abs=1e-6)
    assert aupro(torch.from_numpy(shifted).double(), torch.from_numpy(masks)) == pytest.approx(
        expected, abs=1e-6
    )


def test_undefined_cases_give_nan() -> None:
    maps = torch.rand(2, 8, 8)
    assert math.isnan(aupro(maps, torch.zeros(2, 8, 8, dtype=torch.bool)))
    assert math.isnan(aupro(maps, torch.ones(2, 8, 8, dtype=torch.bool)))
    assert math.isnan(per_image_pro(maps, torch.zeros(2, 8, 8, dtype=torch.bool)))


def test_per_image_pro_skips_fully_anomalous_images() -> None:
    maps, masks = random_case(9, images=3, levels=10)
    expected = reference_aupro(maps[[1]], masks[[1]])
    masks[2] = True
    assert per_image_pro(torch.from_numpy(maps), torch.from_numpy(masks)) == pytest.approx(expected, abs=1e-6)


def test_label_regions_uses_8_connectivity_and_batch_unique_ids() -> None:
    masks = torch.zeros(2, 5, 5, dtype=torch.bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # diagonal neighbours: one region
    masks[0, 4, 4] = True
    masks[1, 2, 1:4] = True
    regions = label_regions(masks)
    assert regions.dtype == torch.int64
    assert regions[0, 0, 0] == regions[0, 1, 1] != regions[0, 4, 4]
    assert set(regions.unique().tolist()) == {0, 1, 2, 3}
    assert torch.equal(regions > 0, masks)
    assert regions[1, 2, 1] not in (regions[0, 0, 0], regions[0, 4, 4])


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="same shape"):
        aupro(torch.rand(2, 8, 8), torch.zeros(2, 8, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        aupro(torch.rand(2, 8, 8), torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(torch.rand(2, 8, 8), torch.zeros(2, 8, 8, dtype=torch.bool), fpr_limit=0.0)
