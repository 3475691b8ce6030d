"""Reader for your own images: a folder of normal images, optionally a labelled test folder and masks.

Layout (the test folder must use subfolders, so no image is ever labelled by guesswork):
  train_dir/*.png                       normal images only, directly in the folder
  test_dir/good/*.png                   normal test images
  test_dir/<defect>/*.png               anomalous test images, one subfolder per defect type
  mask_dir/<defect>/<stem>[_mask].png   their masks, matched by file stem; mask_dir/<stem>[_mask].png
                                        is searched second
Without test_dir the test split is empty (training only). Masks are optional: an anomalous image without
one counts in the image metrics only (its mask is unknown), and without mask_dir none has one.
"""

from __future__ import annotations

from pathlib import Path

from aand_lightning.data.io import defect_samples, require_dir, require_images
from aand_lightning.data.records import DatasetError, Sample, Splits


class ImageFolder:
    """Lists samples of a custom dataset; any category name is accepted (it only names outputs)."""

    def __init__(
        self,
        train_dir: str | Path | None,
        test_dir: str | Path | None = None,
        mask_dir: str | Path | None = None,
        category: str = "folder",
    ) -> None:
        self.train_dir = Path(train_dir) if train_dir else None
        self.test_dir = Path(test_dir) if test_dir else None
        self.mask_dir = Path(mask_dir) if mask_dir else None
        self.category = category

    def _mask_folders(self, defect: str) -> list[Path]:
        """Where the masks of one defect type may be: its own subfolder first, then mask_dir itself."""
        return [] if self.mask_dir is None else [self.mask_dir / defect, self.mask_dir]

    def splits(self) -> Splits:
        """Train (normal) and test samples, sorted by path."""
        if self.train_dir is None:
            raise DatasetError(
                "The folder dataset has no training images; pass dataset.train_dir=/path/to/normal/images."
            )
        train = require_images(self.train_dir, "pass dataset.train_dir=/path/to/normal/images")
        return Splits(train=[Sample(image, 0) for image in train], test=self._test_samples())

    def _test_samples(self) -> list[Sample]:
        """The labelled test set, or none when no test_dir is given."""
        if self.test_dir is None:
            return []
        fix = "pass dataset.test_dir=/path/to/test (with good/ and <defect>/ subfolders)"
        if self.mask_dir is not None:  # a mistyped folder would silently leave every mask out
            require_dir(self.mask_dir, "pass dataset.mask_dir=/path/to/masks, or null when there are none")
        return defect_samples(require_dir(self.test_dir, fix), self._mask_folders, masks_required=False)
