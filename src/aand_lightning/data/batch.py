"""The contract between the data and every layer that reads it: typed items and batches, not string keys.

A `Batch` is a plain dataclass, so Lightning moves its tensors to the device like those of a dict
(`move_data_to_device` recurses into dataclass fields) and leaves its strings and lists on the host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import default_collate


@dataclass
class Item:
    """One image: normalised image (3,H,W), mask (1,H,W) in {0, 1}, label (1 = anomalous), defect type
    and file path; `sample_id`, the identity of an item that is the same every epoch (None for the
    others: synthetic anomalies, test items), the foreground (1,H,W) the synthetic anomaly was
    placed in (synthetic mode only) and whether the mask is known (False for an anomalous test image
    without a mask file, whose mask is then all zero and must not enter pixel metrics)."""

    image: torch.Tensor
    mask: torch.Tensor
    label: int
    defect: str
    path: str
    sample_id: int | None = None
    foreground: torch.Tensor | None = None
    mask_known: bool = True


@dataclass
class Batch:
    """Items stacked: image (B,3,H,W), mask (B,1,H,W), label (B,) int64, defects and paths; sample_id
    (B,) int64, turned into a host list by stage 2 before the transfer (its feature cache looks items
    up without a device sync), and foreground (B,1,H,W), each None when the items lack it; mask_known
    (B,) bool."""

    image: torch.Tensor
    mask: torch.Tensor
    label: torch.Tensor
    defect: list[str]
    path: list[str]
    sample_id: torch.Tensor | list[int] | None = None
    foreground: torch.Tensor | None = None
    mask_known: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.image)


def collate(items: Sequence[Item]) -> Batch:
    """The `collate_fn` of every loader: torch's default collation per field (tensors stacked into
    shared memory in loader workers, ints to int64 tensors, strings to lists); an optional field is None
    when the first item lacks it (a mode supplies a field for all of its items or for none)."""

    def field(name: str) -> object:
        values = [getattr(item, name) for item in items]
        return None if values[0] is None else default_collate(values)

    return Batch(**{f.name: field(f.name) for f in dataclasses.fields(Item)})
