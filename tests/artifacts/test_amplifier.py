"""The stage-1 amplifier: the cache is content-addressed (reused only for the same settings and the
same files), and files of older versions still load."""

import os
import shutil
from pathlib import Path

import torch

from aand_lightning.artifacts.amplifier import load_amplifier, read_amplifier, save_amplifier
from aand_lightning.config import config_file
from aand_lightning.data.demo import ensure_category
from aand_lightning.models.build import build_teacher


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
    reused = _stage_all(train_in_process, "same", folders["line_a"])  # same data: the cached amplifier
    assert reused is not None and Path(reused).name == "amplifier.pt" and Path(reused).is_file()
    # same category name, other folder: another amplifier
    assert _stage_all(train_in_process, "other_folder", folders["line_b"]) is None
    # a changed training file (rewritten later, new mtime): another amplifier
    image = next(folders["line_a"].iterdir())
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert _stage_all(train_in_process, "changed_file", folders["line_a"]) is None


def test_an_amplifier_without_newer_raa_settings_loads_with_the_config_values(tmp_path):
    raa = config_file("raa/default.yaml")
    teacher = build_teacher({"name": "resnet18", "weights": "none"}, raa)
    old = {k: v for k, v in raa.items() if k not in ("max_hidden", "eps")}  # as an older version wrote it
    save_amplifier(tmp_path / "amplifier.pt", teacher, {"name": "resnet18"}, old)
    loaded, about = load_amplifier(tmp_path / "amplifier.pt", {"name": "resnet18"}, raa)
    assert about["raa"] == raa
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in teacher.state_dict().items())


def test_an_amplifier_from_before_the_renames_still_loads(tmp_path):
    """Stage 1 once wrote `teacher.pt` in format aand-teacher/2, with the encoder's keys as `teacher.*`
    (the encoder was `AmplifiedTeacher.teacher`): found in the run dir, read and loaded (strictly)."""
    backbone, raa = (
        {"name": "resnet18", "weights": "none"},
        {**config_file("raa/default.yaml"), "num_prototypes": 4},
    )
    torch.manual_seed(0)
    saved = build_teacher(backbone, raa)
    state = {
        f"teacher.{k.removeprefix('encoder.')}" if k.startswith("encoder.") else k: v
        for k, v in saved.state_dict().items()
    }
    assert any(k.startswith("teacher.backbone.") for k in state)
    assert not any(k.startswith("encoder.") for k in state)
    old = {
        "format": "aand-teacher/2",
        "backbone": dict(backbone),
        "raa": raa,
        "textures": None,
        "state_dict": state,
    }
    run_dir = tmp_path / "run"
    (run_dir / "amplify").mkdir(parents=True)
    torch.save(old, run_dir / "amplify" / "teacher.pt")
    read = read_amplifier(run_dir)
    assert read["path"] == run_dir / "amplify" / "teacher.pt"
    assert set(read["state_dict"]) == set(saved.state_dict())
    torch.manual_seed(1)  # other initial weights: only what the file holds can make them equal
    loaded, about = load_amplifier(run_dir, backbone, raa)
    assert about["raa"] == raa and about["backbone"]["name"] == "resnet18"
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in saved.state_dict().items())
