"""What every dataset reader returns: plain records of files on disk, no pixels."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aand_lightning.errors import UserError


class DatasetError(UserError):
    """Bad input on disk; the message is one sentence that names the fix."""


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    label is 0 for normal and 1 for anomalous; mask is the ground-truth mask file, None for normal
    images (an all-zero mask is implied) and for anomalous ones whose defect was not drawn (their
    mask is unknown); defect is the defect type ("good" if normal).
    """

    image: Path
    label: int
    defect: str = "good"
    mask: Path | None = None

    @property
    def mask_known(self) -> bool:
        """Whether the pixels' ground truth is known: a mask file, or a normal image (all zero)."""
        return self.label == 0 or self.mask is not None


@dataclass
class Splits:
    """The train (normal only) and test samples of one category."""

    train: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)


class SampleSource(Protocol):
    """A reader: knows one dataset layout and lists the samples of one category."""

    category: str

    def splits(self) -> Splits: ...
