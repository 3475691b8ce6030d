"""Gathering across processes when ranks hold different numbers of items (no padding duplicates)."""

from __future__ import annotations

import torch
from torchmetrics.utilities.distributed import gather_all_tensors


def gather_uneven(values: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D tensor from every rank (itself when not distributed); sizes may differ."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    return torch.cat(gather_all_tensors(values))
