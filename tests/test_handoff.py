"""The stage-1 cache is content-addressed: reused only for the same settings and the same files."""

import os
import shutil
from pathlib import Path

import torch

from aand_lightning.config import config_file
from aand_lightning.data.demo import ensure_category
from aand_lightning.handoff import load_teacher, save_teacher
from aand_lightning.models.build import build_amplified_teacher


def _folders(tmp_path):
    """Two folders of different normal images, and the same category name for both."""
    source = sorted((ensure_category(tmp_path / "demo", "brick", image_size=64) / "train" / "good").iterdir())
    folders = {}
    for name, images in (("line_a", source[:12]), ("line_b", source[12:24])):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        for image in images:
            shutil.copy2(image, folders[name] / image.name)
    return folders


def _stage_all(train_in_process, run: str, train_dir):
    overrides = ["stage=all", "dataset=folder", f"dataset.train_dir={train_dir}", "dataset.category=part"]
    records, _ = train_in_process(run, *overrides)
    return records[0].get("cached_from")


def test_cache_reuses_only_the_same_files(train_in_process, tmp_path):
    folders = _folders(tmp_path)
    assert _stage_all(train_in_process, "first", folders["line_a"]) is None  # stage 1 trains and is stored
    reused = _stage_all(train_in_process, "same", folders["line_a"])  # same data: the cached teacher
    assert reused is not None and Path(reused).name == "teacher.pt" and Path(reused).is_file()
    # same category name, other folder: another teacher
    assert _stage_all(train_in_process, "other_folder", folders["line_b"]) is None
    # a changed training file (rewritten later, new mtime): another teacher
    image = next(folders["line_a"].iterdir())
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert _stage_all(train_in_process, "changed_file", folders["line_a"]) is None


def test_an_artifact_without_newer_raa_settings_loads_with_the_config_values(tmp_path):
    raa = config_file("raa/default.yaml")
    teacher = build_amplified_teacher({"name": "resnet18", "weights": "none"}, raa)
    old = {k: v for k, v in raa.items() if k not in ("max_hidden", "eps")}  # as an older version wrote it
    save_teacher(tmp_path / "teacher.pt", teacher, {"name": "resnet18"}, old)
    loaded, about = load_teacher(tmp_path / "teacher.pt", {"name": "resnet18"}, raa)
    assert about["raa"] == raa
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in teacher.state_dict().items())
