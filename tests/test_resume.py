"""A killed run resumed with ckpt_path=last ends with the same metrics as an uninterrupted run."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EPOCHS = 6


def _command(tmp: Path, run_dir: Path, stage_overrides: list[str], *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "aand_lightning.train",
        "dataset=demo", f"dataset.root={tmp / 'demo'}", "dataset.image_size=64",
        "backbone=resnet18", "backbone.weights=none", "trainer=debug", "trainer.enable_progress_bar=false",
        "datamodule.batch_size=4", "datamodule.num_workers=0", "evaluation.heatmaps=1", "teacher_cache=null",
        f"paths.cache_dir={tmp / 'cache'}", f"hydra.run.dir={run_dir}", *stage_overrides, *extra,
    ]  # fmt: skip


def _kill_after_first_epochs(command: list[str], cwd: Path, checkpoint: Path) -> None:
    """Start a run and SIGKILL it once an epoch checkpoint has been written (a crash, not a clean stop)."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # let the checkpoint write finish; training goes on meanwhile
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists(), "the run ended before writing a checkpoint"


STAGES = {
    "amplify": ["stage=amplify", f"amplify.epochs={EPOCHS}", "amplify.scheduler.milestones=[3]"],
    "distill": ["stage=distill", "raa=off", f"distill.epochs={EPOCHS}", "distill.scheduler.milestones=[3]"],
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_killed_run_resumes_to_the_same_metrics(stage, tmp_path):
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    subprocess.run(
        _command(tmp_path, reference_dir, STAGES[stage]), cwd=tmp_path, check=True, capture_output=True
    )

    _kill_after_first_epochs(
        _command(tmp_path, resumed_dir, STAGES[stage]),
        tmp_path,
        resumed_dir / stage / "checkpoints" / "last.ckpt",
    )
    assert not (resumed_dir / stage / "metrics.json").exists(), "killed too late to test resuming"
    result = subprocess.run(
        _command(tmp_path, resumed_dir, STAGES[stage], "ckpt_path=last"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Restoring states from the checkpoint" in result.stderr + result.stdout
    reference = json.loads((reference_dir / stage / "metrics.json").read_text())["metrics"]
    resumed = json.loads((resumed_dir / stage / "metrics.json").read_text())["metrics"]
    assert resumed == pytest.approx(reference, abs=1e-6)
