"""VisA reader: the split CSV is read directly; bad rows and missing files fail with a fix."""

from __future__ import annotations

import shutil

import pytest
from hydra.utils import instantiate

from aand_lightning.data.io import read_image, read_mask
from aand_lightning.data.records import DatasetError
from aand_lightning.data.synthesis.foreground import select_rule
from aand_lightning.data.visa import VisA

NORMAL = "candle/Data/Images/Normal"
ANOMALY = "candle/Data/Images/Anomaly"


def test_splits_follow_csv_sorted_by_path(visa_root):
    splits = VisA(visa_root, "candle").splits()
    assert [s.image for s in splits.train] == [visa_root / NORMAL / f"{i:04d}.JPG" for i in range(3)]
    assert all(s.label == 0 and s.mask is None for s in splits.train)
    assert [(s.image.relative_to(visa_root).as_posix(), s.label, s.defect) for s in splits.test] == [
        (f"{ANOMALY}/003.JPG", 1, "anomaly"),
        (f"{ANOMALY}/005.JPG", 1, "anomaly"),
        (f"{NORMAL}/0100.JPG", 0, "good"),
    ]


def test_masks_come_from_the_row_and_label_indices_binarise(visa_root):
    test = VisA(visa_root, "candle").splits().test
    for sample in test[:2]:
        assert sample.mask == visa_root / "candle/Data/Masks/Anomaly" / f"{sample.image.stem}.png"
        image = read_image(sample.image)
        assert image.shape == (12, 20, 3)  # not square
        mask = read_mask(sample.mask, size=image.shape[:2])
        assert mask.sum() == 12 and mask[2:5, 3:7].all()
    assert test[2].mask is None


def test_other_categories_rows_are_ignored(visa_root):
    splits = VisA(visa_root, "cashew").splits()
    assert [s.image.name for s in splits.train] == ["0000.JPG"] and splits.test == []


def test_custom_split_csv(visa_root, visa_csv_writer):
    row = ["candle", "train", "normal", f"{NORMAL}/0001.JPG", ""]
    csv = visa_csv_writer(visa_root / "my_split.csv", [row])
    splits = VisA(visa_root, "candle", split_csv=str(csv)).splits()
    assert [s.image.name for s in splits.train] == ["0001.JPG"] and splits.test == []


def test_missing_csv(visa_root, one_sentence):
    (visa_root / "split_csv" / "1cls.csv").unlink()
    with pytest.raises(DatasetError, match=r"1cls\.csv does not exist") as caught:
        VisA(visa_root, "candle").splits()
    one_sentence(str(caught.value))


def test_missing_column(visa_root, visa_csv_writer, one_sentence):
    visa_csv_writer(
        visa_root / "split_csv" / "1cls.csv",
        [["candle", "train", "normal", "x"]],
        header=("object", "split", "label", "image"),
    )
    with pytest.raises(DatasetError, match="lacks the column") as caught:
        VisA(visa_root, "candle").splits()
    one_sentence(str(caught.value))


def test_rows_pointing_at_missing_files_name_first_and_count(visa_root, one_sentence):
    shutil.rmtree(visa_root / "candle" / "Data" / "Masks")
    (visa_root / NORMAL / "0001.JPG").unlink()
    with pytest.raises(DatasetError, match="3 file") as caught:
        VisA(visa_root, "candle").splits()
    assert f"first {visa_root / NORMAL / '0001.JPG'}" in str(caught.value)
    one_sentence(str(caught.value))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (["candle", "test", "anomaly", f"{ANOMALY}/003.JPG", ""], "without a mask"),
        (["candle", "train", "anomaly", f"{ANOMALY}/003.JPG", "m.png"], "only normal images in train"),
        (["candle", "val", "normal", f"{NORMAL}/0001.JPG", ""], "'val'"),
        (["candle", "test", "bad", f"{NORMAL}/0001.JPG", ""], "'bad'"),
    ],
)
def test_inconsistent_rows(visa_root, visa_csv_writer, one_sentence, row, message):
    visa_csv_writer(visa_root / "split_csv" / "1cls.csv", [row])
    with pytest.raises(DatasetError, match=message) as caught:
        VisA(visa_root, "candle").splits()
    assert "Line 2 of" in str(caught.value)
    one_sentence(str(caught.value))


def test_category_without_rows(visa_root, one_sentence):
    (visa_root / "pcb1").mkdir()
    with pytest.raises(DatasetError, match="no row for pcb1") as caught:
        VisA(visa_root, "pcb1").splits()
    assert "did you mean" not in str(caught.value)
    one_sentence(str(caught.value))


def test_any_object_of_the_csv_is_read(visa_root, visa_csv_writer):
    image = "my_part/Data/Images/Normal/0000.JPG"
    (visa_root / image).parent.mkdir(parents=True)
    shutil.copy(visa_root / NORMAL / "0000.JPG", visa_root / image)
    visa_csv_writer(visa_root / "split_csv" / "1cls.csv", [["my_part", "train", "normal", image, ""]])
    assert [s.image for s in VisA(visa_root, "my_part").splits().train] == [visa_root / image]


def test_close_csv_object_is_suggested_and_missing_root(visa_root, tmp_path, one_sentence):
    with pytest.raises(DatasetError, match=r"no row for candles \(did you mean 'candle'\?\)") as caught:
        VisA(visa_root, "candles").splits()
    one_sentence(str(caught.value))
    with pytest.raises(DatasetError, match=r"dataset\.root="):
        VisA(tmp_path / "nowhere", "candle").splits()


def test_config_builds_the_reader_with_spec_rules(dataset_config, visa_root, tmp_path):
    cfg = dataset_config("visa", tmp_path, f"dataset.root={visa_root}")
    source = instantiate(cfg.dataset.source)
    assert isinstance(source, VisA) and source.split_csv == visa_root / "split_csv" / "1cls.csv"
    assert len(source.splits().train) == 3
    categories = tuple(cfg.dataset.categories)
    assert len(categories) == 12
    thresholds = {c: select_rule(cfg.dataset.foreground_rules, c).threshold for c in categories}
    assert {c for c, t in thresholds.items() if t == 150} == {
        "candle", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1"
    }  # fmt: skip
    assert {c for c, t in thresholds.items() if t == 100} == {"pcb2", "pcb3", "pipe_fryum", "capsules"}
    assert thresholds["pcb4"] == 50 and select_rule(cfg.dataset.foreground_rules, "my_part").threshold == 50
    assert [c for c in categories if select_rule(cfg.dataset.foreground_rules, c).invert] == ["capsules"]
