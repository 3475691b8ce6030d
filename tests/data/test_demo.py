"""Generated demo data: MVTec layout, deterministic, generated once, exact defect masks."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from aand_lightning.data import demo
from aand_lightning.data.demo import DEFECTS, MARKER, DemoDataset, add_defect, generate_demo, normal_view
from aand_lightning.data.io import read_image, read_mask
from aand_lightning.data.records import DatasetError


def _files(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()
    }


def _mtimes(folder: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*")}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    generate_demo(root, categories=("brick",))
    return root


def test_layout_counts_and_labels(demo_root):
    splits = DemoDataset(demo_root, "brick").splits()
    assert len(splits.train) == demo.N_TRAIN == 40
    assert sum(s.label == 0 for s in splits.test) == demo.N_TEST_GOOD == 10
    for kind in DEFECTS:
        assert sum(s.defect == kind for s in splits.test) == demo.N_PER_DEFECT == 5
    assert len(DEFECTS) >= 3


def test_images_are_coloured_rgb_at_image_size(demo_root):
    image = read_image(DemoDataset(demo_root, "brick").splits().train[0].image)
    assert image.shape == (128, 128, 3)
    assert np.abs(image[..., 0].astype(int) - image[..., 2]).mean() > 10  # tinted, not gray


def test_defect_masks_are_non_empty_and_good_has_none(demo_root):
    for sample in DemoDataset(demo_root, "brick").splits().test:
        if sample.label:
            assert sample.mask.name == f"{sample.image.stem}_mask.png"
            mask = read_mask(sample.mask, size=(128, 128))
            assert 0 < mask.mean() < 0.5
        else:
            assert sample.mask is None and sample.defect == "good"


@pytest.mark.parametrize("kind", DEFECTS)
def test_defect_mask_is_exactly_the_changed_pixels(kind):
    rng = np.random.default_rng(3)
    for _ in range(4):
        image = normal_view(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8), rng, 96)
        defective, mask = add_defect(image, kind, rng)
        assert defective.shape == image.shape and defective.dtype == np.uint8
        assert mask.any()
        np.testing.assert_array_equal(mask, (defective != image).any(axis=-1))


def test_same_seed_gives_identical_bytes(demo_root, tmp_path):
    generate_demo(tmp_path, categories=("brick",))
    assert _files(tmp_path / "brick") == _files(demo_root / "brick")


def test_other_seed_gives_other_images(demo_root, tmp_path):
    generate_demo(tmp_path, categories=("brick",), seed=1, image_size=64)
    assert (tmp_path / "brick/train/good/000.png").read_bytes() != (
        demo_root / "brick/train/good/000.png"
    ).read_bytes()
    assert read_image(tmp_path / "brick/train/good/000.png").shape == (64, 64, 3)


def test_second_use_does_not_regenerate(demo_root):
    before = _mtimes(demo_root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DemoDataset(demo_root, "brick").splits()
    assert _mtimes(demo_root) == before
    assert sorted(p.name for p in demo_root.iterdir()) == ["brick"]  # no temporary folders left


def test_incomplete_folder_is_regenerated(tmp_path):
    target = generate_demo(tmp_path, categories=("grass",))[0]
    expected = _files(target)
    (target / MARKER).unlink()
    (target / "train" / "good" / "000.png").unlink()
    with pytest.warns(UserWarning, match="Regenerating demo data"):
        DemoDataset(tmp_path, "grass").splits()
    assert _files(target) == expected
    assert json.loads((target / MARKER).read_text())["seed"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grass"]


def test_crash_leaves_no_half_dataset(tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo, "add_defect", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        DemoDataset(tmp_path, "gravel").splits()
    assert list(tmp_path.iterdir()) == []


def test_unknown_category(tmp_path, one_sentence):
    with pytest.raises(DatasetError, match="brick, grass, gravel") as caught:
        DemoDataset(tmp_path, "wood").splits()
    one_sentence(str(caught.value))


def test_config_builds_the_demo(dataset_config, demo_root):
    cfg = dataset_config("demo", demo_root.parent, f"dataset.root={demo_root}")
    source = instantiate(cfg.dataset.source)
    assert isinstance(source, DemoDataset) and source.category == "brick"
    assert len(source.splits().train) == 40
    assert tuple(cfg.dataset.categories) == demo.CATEGORIES and cfg.dataset.image_size == 128
    assert dict(cfg.dataset.foreground_rules) == {"default": {"kind": "whole"}}
    assert dataset_config("demo", Path("/data")).dataset.root == "/data/aand_demo"


@pytest.mark.parametrize("test_from_train_part", [False, True])
def test_test_crops_come_from_the_part_asked_for(test_from_train_part, tmp_path, monkeypatch):
    """Train crops come from the top of the photo; test crops from the rest, or (for the fusion check
    of benchmarks/unseen_defects.py) from the same top part as the train ones."""
    rows: list[int] = []  # the height of the photo part each normal view is cropped from

    def recording_view(source: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
        rows.append(len(source))
        return normal_view(source, rng, size)

    monkeypatch.setattr(demo, "normal_view", recording_view)
    demo.write_category(tmp_path, "brick", 0, 32, test_from_train_part=test_from_train_part)
    train_rows, test_rows = rows[: demo.N_TRAIN], rows[demo.N_TRAIN :]
    assert len(set(train_rows)) == 1 and len(test_rows) == demo.N_TEST_GOOD + len(DEFECTS) * demo.N_PER_DEFECT
    assert set(test_rows) == (
        set(train_rows) if test_from_train_part else {len(demo._texture("brick")) - train_rows[0]}
    )
