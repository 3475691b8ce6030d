"""MVTec AD reader: `<root>/<category>/{train/good, test/<defect>, ground_truth/<defect>}`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from aand_lightning.data.catalog import CATALOG
from aand_lightning.data.download import Download, download_setting, fetch_root
from aand_lightning.data.io import category_dir, defect_samples, require_dir, require_images
from aand_lightning.data.records import Sample, Splits

LAYOUT = (
    "<category>/train/good, <category>/test/<defect> and <category>/ground_truth/<defect>/<name>_mask.png"
)


def mvtec_layout_splits(folder: Path) -> Splits:
    """Splits of one category folder in MVTec layout (also the layout of the generated demo data)."""
    fix = f"a category folder in MVTec layout holds {LAYOUT}"
    train = require_images(folder / "train" / "good", fix)
    test_dir = require_dir(folder / "test", fix)
    test = defect_samples(test_dir, lambda defect: [folder / "ground_truth" / defect])
    return Splits(train=[Sample(image, 0) for image in train], test=test)


class MVTecAD:
    """Lists the samples of any category folder in MVTec AD layout; masks are paired by name.

    `categories` (MVTec's own, from the config) only feeds the "did you mean" of a missing folder;
    `download` fetches MVTec AD into `root` when it is missing or empty (`"auto"`: only into a folder
    that exists, see download.fetch_root). A reader of another dataset in a per-category layout
    derives from this one and sets `catalog_name`, `layout` and `_category_splits`.
    """

    catalog_name: ClassVar[str] = "mvtec"  # its catalog entry: what `download` fetches, the title errors name
    layout: ClassVar[str] = LAYOUT

    def __init__(
        self, root: str | Path, category: str, categories: Sequence[str] = (), download: Download = False
    ) -> None:
        self.root = Path(root)
        self.category = category
        self.categories = tuple(categories)
        self.download = download_setting(download)

    def splits(self) -> Splits:
        """Train (normal) and test samples, sorted by path."""
        fetch_root(self.catalog_name, self.root, self.download)
        title = CATALOG[self.catalog_name].title
        folder = category_dir(self.root, self.category, self.categories, title, self.layout)
        return self._category_splits(folder)

    def _category_splits(self, folder: Path) -> Splits:
        """The splits of the existing category folder `folder`."""
        return mvtec_layout_splits(folder)
