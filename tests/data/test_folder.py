"""Custom folder reader: flat train folder, labelled test subfolders, masks matched by stem."""

from __future__ import annotations

import shutil

import pytest
from hydra.utils import instantiate

from aand_lightning.data.folder import ImageFolder
from aand_lightning.data.records import DatasetError


def _reader(root, **kwargs) -> ImageFolder:
    return ImageFolder(root / "train", root / "test", root / "masks", **kwargs)


def test_splits_labels_and_masks(folder_root):
    splits = _reader(folder_root, category="my_parts").splits()
    assert [s.image.name for s in splits.train] == ["000.png", "001.png"]
    assert [(s.defect, s.image.name, s.label, s.mask) for s in splits.test] == [
        ("dent", "d1.png", 1, folder_root / "masks" / "d1.png"),
        ("good", "ok.png", 0, None),
        ("scratch", "a.png", 1, folder_root / "masks" / "scratch" / "a_mask.png"),
        ("scratch", "a_b.png", 1, folder_root / "masks" / "scratch" / "a_b_mask.png"),
    ]


def test_defect_subfolder_wins_over_flat_mask_folder(folder_root):
    shutil.copy(folder_root / "masks" / "d1.png", folder_root / "masks" / "a_mask.png")
    (folder_root / "masks" / "dent").mkdir()
    shutil.copy(folder_root / "masks" / "d1.png", folder_root / "masks" / "dent" / "d1.png")
    test = {s.image.name: s.mask for s in _reader(folder_root).splits().test}
    assert test["a.png"] == folder_root / "masks" / "scratch" / "a_mask.png"
    assert test["d1.png"] == folder_root / "masks" / "dent" / "d1.png"


def test_any_category_name_and_no_test_dir(folder_root):
    splits = ImageFolder(str(folder_root / "train"), category="anything at all").splits()
    assert len(splits.train) == 2 and splits.test == []


def test_train_dir_is_required(one_sentence):
    with pytest.raises(DatasetError, match=r"dataset\.train_dir=") as caught:
        ImageFolder(None).splits()
    one_sentence(str(caught.value))


def test_missing_and_empty_train_dir(tmp_path):
    with pytest.raises(DatasetError, match=r"does not exist; pass dataset\.train_dir="):
        ImageFolder(tmp_path / "nowhere").splits()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        ImageFolder(tmp_path / "empty").splits()


def test_missing_test_dir(folder_root, tmp_path):
    with pytest.raises(DatasetError, match=r"dataset\.test_dir="):
        ImageFolder(folder_root / "train", tmp_path / "nowhere").splits()


def test_anomalies_without_mask_dir_have_unknown_masks(folder_root):
    """Image labels only: every anomalous image is kept, its mask unknown (image metrics only)."""
    test = ImageFolder(folder_root / "train", folder_root / "test").splits().test
    assert [(s.image.name, s.label, s.mask, s.mask_known) for s in test] == [
        ("d1.png", 1, None, False),
        ("ok.png", 0, None, True),
        ("a.png", 1, None, False),
        ("a_b.png", 1, None, False),
    ]


def test_masks_for_only_some_anomalies(folder_root):
    (folder_root / "masks" / "d1.png").unlink()
    test = {s.image.name: s for s in _reader(folder_root).splits().test}
    assert test["d1.png"].mask is None and not test["d1.png"].mask_known
    assert test["a.png"].mask == folder_root / "masks" / "scratch" / "a_mask.png" and test["a.png"].mask_known
    assert test["ok.png"].mask_known  # a normal image's mask is known: all zero


def test_missing_mask_dir_names_the_fix(folder_root, tmp_path, one_sentence):
    """A mistyped mask_dir is an error, not a silent run without masks."""
    with pytest.raises(DatasetError, match=r"dataset\.mask_dir=") as caught:
        ImageFolder(folder_root / "train", folder_root / "test", tmp_path / "nowhere").splits()
    one_sentence(str(caught.value))


def test_flat_test_folder_is_rejected(folder_root, one_sentence):
    shutil.copy(folder_root / "train" / "000.png", folder_root / "test" / "loose.png")
    with pytest.raises(DatasetError, match="outside a subfolder") as caught:
        _reader(folder_root).splits()
    assert "loose.png" in str(caught.value)
    one_sentence(str(caught.value))


def test_config_builds_the_reader(dataset_config, folder_root, tmp_path):
    cfg = dataset_config(
        "folder",
        tmp_path,
        f"dataset.train_dir={folder_root / 'train'}",
        f"dataset.test_dir={folder_root / 'test'}",
        f"dataset.mask_dir={folder_root / 'masks'}",
    )
    source = instantiate(cfg.dataset.source)
    assert isinstance(source, ImageFolder)
    assert len(source.splits().test) == 4
    assert dict(cfg.dataset.foreground_rules) == {"default": {"kind": "whole"}}


def test_config_without_train_dir_fails_with_the_fix(dataset_config, tmp_path):
    source = instantiate(dataset_config("folder", tmp_path).dataset.source)
    with pytest.raises(DatasetError, match=r"dataset\.train_dir="):
        source.splits()
