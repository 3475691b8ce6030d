"""`eval`: a stage-2 checkpoint tested on any dataset by training's own test pass. On the training
run's own test set it gives that run's numbers; on other data it resizes by the checkpoint."""

import json
from pathlib import Path

import pytest
from PIL import Image

from aand_lightning.eval import evaluate

# What a metrics.json says about the model and its test; the rest says how it was made (training's
# fit time, stage 1's textures) or how fast this pass ran.
SAME = ("stage", "dataset", "category", "seed", "map", "backbone", "raa", "fpr_limit", "protocol", "metrics",
        "metrics_by_map", "pixel_coverage", "map_details", "notes")  # fmt: skip


def _checkpoint(run_dir: Path) -> Path:
    return run_dir / "distill" / "checkpoints" / "last.ckpt"


def test_eval_on_the_training_runs_test_set_gives_its_numbers(stage_all, cli_arguments):
    """The training run's overrides, its checkpoint: the same metrics.json, heatmaps, ROC and histogram."""
    eval_dir = stage_all.parent / "eval_own"
    arguments = cli_arguments(stage_all.parent, eval_dir, "logger=csv", "evaluation.heatmaps=3", "stage=all")
    metrics = evaluate([*arguments, f"ckpt={_checkpoint(stage_all)}"])
    trained = json.loads((stage_all / "distill" / "metrics.json").read_text())
    evaluated = json.loads((eval_dir / "distill" / "metrics.json").read_text())
    assert {key: evaluated[key] for key in SAME} == {key: trained[key] for key in SAME}
    assert metrics == trained["metrics"] and len(trained["metrics_by_map"]) == 3  # aand, gate, fused
    assert evaluated["checkpoint"] == str(_checkpoint(stage_all))
    assert json.loads((eval_dir / "metrics.json").read_text()) == [evaluated]
    assert sorted(p.name for p in (eval_dir / "distill" / "heatmaps").glob("*.png")) == sorted(
        p.name for p in (stage_all / "distill" / "heatmaps").glob("*.png")
    )
    assert (eval_dir / "distill" / "roc.png").is_file() and (
        eval_dir / "distill" / "score_histogram.png"
    ).is_file()


def _folder_dataset(demo: Path, root: Path, size: int) -> list[str]:
    """A `dataset=folder` in another layout and size: four of brick's good test images and four of its
    stain defects with their masks, resized to `size` px (the training images stay its train folder)."""
    for split, source in (("test/good", demo / "test" / "good"), ("test/stain", demo / "test" / "stain"),
                          ("masks/stain", demo / "ground_truth" / "stain")):  # fmt: skip
        (root / split).mkdir(parents=True)
        for path in sorted(source.glob("*.png"))[:4]:
            resample = Image.NEAREST if split.startswith("masks") else Image.BICUBIC
            Image.open(path).resize((size, size), resample).save(root / split / path.name)
    return [
        "dataset=folder", "dataset.category=resized", f"dataset.train_dir={demo / 'train' / 'good'}",
        f"dataset.test_dir={root / 'test'}", f"dataset.mask_dir={root / 'masks'}",
    ]  # fmt: skip


def test_eval_on_another_dataset_resizes_by_the_checkpoint(stage_all, cli_arguments, cli_in_process):
    """Through the command line, another dataset (a folder of 96 px images, configured at the folder
    default 256 px) for the model trained at 64 px: the checkpoint's preprocessing decides."""
    eval_dir = stage_all.parent / "eval_folder"
    dataset = _folder_dataset(stage_all.parent / "demo" / "brick", stage_all.parent / "resized", 96)
    arguments = [a for a in cli_arguments(stage_all.parent, eval_dir, *dataset) if "image_size" not in a]
    result = cli_in_process("eval", *arguments, f"ckpt={_checkpoint(stage_all)}", cwd=stage_all.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((eval_dir / "distill" / "metrics.json").read_text())
    assert (record["dataset"], record["category"], record["backbone"]) == ("folder", "resized", "resnet18")
    assert all(0.0 <= record["metrics"][key] <= 1.0 for key in ("image_auroc", "pixel_auroc", "aupro"))
    assert "| folder | resized | distill |" in result.stdout  # the summary table
    (panel,) = (eval_dir / "distill" / "heatmaps").glob("*.png")  # smoke: evaluation.heatmaps=1
    trained_panel = next((stage_all / "distill" / "heatmaps").glob("*.png"))
    assert Image.open(panel).size == Image.open(trained_panel).size  # the model's 64 px, not 96 or 256


@pytest.mark.parametrize(
    ("ckpt", "message"),
    [
        (None, "pass ckpt=<run dir>/distill/checkpoints/last.ckpt"),
        ("amplify/amplifier.pt", "is a stage-1 amplifier, not a trained detector"),
    ],
)
def test_eval_without_a_stage2_checkpoint_names_the_fix(
    stage_all, cli_arguments, cli_in_process, ckpt, message
):
    arguments = cli_arguments(stage_all.parent, stage_all.parent / "eval_refused")
    checkpoint = [] if ckpt is None else [f"ckpt={stage_all / ckpt}"]
    result = cli_in_process("eval", *arguments, *checkpoint, cwd=stage_all.parent)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    # a missing ckpt stops before the run starts; a wrong one fails the run, which records it
    assert (stage_all.parent / "eval_refused" / "failed.json").is_file() == (ckpt is not None)
