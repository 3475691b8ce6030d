"""One torchmetrics Metric that gathers a test set and reports image- and pixel-level anomaly metrics."""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc, binary_precision_recall_curve
from torchmetrics.utilities import dim_zero_cat

from aand_lightning.metrics.aupro import aupro, per_image_pro
from aand_lightning.metrics.distributed import gather_uneven

PIXEL_METRICS = ("pixel_auroc", "pixel_f1_max", "aupro", "per_image_pro")


@dataclass(frozen=True)
class PixelCoverage:
    """Which test images the pixel metrics cover: those whose masks are known (every normal image, and
    the anomalous images that have a mask). Without any anomalous image with a mask, pixel metrics
    would score normal pixels only, so they are not computed."""

    images: int
    pixel_images: int
    anomalous_images: int
    anomalous_with_mask: int

    @classmethod
    def of(cls, labels: torch.Tensor, mask_known: torch.Tensor) -> PixelCoverage:
        """From the (N,) labels and (N,) bool known-mask flags of a test set."""
        anomalous = labels == 1
        return cls(
            images=len(labels),
            pixel_images=int(mask_known.sum()),
            anomalous_images=int(anomalous.sum()),
            anomalous_with_mask=int((anomalous & mask_known).sum()),
        )

    @property
    def complete(self) -> bool:
        """Every mask is known (every dataset with a mask per defect): pixel metrics cover all images."""
        return self.pixel_images == self.images

    @property
    def available(self) -> bool:
        """Whether pixel metrics are computed: every mask is known, or some anomalous image has one."""
        return self.complete or self.anomalous_with_mask > 0

    @property
    def note(self) -> str | None:
        """One line on what the pixel metrics leave out, and why; None when they cover every image."""
        if self.complete:
            return None
        if not self.available:
            return (
                f"Pixel metrics are not available: none of the {self.anomalous_images} anomalous test "
                "images has a mask."
            )
        unmasked = self.anomalous_images - self.anomalous_with_mask
        return (
            f"Pixel metrics cover the {self.pixel_images} of {self.images} test images whose masks are "
            f"known: {unmasked} of the {self.anomalous_images} anomalous images have no mask."
        )

    def record(self) -> dict[str, Any]:
        """The counts and the note, as metrics.json stores them."""
        return {**dataclasses.asdict(self), "note": self.note}


class AnomalyMetrics(Metric):
    """Image AUROC / F1-max and, given maps and masks, pixel AUROC / F1-max, AUPRO and per-image PRO.

    All metrics are exact (every distinct score is a threshold) and computed on the raw scores. States
    are lists concatenated across processes, so the result under DDP equals the single-process one.
    Maps are kept as float32 (the precision they are produced in) and masks as uint8 until compute().
    Images whose mask is unknown count in the image metrics only (see `PixelCoverage`, `coverage()`).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, fpr_limit: float = 0.3, compute_pixel: bool = True) -> None:
        super().__init__()
        self.fpr_limit = fpr_limit
        self.compute_pixel = compute_pixel
        for name in ("scores", "labels", "maps", "masks", "mask_known"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        scores: torch.Tensor,
        labels: torch.Tensor,
        maps: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        mask_known: torch.Tensor | None = None,
    ) -> None:
        """Add a batch: (B,) image scores and 0/1 labels, optionally (B, H, W) maps and masks, and (B,)
        bool `mask_known`, False where an image's mask is unknown (None: every mask is known)."""
        if (maps is None) != (masks is None):
            raise ValueError("Pass maps and masks together, or neither of them.")
        self.scores.append(scores.detach().flatten().float())
        self.labels.append(labels.detach().flatten().long())
        if self.compute_pixel and maps is not None and masks is not None:
            _check_pixel_batch(maps, masks, len(self.scores[-1]))
            self.maps.append(maps.detach().float())
            # uint8, not bool: every torch.distributed backend can gather it, at the same memory cost.
            self.masks.append((masks.detach() > 0.5).to(torch.uint8))
            known = torch.ones(len(maps), dtype=torch.uint8, device=maps.device)
            self.mask_known.append(known if mask_known is None else mask_known.detach().flatten().to(known))

    def compute(self) -> dict[str, torch.Tensor]:
        """Return the metrics as 0-d float32 tensors; pixel keys only when maps and masks were given and
        `PixelCoverage.available`, computed over the images whose masks are known."""
        scores, labels = dim_zero_cat(self.scores), dim_zero_cat(self.labels)
        image_auroc, image_f1_max = _auroc_and_f1_max(scores, labels, "image")
        results = {"image_auroc": image_auroc, "image_f1_max": image_f1_max}
        if len(self.maps) > 0:  # a list before a DDP sync, a tensor after it
            maps, masks = dim_zero_cat(self.maps), dim_zero_cat(self.masks).bool()
            if len(maps) != len(scores):
                raise ValueError(
                    f"Pass maps and masks with every update or with none, "
                    f"got {len(maps)} maps for {len(scores)} images."
                )
            known = dim_zero_cat(self.mask_known).bool()
            coverage = PixelCoverage.of(labels, known)
            if coverage.available:
                if not coverage.complete:
                    maps, masks = maps[known], masks[known]
                results |= self._pixel_metrics(maps, masks)
        return {name: torch.tensor(value, dtype=torch.float32) for name, value in results.items()}

    def coverage(self) -> PixelCoverage | None:
        """Which images the pixel metrics cover, over every process (call it on every rank, as compute);
        None when no maps were given."""
        if len(self.mask_known) == 0:
            return None
        labels = gather_uneven(dim_zero_cat(self.labels))
        return PixelCoverage.of(labels, gather_uneven(dim_zero_cat(self.mask_known)).bool())

    def _pixel_metrics(self, maps: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
        """Pixel AUROC / F1-max over all test pixels and both PRO variants."""
        pixel_auroc, pixel_f1_max = _auroc_and_f1_max(maps.flatten(), masks.flatten().long(), "pixel")
        return {
            "pixel_auroc": pixel_auroc,
            "pixel_f1_max": pixel_f1_max,
            "aupro": aupro(maps, masks, self.fpr_limit),
            "per_image_pro": per_image_pro(maps, masks, self.fpr_limit),
        }


def _check_pixel_batch(maps: torch.Tensor, masks: torch.Tensor, batch_size: int) -> None:
    """Fail at update time, where the caller can still see which batch was wrong."""
    if maps.ndim != 3 or maps.shape != masks.shape or len(maps) != batch_size:
        raise ValueError(
            f"Pass maps and masks as (B, H, W) tensors with B = {batch_size} scores, "
            f"got {tuple(maps.shape)} and {tuple(masks.shape)}."
        )


def _unit_interval(scores: torch.Tensor) -> torch.Tensor:
    """Scores mapped affinely onto [0, 1] in float64: the order is kept exactly, and torchmetrics, which
    applies a sigmoid to scores outside [0, 1] (merging large scores into ties), leaves them as they are."""
    scores = scores.double()
    low, high = scores.min(), scores.max()
    return (scores - low) / (high - low) if high > low else torch.zeros_like(scores)


def f1_max(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """The best F1 over every cut `score >= t`, and that t (one of the scores, exactly)."""
    unit = _unit_interval(scores)
    precision, recall, thresholds = binary_precision_recall_curve(unit, labels, thresholds=None)
    f1 = (2 * precision * recall / (precision + recall)).nan_to_num(0.0)[:-1]  # last point: recall 0
    best = int(f1.argmax())
    return f1[best].item(), scores.double()[unit == thresholds[best]].min().item()


def _auroc_and_f1_max(scores: torch.Tensor, labels: torch.Tensor, level: str) -> tuple[float, float]:
    """Exact AUROC and best F1 over all thresholds; nan with a warning when only one class is present."""
    if labels.min() == labels.max():
        warnings.warn(
            f"Only one class in the {level} labels: {level} AUROC and F1-max are nan.", stacklevel=3
        )
        return math.nan, math.nan
    return binary_auroc(_unit_interval(scores), labels, thresholds=None).item(), f1_max(scores, labels)[0]
