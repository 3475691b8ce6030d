"""The checklist of user mistakes (issue 23): each goes through the real entry point (`train`, `eval`,
`predict`, `export`: their `main`, Hydra parsing the arguments) in this process. A mistake ends in one line,
`Error: ...`, on stderr that names the key, option or file to fix, exit status 2, and no run directory
that looks finished. The cases the tool can absorb run, and say what they left out.

The first group broke or misled before issue 23; the second already gave one sentence and must keep it.
Runs that need trained files share the session's smallest real run (`stage_all`: resnet18 without
weights, 64 px, demo data; its amplifier is in the amplifier cache).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
import wandb
from PIL import Image

from aand_lightning.inference import find_images

DEMO_CATEGORY = "brick"


@dataclass(frozen=True)
class Context:
    """Where the session's trained run and its data are, and this test's own folder."""

    shared: Path  # holds demo/ (data), cache/ (amplifiers) and run_all/ (the trained run)
    tmp: Path

    @property
    def trained(self) -> Path:
        return self.shared / "run_all"

    @property
    def checkpoint(self) -> Path:
        return self.trained / "distill" / "checkpoints" / "last.ckpt"

    @property
    def amplifier(self) -> Path:
        return self.trained / "amplify" / "amplifier.pt"

    @property
    def demo(self) -> Path:
        return self.shared / "demo"


def _looks_finished(run_dir: Path) -> bool:
    """What a finished (or resumable) run leaves: metrics, checkpoints, an amplifier."""
    patterns = ("**/metrics.json", "**/*.ckpt", "**/amplifier.pt", "**/scores.csv")
    return run_dir.exists() and any(next(run_dir.glob(p), None) for p in patterns)


@pytest.fixture
def context(stage_all, tmp_path) -> Context:
    return Context(stage_all.parent, tmp_path)


@pytest.fixture
def mistake(context, cli_arguments, cli_in_process):
    """Run `entry` with `args` and check the one-sentence refusal that names `named`; returns the line."""

    def run(
        entry: str, args: list[str], named: str | list[str], run_dir: Path | None = None, smoke: bool = True
    ) -> str:
        """`smoke`: a train command line gets the smallest run's settings, the demo data and `run_dir`."""
        run_dir = run_dir or context.tmp / "run"
        if entry == "train":
            args = (
                cli_arguments(context.shared, run_dir, *args)
                if smoke
                else [*args, f"hydra.run.dir={run_dir}"]
            )
        result = cli_in_process(entry, *args, cwd=context.tmp)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, result.stderr[-3000:]
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr[-3000:]
        for name in [named] if isinstance(named, str) else named:
            assert name in lines[0]
        assert not _looks_finished(run_dir)
        return lines[0]

    return run


# --- broken or misleading before issue 23 -----------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["datamodule.batchsize=4"], "did you mean 'datamodule.batch_size'?"),
        (["+datamodule.batchsize=4"], "did you mean 'batch_size'?"),
        (["backbone=resnet19"], "backbone=resnet19 is not an option of backbone (did you mean 'resnet18'?)"),
        (["stage=foo"], "stage=foo is not an option of stage; choose one of all, amplify, distill"),
        (["augment=flipz"], "(did you mean 'flips'?)"),
        (["logger=[csv,tensorbord]"], "(did you mean 'tensorboard'?)"),
        (["dataset.category=brick,grass"], "add -m to sweep over its values"),
    ],
    ids=["key", "added-key", "group-option", "stage", "augment", "logger-list", "sweep-without-m"],
)
def test_1_mistakes_hydra_catches_are_one_sentence(mistake, overrides, named):
    mistake("train", overrides, named)


@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("resnet19", "backbone.name=resnet19 is not a timm model (did you mean 'resnet18'?)"),
        ("vit_tiny_patch16_224", "backbone.name=vit_tiny_patch16_224 has feature strides [16, 16, 16]"),
    ],
)
def test_2_an_unusable_backbone_is_refused_before_the_data_is_read(mistake, context, name, named):
    """The dataset root does not exist either: the backbone's sentence shows it was checked first."""
    mistake("train", [f"backbone.name={name}", f"dataset.root={context.tmp / 'no_data'}"], named)


def test_3_predict_without_a_checkpoint(mistake):
    mistake("predict", ["input=x"], "ckpt=<run dir>/distill/checkpoints/last.ckpt")


def test_4_and_10_predict_with_an_unreadable_labelled_image_works_and_counts_it(
    context, cli_in_process, recwarn
):
    """threshold=f1 takes its labels from the images it read; the last line counts what was predicted and
    the warning names no training option."""
    labelled = context.tmp / "labelled"
    for path in find_images(context.demo / DEMO_CATEGORY / "test"):
        (labelled / path.parent.name).mkdir(parents=True, exist_ok=True)
        (labelled / path.parent.name / path.name).symlink_to(path)
    (labelled / "good" / "broken.png").write_bytes(b"not an image")
    out = context.tmp / "out"
    result = cli_in_process(
        "predict", f"ckpt={context.checkpoint}", f"input={labelled}", f"output={out}", "threshold=f1",
        f"threshold_images={labelled}", "batch_size=4", cwd=context.tmp,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert f"Predicted {len(rows)} images (1 unreadable, skipped)" in result.stdout
    skipped = [str(w.message) for w in recwarn if "broken.png" in str(w.message)]
    assert skipped and not any("on_corrupt" in message for message in skipped)


def test_5_a_wandb_login_where_wandb_keeps_it_is_found(mistake, wandb_home, no_network):
    """A key stored by `wandb login` under wandb's own default server: the run gets as far as that server
    (no network here) and stops in seconds, instead of telling a logged-in user to log in."""
    server = wandb.Settings().base_url
    wandb_home.write_text(f"machine {urlsplit(server).netloc}\n  login user\n  password {'k' * 40}\n")
    mistake(
        "train", ["logger=wandb"], [f"has credentials for {server} but cannot reach it", "WANDB_MODE=offline"]
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="the mistake is a GPU recipe on a machine without one")
def test_6_a_gpu_recipe_without_a_gpu_names_trainer_cpu(mistake):
    """The recipe as a user runs it (its own trainer, data and backbone), refused before anything is read."""
    named = ["trainer.accelerator=gpu", "pass trainer=cpu"]
    mistake("train", ["experiment=paper_mvtec", "dataset.root=/nope"], named, smoke=False)


def test_7_a_mistyped_dataset_root_downloads_nothing(mistake, context):
    (context.tmp / "mvtec").mkdir()
    typo = context.tmp / "mvtecrot"
    mistake(
        "train", ["dataset=mvtec", f"dataset.root={typo}"],
        [f"dataset.root {typo} does not exist (did you mean 'mvtec'?)", "dataset.download=true"],
    )  # fmt: skip
    assert not typo.exists() and not list(context.tmp.rglob("*.lock"))  # no folder, no lock file


def test_8_resume_from_a_wrong_run_dir_stops_even_with_a_cached_amplifier(mistake, context):
    """The session run's amplifier is in the cache: a resume that finds nothing must not start afresh."""
    wrong = context.tmp / "typo_run"
    mistake("train", ["stage=all", "ckpt_path=last"], f"found nothing to resume in {wrong}", run_dir=wrong)


def test_9_masks_of_another_size_are_reported_by_the_data_check_before_training(mistake, context, recwarn):
    """The run stops at its first model (a missing weights file): the mask warning came before it."""
    source = context.demo / DEMO_CATEGORY
    train, test = context.tmp / "line" / "train", context.tmp / "line" / "test"
    train.mkdir(parents=True)
    for path in find_images(source / "train" / "good")[:4]:
        (train / path.name).symlink_to(path)
    (test / "good").mkdir(parents=True)
    (test / "scratch").mkdir()
    (test / "good" / "0.png").symlink_to(find_images(source / "test" / "good")[0])
    (test / "scratch" / "1.png").symlink_to(find_images(source / "test" / "scratch")[0])
    masks = context.tmp / "line" / "masks"
    masks.mkdir()
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(masks / "1_mask.png")
    missing = context.tmp / "weights.pth"
    folder = [
        "dataset=folder", f"dataset.train_dir={train}", f"dataset.test_dir={test}",
        f"dataset.mask_dir={masks}", "dataset.image_size=64", f"backbone.weights={missing}",
    ]  # fmt: skip
    mistake("train", folder, str(missing))
    size = Image.open(test / "scratch" / "1.png").size
    assert any(
        re.search(
            rf"1 mask\(s\) differ in size .*1_mask\.png is 8x8, its image {size[1]}x{size[0]}", str(w.message)
        )
        for w in recwarn
    )


def test_11_the_authors_protocol_with_fewer_epochs_than_its_evaluation_interval(mistake):
    mistake("train", ["protocol=authors", "amplify.epochs=2"], ["amplify.epochs=2", "protocol=authors"])


def test_12_a_backbone_mismatch_names_the_option_a_user_passes(mistake, context):
    line = mistake(
        "train",
        [
            "stage=distill",
            f"amplifier={context.amplifier}",
            "backbone=wide_resnet50_2",
            "backbone.weights=none",
        ],
        ["trained with backbone=resnet18", "this run uses backbone=wide_resnet50_2"],
    )
    assert "tv_in1k" not in line


# --- already one sentence before issue 23 -----------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["dataset.category=brik"], "'brik'; set dataset.category to one of brick"),
        (["dataset.image_size=100"], "dataset.image_size=100"),
        (["datamodule.batch_size=0"], "datamodule.batch_size=0"),
        (["amplify.epochs=0"], "amplify.epochs=0"),
        (["ckpt_path=/nope.ckpt"], "ckpt_path=/nope.ckpt"),
        (["anomaly_map.output=on"], "anomaly_map.output=on"),
        (["distill.threshold_quantile=1.5"], "distill.threshold_quantile=1.5"),
        (["evaluation.fpr_limit=0"], "evaluation.fpr_limit=0"),
        (["datamodule.on_corrupt=maybe"], "datamodule.on_corrupt"),
        (["stage=distill", "amplifier=/nope.pt"], "/nope.pt"),
        (["optimized_metric=foo/bar"], "optimized_metric=foo/bar"),
        (["backbone.weights=/nope.pth"], "/nope.pth"),
        (["raa=off", "anomaly_map.output=fused"], "anomaly_map.output=fused"),
        (["dataset=folder", "dataset.train_dir=/nope_dir"], "/nope_dir"),
        (["synthesis.clean_probability=2"], "synthesis.clean_probability"),
    ],
)
def test_training_mistakes_that_already_were_one_sentence(mistake, overrides, named):
    mistake("train", overrides, named)


def test_wandb_without_a_login_names_the_ways_out(mistake, wandb_home, no_network):
    mistake("train", ["logger=wandb"], ["wandb login", "WANDB_MODE=offline", "logger=csv"])


def test_predict_export_and_eval_mistakes_that_already_were_one_sentence(mistake, context):
    out = [f"output={context.tmp / 'out'}"]
    mistake("predict", ["ckpt=/nope.ckpt", "input=x", *out], "/nope.ckpt")
    mistake("predict", [f"ckpt={context.amplifier}", f"input={context.demo}", *out], "amplifier")
    mistake("predict", [f"ckpt={context.checkpoint}", f"input={context.tmp / 'missing'}", *out], "input=")
    mistake("export", [f"ckpt={context.checkpoint}", "format=bogus", *out], ["'bogus'", "format=onnx"])
    mistake(
        "eval", [f"ckpt={context.amplifier}", "dataset=demo", f"dataset.root={context.demo}",
                 f"hydra.run.dir={context.tmp / 'run'}"],
        "stage-1 amplifier",
    )  # fmt: skip
