"""VisA reader: the split comes from `split_csv/1cls.csv`, read directly (no conversion step)."""

from __future__ import annotations

import csv
from pathlib import Path

from aand_lightning.data.download import Download, download_setting, fetch_root
from aand_lightning.data.io import require_root
from aand_lightning.data.records import DatasetError, Sample, Splits
from aand_lightning.errors import did_you_mean

LAYOUT = "split_csv/1cls.csv, <category>/Data/Images/{Normal,Anomaly} and <category>/Data/Masks/Anomaly"
COLUMNS = ("object", "split", "label", "image", "mask")
_LABELS = {"normal": 0, "anomaly": 1}
_SPLITS = ("train", "test")


def _read_rows(csv_path: Path) -> list[dict[str, str]]:
    """All rows of the split file, values stripped; fails on a missing file or column."""
    if not csv_path.is_file():
        raise DatasetError(
            f"VisA split file {csv_path} does not exist; use the split_csv/1cls.csv that ships with VisA "
            "(under dataset.root) or pass its path as dataset.source.split_csv."
        )
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in COLUMNS if column not in (reader.fieldnames or ())]
        if missing:
            raise DatasetError(
                f"VisA split file {csv_path} lacks the column(s) {', '.join(missing)}; "
                f"use a split file with the columns {', '.join(COLUMNS)}."
            )
        return [{key: (value or "").strip() for key, value in row.items() if key} for row in reader]


def _row_sample(row: dict[str, str], root: Path, where: str) -> Sample:
    """One CSV row as a Sample; the row's split, label and mask must agree."""
    label = _LABELS.get(row["label"])
    if label is None or row["split"] not in _SPLITS or (label and row["split"] == "train"):
        raise DatasetError(
            f"{where} has split {row['split']!r} and label {row['label']!r}; use split train or test, "
            "label normal or anomaly, and only normal images in train."
        )
    if not label:
        return Sample(root / row["image"], 0)
    if not row["mask"]:
        raise DatasetError(f"{where} is an anomalous test image without a mask; fill in its mask column.")
    return Sample(root / row["image"], 1, "anomaly", root / row["mask"])


def _require_files(samples: list[Sample], csv_path: Path) -> None:
    """Every listed image and mask must exist; name the first missing one and how many there are."""
    missing = [
        path for sample in samples for path in (sample.image, sample.mask) if path and not path.is_file()
    ]
    if missing:
        raise DatasetError(
            f"VisA split file {csv_path} lists {len(missing)} file(s) that do not exist, first {missing[0]}; "
            "check dataset.root (paths in the CSV are relative to it) or re-download the category."
        )


def _by_path(sample: Sample) -> Path:
    """Sort key: the image path, so the order never depends on the CSV's row order."""
    return sample.image


class VisA:
    """Lists the samples of one VisA category from the 1cls split file (paths relative to root).

    VisA has no defect types, so anomalous samples get the defect name "anomaly". `download`
    fetches VisA into `root` when it is missing or empty (`"auto"`: only into a folder that exists).
    """

    def __init__(
        self,
        root: str | Path,
        category: str,
        split_csv: str | Path | None = None,
        download: Download = False,
    ) -> None:
        self.root = Path(root)
        self.category = category
        self.split_csv = Path(split_csv) if split_csv else self.root / "split_csv" / "1cls.csv"
        self.download = download_setting(download)

    def splits(self) -> Splits:
        """Train (normal) and test samples, sorted by path."""
        fetch_root("visa", self.root, self.download)
        require_root(self.root, "VisA", LAYOUT)
        all_rows = _read_rows(self.split_csv)
        rows = [(line, row) for line, row in enumerate(all_rows, start=2) if row["object"] == self.category]
        if not rows:
            objects = [row["object"] for row in all_rows]
            raise DatasetError(
                f"VisA split file {self.split_csv} has no row for {self.category}"
                f"{did_you_mean(self.category, objects)}; set dataset.category to an object of that file "
                "or use the split_csv/1cls.csv that ships with VisA."
            )
        samples = {split: [] for split in _SPLITS}
        for line, row in rows:
            sample = _row_sample(row, self.root, f"Line {line} of {self.split_csv}")
            samples[row["split"]].append(sample)
        _require_files(samples["train"] + samples["test"], self.split_csv)
        return Splits(
            train=sorted(samples["train"], key=_by_path), test=sorted(samples["test"], key=_by_path)
        )
