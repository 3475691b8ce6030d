"""MVTec 3D-AD reader, RGB only: `<category>/train/good/rgb`, `<category>/test/<defect>/{rgb,gt}`."""

from __future__ import annotations

from pathlib import Path

from aand_lightning.data.io import defect_samples, require_dir, require_images
from aand_lightning.data.mvtec import MVTecAD
from aand_lightning.data.records import Sample, Splits

LAYOUT = (
    "<category>/train/good/rgb/*.png, <category>/test/<defect>/rgb/*.png "
    "and <category>/test/<defect>/gt/*.png"
)


class MVTec3DRGB(MVTecAD):
    """Lists the RGB samples of any category folder in MVTec 3D-AD layout; xyz point clouds are not read.

    `categories` (MVTec 3D-AD's own, from the config) only feeds the "did you mean" of a missing folder;
    `download` fetches MVTec 3D-AD into `root` when it is missing or empty (`"auto"`: only into a folder
    that exists). The constructor and `splits` are MVTecAD's; only the catalog entry and the folder
    layout differ.
    """

    catalog_name = "mvtec3d"
    layout = LAYOUT

    def _category_splits(self, folder: Path) -> Splits:
        """Train (normal) and test samples, sorted by path; masks paired by file name in `gt/`."""
        fix = f"a category folder of MVTec 3D-AD holds {LAYOUT}"
        train = require_images(folder / "train" / "good" / "rgb", fix)
        test_dir = require_dir(folder / "test", fix)
        test = defect_samples(test_dir, lambda defect: [test_dir / defect / "gt"], image_subdir="rgb")
        return Splits(train=[Sample(image, 0) for image in train], test=test)
