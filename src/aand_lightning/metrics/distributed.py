"""Gathering across processes when ranks hold different numbers of items (no padding duplicates)."""

from __future__ import annotations

import torch
from torchmetrics.utilities.distributed import gather_all_tensors


def gather_uneven(values: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor from every rank along its first dimension (itself when not distributed); the
    first dimension may differ between ranks."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    return torch.cat(gather_all_tensors(values))
