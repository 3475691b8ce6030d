"""MVTec AD reader: counts, labels, masks paired by name, and every layout error names its fix."""

from __future__ import annotations

import shutil

import pytest
from hydra.utils import instantiate

from aand_lightning.data.mvtec import MVTecAD
from aand_lightning.data.records import DatasetError
from aand_lightning.data.synthesis.foreground import ForegroundRule, select_rule


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


def test_any_category_folder_in_mvtec_layout_is_read(mvtec_root):
    (mvtec_root / "bottle").rename(mvtec_root / "my_part")
    splits = MVTecAD(mvtec_root, "my_part", categories=("bottle", "cable")).splits()
    assert len(splits.train) == 3 and len(splits.test) == 5
    assert all(s.image.is_relative_to(mvtec_root / "my_part") for s in splits.train + splits.test)


@pytest.mark.parametrize(
    ("category", "known", "suggestion"),
    [("bottles", (), "bottle"), ("screws", ("screw", "zipper"), "screw"), ("zzz", ("screw",), None)],
)
def test_missing_category_suggests_a_close_folder_or_known_name(
    mvtec_root, one_sentence, category, known, suggestion
):
    with pytest.raises(DatasetError, match=category) as caught:
        MVTecAD(mvtec_root, category, categories=known).splits()
    message = str(caught.value)
    if suggestion:
        assert f"(did you mean '{suggestion}'?)" in message
    else:
        assert "did you mean" not in message
    one_sentence(message)


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
    categories = tuple(cfg.dataset.categories)
    assert source.categories == categories and len(categories) == 15
    assert set(cfg.dataset.foreground_rules) == {"default", *categories}
    rules = {c: select_rule(cfg.dataset.foreground_rules, c) for c in categories}
    textures = {"carpet", "grid", "leather", "tile", "wood"}
    assert {c for c, r in rules.items() if r.kind == "whole"} == {*textures, "transistor"}
    assert rules["screw"].invert and rules["screw"].threshold == 150
    assert rules["cable"].kind == "disc" and rules["cable"].radius == 0.45
    assert rules["pill"].kind == "threshold" and rules["pill"].threshold == 50 and not rules["pill"].invert
    assert select_rule(cfg.dataset.foreground_rules, "my_part") == ForegroundRule("threshold", threshold=50)


def test_default_root_uses_data_dir(dataset_config, tmp_path):
    cfg = dataset_config("mvtec", tmp_path)
    assert cfg.dataset.root == f"{tmp_path}/mvtec_anomaly_detection"
    assert cfg.dataset.name == "mvtec" and cfg.dataset.image_size == 256
