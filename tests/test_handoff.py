"""The stage-1 cache is content-addressed: reused only for the same settings and the same files."""

import os
import shutil

from aand_lightning.data.demo import ensure_category


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
    assert _stage_all(train_in_process, "same", folders["line_a"]) is not None  # same data: reused
    # same category name, other folder: another teacher
    assert _stage_all(train_in_process, "other_folder", folders["line_b"]) is None
    # a changed training file (rewritten later, new mtime): another teacher
    image = next(folders["line_a"].iterdir())
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert _stage_all(train_in_process, "changed_file", folders["line_a"]) is None
