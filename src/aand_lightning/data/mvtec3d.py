"""MVTec 3D-AD reader, RGB only: `<category>/train/good/rgb`, `<category>/test/<defect>/{rgb,gt}`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from aand_lightning.data.download import fetch_into
from aand_lightning.data.io import category_dir, defect_samples, require_dir, require_images
from aand_lightning.data.records import Sample, Splits

LAYOUT = (
    "<category>/train/good/rgb/*.png, <category>/test/<defect>/rgb/*.png "
    "and <category>/test/<defect>/gt/*.png"
)


class MVTec3DRGB:
    """Lists the RGB samples of any category folder in MVTec 3D-AD layout; xyz point clouds are not read.

    `categories` (MVTec 3D-AD's own, from the config) only feeds the "did you mean" of a missing folder;
    `download` fetches MVTec 3D-AD into `root` when that folder is missing or empty.
    """

    def __init__(
        self, root: str | Path, category: str, categories: Sequence[str] = (), download: bool = False
    ) -> None:
        self.root = Path(root)
        self.category = category
        self.categories = tuple(categories)
        self.download = download

    def splits(self) -> Splits:
        """Train (normal) and test samples, sorted by path; masks paired by file name in `gt/`."""
        if self.download:
            fetch_into("mvtec3d", self.root)
        folder = category_dir(self.root, self.category, self.categories, "MVTec 3D-AD", LAYOUT)
        fix = f"a category folder of MVTec 3D-AD holds {LAYOUT}"
        train = require_images(folder / "train" / "good" / "rgb", fix)
        test_dir = require_dir(folder / "test", fix)
        test = defect_samples(test_dir, lambda defect: [test_dir / defect / "gt"], image_subdir="rgb")
        return Splits(train=[Sample(image, 0) for image in train], test=test)
