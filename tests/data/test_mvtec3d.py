"""MVTec 3D-AD RGB reader: rgb/ images, gt/ masks paired by name, xyz/ ignored."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from aand_lightning.data.mvtec3d import MVTec3DRGB
from aand_lightning.data.records import DatasetError
from aand_lightning.data.synthesis.foreground import ForegroundRule, select_rule


def test_splits_read_rgb_only(mvtec3d_root):
    splits = MVTec3DRGB(mvtec3d_root, "foam").splits()
    assert [s.image.relative_to(mvtec3d_root).as_posix() for s in splits.train] == [
        "foam/train/good/rgb/000.png",
        "foam/train/good/rgb/001.png",
    ]
    assert [(s.defect, s.image.name, s.label) for s in splits.test] == [
        ("cut", "a.png", 1),
        ("cut", "a_b.png", 1),
        ("good", "000.png", 0),
        ("good", "001.png", 0),
    ]


def test_masks_are_paired_by_name_and_good_has_none(mvtec3d_root):
    for sample in MVTec3DRGB(mvtec3d_root, "foam").splits().test:
        if sample.label:
            assert sample.mask == mvtec3d_root / "foam" / "test" / "cut" / "gt" / sample.image.name
        else:
            assert sample.mask is None


def test_anomalous_image_without_mask(mvtec3d_root, one_sentence):
    (mvtec3d_root / "foam" / "test" / "cut" / "gt" / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"rgb/a\.png has no mask") as caught:
        MVTec3DRGB(mvtec3d_root, "foam").splits()
    one_sentence(str(caught.value))


def test_empty_train_folder(mvtec3d_root):
    for image in (mvtec3d_root / "foam" / "train" / "good" / "rgb").iterdir():
        image.unlink()
    with pytest.raises(DatasetError, match="holds no images"):
        MVTec3DRGB(mvtec3d_root, "foam").splits()


def test_any_category_folder_in_mvtec3d_layout_is_read(mvtec3d_root):
    (mvtec3d_root / "foam").rename(mvtec3d_root / "my_part")
    splits = MVTec3DRGB(mvtec3d_root, "my_part").splits()
    assert len(splits.train) == 2 and [s.label for s in splits.test] == [1, 1, 0, 0]


def test_close_category_suggested_missing_root_and_missing_category(mvtec3d_root, tmp_path, one_sentence):
    with pytest.raises(DatasetError, match=r"\(did you mean 'cable_gland'\?\)") as caught:
        MVTec3DRGB(mvtec3d_root, "cable-gland", categories=("bagel", "cable_gland")).splits()
    one_sentence(str(caught.value))
    with pytest.raises(DatasetError, match=r"\(did you mean 'foam'\?\)"):
        MVTec3DRGB(mvtec3d_root, "Foam").splits()
    with pytest.raises(DatasetError, match=r"dataset\.root=") as caught:
        MVTec3DRGB(tmp_path / "nowhere", "foam").splits()
    one_sentence(str(caught.value))
    with pytest.raises(DatasetError, match="tire"):
        MVTec3DRGB(mvtec3d_root, "tire").splits()


def test_config_builds_the_reader_with_spec_rules(dataset_config, mvtec3d_root, tmp_path):
    cfg = dataset_config("mvtec3d", tmp_path, f"dataset.root={mvtec3d_root}", "dataset.category=foam")
    source = instantiate(cfg.dataset.source)
    assert isinstance(source, MVTec3DRGB) and len(source.splits().test) == 4
    categories = tuple(cfg.dataset.categories)
    assert source.categories == categories and len(categories) == 10
    rules = {c: select_rule(cfg.dataset.foreground_rules, c) for c in (*categories, "my_part")}
    assert {c for c, r in rules.items() if r.kind == "rect"} == {"foam", "tire"}
    assert rules["tire"].extent == 0.7
    assert all(r.threshold == 50 for c, r in rules.items() if c not in ("foam", "tire"))
    assert rules["my_part"] == ForegroundRule("threshold", threshold=50)
