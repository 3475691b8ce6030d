"""Miniature copies of each dataset layout, written to tmp_path, plus helpers the reader tests share."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# Image and mask stems whose sort orders differ: "a" < "a_b" but "a_b_mask" < "a_mask". An extra
# orphan mask ("a_a_mask") shifts any pairing by position, so only pairing by name passes.
ANOMALOUS_STEMS = ("a", "a_b")
ORPHAN_MASK_STEM = "a_a"


def _png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _rgb(seed: int, height: int = 12, width: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _mask(height: int = 12, width: int = 16, value: int = 255) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[2:5, 3:7] = value
    return mask


@pytest.fixture
def write_png() -> Callable[[Path, np.ndarray], Path]:
    """Write an array as PNG, creating parent folders."""
    return _png


@pytest.fixture
def one_sentence() -> Callable[[str], None]:
    """Assert that an error message is one sentence (our rule for DatasetError messages)."""

    def check(message: str) -> None:
        assert message.endswith("."), message
        assert ". " not in message[:-1], message

    return check


@pytest.fixture
def dataset_config() -> Callable[..., DictConfig]:
    """Compose conf/dataset/<name>.yaml through Hydra (so `# @package dataset` is honoured)."""

    def compose_dataset(name: str, data_dir: Path, *overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return compose(overrides=[f"+dataset={name}", f"+paths.data_dir={data_dir}", *overrides])

    return compose_dataset


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    """MVTec AD: bottle with 3 train, 2 test good, 2 anomalous of one defect (+ an orphan mask)."""
    root = tmp_path / "mvtec"
    category = root / "bottle"
    for index in range(3):
        _png(category / "train" / "good" / f"{index:03d}.png", _rgb(index))
    for index in range(2):
        _png(category / "test" / "good" / f"{index:03d}.png", _rgb(10 + index))
    for index, stem in enumerate(ANOMALOUS_STEMS):
        _png(category / "test" / "broken_large" / f"{stem}.png", _rgb(20 + index))
    for stem in (*ANOMALOUS_STEMS, ORPHAN_MASK_STEM):
        _png(category / "ground_truth" / "broken_large" / f"{stem}_mask.png", _mask())
    _png(category / "test" / "contamination" / "000.png", _rgb(30))
    _png(category / "ground_truth" / "contamination" / "000_mask.png", _mask())
    return root


@pytest.fixture
def mvtec3d_root(tmp_path: Path) -> Path:
    """MVTec 3D-AD: foam with rgb/ and gt/ (same file names), plus xyz/ files the reader must ignore."""
    root = tmp_path / "mvtec3d"
    category = root / "foam"
    for index in range(2):
        _png(category / "train" / "good" / "rgb" / f"{index:03d}.png", _rgb(index))
        (category / "train" / "good" / "xyz").mkdir(parents=True, exist_ok=True)
        (category / "train" / "good" / "xyz" / f"{index:03d}.tiff").write_bytes(b"not read")
    for index in range(2):
        _png(category / "test" / "good" / "rgb" / f"{index:03d}.png", _rgb(10 + index))
        _png(category / "test" / "good" / "gt" / f"{index:03d}.png", _mask(value=0))
    for index, stem in enumerate(ANOMALOUS_STEMS):
        _png(category / "test" / "cut" / "rgb" / f"{stem}.png", _rgb(20 + index))
    for stem in (*ANOMALOUS_STEMS, ORPHAN_MASK_STEM):
        _png(category / "test" / "cut" / "gt" / f"{stem}.png", _mask())
    return root


VISA_SHAPE = (12, 20)  # VisA images are not square


@pytest.fixture
def visa_root(tmp_path: Path) -> Path:
    """VisA: candle (3 normal train, 1 normal test, 2 anomalous test) and a cashew row, CSV unsorted.

    Masks hold label indices (1 and 2), as VisA's do.
    """
    root = tmp_path / "visa"
    height, width = VISA_SHAPE
    rows = []
    for index in (2, 0, 1):
        image = f"candle/Data/Images/Normal/{index:04d}.JPG"
        _png(root / image, _rgb(index, height, width))  # PNG bytes; Pillow reads by content
        rows.append(["candle", "train", "normal", image, ""])
    rows.append(["candle", "test", "normal", "candle/Data/Images/Normal/0100.JPG", ""])
    _png(root / rows[-1][3], _rgb(100, height, width))
    for index, value in ((5, 2), (3, 1)):
        image = f"candle/Data/Images/Anomaly/{index:03d}.JPG"
        mask = f"candle/Data/Masks/Anomaly/{index:03d}.png"
        _png(root / image, _rgb(200 + index, height, width))
        _png(root / mask, _mask(height, width, value))
        rows.append(["candle", "test", "anomaly", image, mask])
    _png(root / "cashew/Data/Images/Normal/0000.JPG", _rgb(300, height, width))
    rows.insert(1, ["cashew", "train", "normal", "cashew/Data/Images/Normal/0000.JPG", ""])
    write_visa_csv(root / "split_csv" / "1cls.csv", rows)
    return root


def write_visa_csv(path: Path, rows: list[list[str]], header: tuple[str, ...] = ()) -> Path:
    """A split file with VisA's header (or `header`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header or ("object", "split", "label", "image", "mask"))
        writer.writerows(rows)
    return path


@pytest.fixture
def visa_csv_writer() -> Callable[..., Path]:
    """Write a VisA split file with given rows."""
    return write_visa_csv


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    """A custom folder dataset: train/, test/{good,scratch,dent}/, masks/scratch/*_mask.png, masks/*.png."""
    root = tmp_path / "custom"
    for index in range(2):
        _png(root / "train" / f"{index:03d}.png", _rgb(index))
    _png(root / "test" / "good" / "ok.png", _rgb(10))
    for index, stem in enumerate(ANOMALOUS_STEMS):
        _png(root / "test" / "scratch" / f"{stem}.png", _rgb(20 + index))
    for stem in (*ANOMALOUS_STEMS, ORPHAN_MASK_STEM):
        _png(root / "masks" / "scratch" / f"{stem}_mask.png", _mask())
    _png(root / "test" / "dent" / "d1.png", _rgb(30))
    _png(root / "masks" / "d1.png", _mask())  # flat mask folder, no suffix
    return root
