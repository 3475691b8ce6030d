"""MVTec AD reader: counts, labels, masks paired by name, and every layout error names its fix."""

from __future__ import annotations

import shutil

import pytest
from hydra.utils import instantiate

from aand_lightning.data.mvtec import CATEGORIES, MVTecAD
from aand_lightning.data.records import DatasetError
from aand_lightning.data.synthesis.foreground import select_rule


def test_splits_counts_labels_and_order(mvtec_root):
    splits = MVTecAD(mvtec_root, "bottle").splits()
    assert [s.image.name for s in splits.train] == ["000.png", "001.png", "002.png"]
    assert all(s.label == 0 and s.mask is None and s.defect == "good" for s in splits.train)
    assert [(s.image.parent.name, s.image.name, s.label) for s in splits.test] == [
        ("broken_large", "a.png", 1),
        ("broken_large", "a_b.png", 1),
        ("contamination", "000.png", 1),
        ("good", "000.png", 0),
        ("good", "001.png", 0),
    ]


def test_masks_are_paired_by_name_not_order(mvtec_root):
    test = MVTecAD(str(mvtec_root), "bottle").splits().test
    for sample in test:
        if sample.label:
            assert (
                sample.mask
                == mvtec_root / "bottle" / "ground_truth" / sample.defect / f"{sample.image.stem}_mask.png"
            )
        else:
            assert sample.mask is None and sample.defect == "good"
    assert {s.defect for s in test} == {"good", "broken_large", "contamination"}


def test_unknown_category_lists_valid_ones(mvtec_root, one_sentence):
    with pytest.raises(DatasetError, match="carpet, grid") as caught:
        MVTecAD(mvtec_root, "bottles").splits()
    one_sentence(str(caught.value))


def test_missing_root_says_which_override(tmp_path, one_sentence):
    with pytest.raises(DatasetError, match=r"dataset\.root=") as caught:
        MVTecAD(tmp_path / "nowhere", "bottle").splits()
    assert "ground_truth" in str(caught.value)
    one_sentence(str(caught.value))


def test_missing_category_folder(mvtec_root, one_sentence):
    with pytest.raises(DatasetError, match="cable") as caught:
        MVTecAD(mvtec_root, "cable").splits()
    one_sentence(str(caught.value))


def test_empty_train_folder(mvtec_root, one_sentence):
    for image in (mvtec_root / "bottle" / "train" / "good").iterdir():
        image.unlink()
    with pytest.raises(DatasetError, match="holds no images") as caught:
        MVTecAD(mvtec_root, "bottle").splits()
    one_sentence(str(caught.value))


def test_missing_test_folder(mvtec_root):
    shutil.rmtree(mvtec_root / "bottle" / "test")
    with pytest.raises(DatasetError, match="test"):
        MVTecAD(mvtec_root, "bottle").splits()


def test_anomalous_image_without_mask(mvtec_root, one_sentence):
    (mvtec_root / "bottle" / "ground_truth" / "broken_large" / "a_b_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"a_b\.png has no mask") as caught:
        MVTecAD(mvtec_root, "bottle").splits()
    one_sentence(str(caught.value))


def test_loose_test_image_is_rejected(mvtec_root):
    shutil.copy(
        mvtec_root / "bottle" / "train" / "good" / "000.png", mvtec_root / "bottle" / "test" / "x.png"
    )
    with pytest.raises(DatasetError, match="outside a subfolder"):
        MVTecAD(mvtec_root, "bottle").splits()


def test_config_builds_the_reader_and_covers_every_category(dataset_config, mvtec_root, tmp_path):
    cfg = dataset_config("mvtec", tmp_path, f"dataset.root={mvtec_root}")
    source = instantiate(cfg.dataset.source)
    assert isinstance(source, MVTecAD) and source.category == "bottle"
    assert len(source.splits().train) == 3
    assert tuple(cfg.dataset.categories) == CATEGORIES
    assert set(cfg.dataset.foreground_rules) == {"default", *CATEGORIES}
    rules = {c: select_rule(cfg.dataset.foreground_rules, c) for c in CATEGORIES}
    assert {c for c, r in rules.items() if r.kind == "whole"} == {*CATEGORIES[:5], "transistor"}
    assert rules["screw"].invert and rules["screw"].threshold == 150
    assert rules["cable"].kind == "disc" and rules["cable"].radius == 0.45
    assert rules["pill"].kind == "threshold" and rules["pill"].threshold == 50 and not rules["pill"].invert


def test_default_root_uses_data_dir(dataset_config, tmp_path):
    cfg = dataset_config("mvtec", tmp_path)
    assert cfg.dataset.root == f"{tmp_path}/mvtec_anomaly_detection"
    assert cfg.dataset.name == "mvtec" and cfg.dataset.image_size == 256
