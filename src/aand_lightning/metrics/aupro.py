"""AUPRO (area under the per-region-overlap curve), exact and without a loop over thresholds.

The curve follows MVTec AD's evaluation: every distinct score is a threshold, a pixel is predicted
anomalous when its score is >= the threshold, PRO(t) is the mean over ground-truth regions of the
fraction of the region predicted anomalous, FPR(t) is the fraction of normal pixels predicted
anomalous. Sorting the scores once turns both into cumulative sums; the curve is read at the last
pixel of each run of tied scores, so tied pixels always switch together.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

# 8-connectivity inside each image, none across the batch axis (MVTec uses a 3x3 ones structure).
_PLANAR_8_CONNECTIVITY = np.zeros((3, 3, 3), dtype=bool)
_PLANAR_8_CONNECTIVITY[1] = True


def label_regions(masks: torch.Tensor) -> torch.Tensor:
    """Connected regions of a (N, H, W) bool mask batch as int64 ids unique across the batch, 0 = background.

    Labelled on the host with scipy in a single call (the batch axis is not connected), then moved back
    to the masks' device.
    """
    labels, _ = ndimage.label(masks.detach().cpu().numpy(), structure=_PLANAR_8_CONNECTIVITY)
    return torch.from_numpy(labels.astype(np.int64)).to(masks.device)


def aupro(maps: torch.Tensor, masks: torch.Tensor, fpr_limit: float = 0.3) -> float:
    """Dataset-level AUPRO of (N, H, W) anomaly maps against bool masks, up to FPR fpr_limit, divided by it.

    FPR counts the normal pixels of all images together; every region of every image has the same
    weight in PRO. Returns nan when there is no anomalous region or no normal pixel. Scores are
    compared at float32 precision (float64 for float64 maps) and must be finite.
    """
    _check_inputs(maps, masks, fpr_limit)
    return _normalised_pro_area(maps.flatten(), label_regions(masks).flatten(), fpr_limit)


def per_image_pro(maps: torch.Tensor, masks: torch.Tensor, fpr_limit: float = 0.3) -> float:
    """RD-style PRO: the AUPRO of each anomalous image on its own, averaged over anomalous images.

    Each image's FPR counts only its own normal pixels. Images whose mask covers every pixel have no
    FPR and are left out of the mean; returns nan when no image is left.
    """
    _check_inputs(maps, masks, fpr_limit)
    areas = [
        _normalised_pro_area(image_map.flatten(), image_regions.flatten(), fpr_limit)
        for image_map, image_regions in zip(maps, label_regions(masks), strict=True)
        if bool(image_regions.any())
    ]
    return torch.tensor(areas, dtype=torch.float64).nanmean().item() if areas else math.nan


def _check_inputs(maps: torch.Tensor, masks: torch.Tensor, fpr_limit: float) -> None:
    """Fail early with one sentence that says what to pass instead."""
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise ValueError(
            f"Pass maps and masks as two (N, H, W) tensors of the same shape, got {tuple(maps.shape)} "
            f"and {tuple(masks.shape)}."
        )
    if masks.dtype != torch.bool:
        raise ValueError(f"Pass masks as a bool tensor (e.g. masks > 0.5), got {masks.dtype}.")
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"Pass an fpr_limit in (0, 1], got {fpr_limit}.")


def _normalised_pro_area(scores: torch.Tensor, regions: torch.Tensor, fpr_limit: float) -> float:
    """Area under PRO vs FPR up to fpr_limit, divided by fpr_limit, for flat scores and region ids."""
    sizes = torch.bincount(regions)
    n_normal = int(sizes[0])
    n_regions = int((sizes[1:] > 0).sum())
    if n_normal == 0 or n_regions == 0:
        return math.nan
    keys, order = _descending_order_keys(scores).sort()
    # index_select, not tensor[index]: the latter is several times slower for large gathers on CPU.
    regions = regions.index_select(0, order)
    run_ends = _tie_run_ends(keys).nonzero().squeeze(1)
    fpr = (regions == 0).cumsum(0).index_select(0, run_ends).double() / n_normal
    region_weight = 1.0 / (sizes.double() * n_regions)
    region_weight[0] = 0.0
    pro = region_weight.index_select(0, regions).cumsum(0).index_select(0, run_ends)
    # Rounding in the sum can overshoot 1 by an ulp; MVTec's reference clips the same way.
    return _area_up_to(fpr, pro.clamp_(max=1.0), fpr_limit) / fpr_limit


def _descending_order_keys(scores: torch.Tensor) -> torch.Tensor:
    """Integers whose ascending order is the scores' descending order, ties kept as ties.

    Sorting integers is several times faster than sorting floats on CPU (radix sort). The IEEE bit
    pattern of a float orders like a signed integer once the magnitude bits of negatives are flipped;
    bitwise not then reverses the order without overflow.
    """
    scores = scores if scores.dtype == torch.float64 else scores.float()
    int_type = torch.int64 if scores.dtype == torch.float64 else torch.int32
    bits = (scores + 0.0).view(int_type)  # + 0.0 turns -0.0 into +0.0 so the two zeros tie
    ordered = torch.where(bits < 0, bits ^ torch.iinfo(int_type).max, bits)
    return ~ordered


def _tie_run_ends(sorted_keys: torch.Tensor) -> torch.Tensor:
    """Bool mask of the last position of each run of equal sorted keys: one curve point per threshold."""
    ends = torch.ones_like(sorted_keys, dtype=torch.bool)
    ends[:-1] = sorted_keys[:-1] != sorted_keys[1:]
    return ends


def _area_up_to(fpr: torch.Tensor, pro: torch.Tensor, fpr_limit: float) -> float:
    """Trapezoid area of the curve from (0, 0) up to FPR fpr_limit, the curve interpolated at the limit."""
    zero = fpr.new_zeros(1)
    fpr, pro = torch.cat([zero, fpr]), torch.cat([zero, pro])
    kept = int(torch.searchsorted(fpr, fpr.new_tensor([fpr_limit]), right=True))
    if kept < len(fpr):
        step = (fpr_limit - fpr[kept - 1]) / (fpr[kept] - fpr[kept - 1])
        pro_at_limit = pro[kept - 1] + step * (pro[kept] - pro[kept - 1])
        fpr = torch.cat([fpr[:kept], fpr.new_tensor([fpr_limit])])
        pro = torch.cat([pro[:kept], pro_at_limit.reshape(1)])
    return torch.trapezoid(pro, fpr).item()
