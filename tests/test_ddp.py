"""DDP on CPU (gloo, 2 processes) through the real CLI; an in-process ddp would relaunch pytest."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

COMMON = [
    "dataset=demo", "dataset.image_size=64", "backbone=resnet18", "backbone.weights=none",
    "trainer.enable_progress_bar=false", "datamodule.batch_size=4", "datamodule.num_workers=0",
    "amplify.scheduler.milestones=[1]", "distill.scheduler.milestones=[1]", "evaluation.heatmaps=2",
]  # fmt: skip
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def _train(cwd: Path, name: str, *overrides: str) -> Path:
    run_dir = cwd / name
    command = [
        sys.executable, "-m", "aand_lightning.train", *COMMON,
        f"dataset.root={cwd / 'demo'}", f"paths.cache_dir={cwd / 'cache'}", f"hydra.run.dir={run_dir}",
        *overrides,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ddp")


def test_ddp_and_single_process_evaluation_agree(workdir):
    """Same untrained model (same seed), test set split over 2 ranks without padding duplicates."""
    overrides = ["stage=distill", "raa=off", "++trainer.limit_train_batches=0"]
    single = _train(workdir, "single", *overrides)
    ddp = _train(workdir, "ddp_eval", *overrides, *DDP)
    a = json.loads((single / "distill" / "metrics.json").read_text())["metrics"]
    b = json.loads((ddp / "distill" / "metrics.json").read_text())["metrics"]
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], abs=1e-5), key  # stated tolerance: 1e-5 (float32 reductions)


def test_ddp_stage_all_hands_over_the_teacher_and_writes_once(workdir):
    run_dir = _train(
        workdir, "ddp_all", "stage=all", "amplify.epochs=1", "distill.epochs=1", "teacher_cache=null", *DDP
    )
    assert (run_dir / "amplify" / "teacher.pt").is_file()
    records = json.loads((run_dir / "metrics.json").read_text())
    assert [r["stage"] for r in records] == ["amplify", "distill"]
    assert not (workdir / "outputs").exists() and not (workdir / "lightning_logs").exists()
    assert len(list((run_dir / "distill" / "csv").glob("version_*"))) == 1  # one logger dir, rank 0 only


def test_ddp_feature_cache_gives_the_uncached_metrics(workdir):
    """Each rank fills its own stage-2 feature cache with the items it sees (a different share every
    epoch); the metrics equal those of the same DDP run without the cache."""
    overrides = ["stage=distill", "raa=off", "distill.epochs=2", *DDP]
    on = _train(workdir, "ddp_cache_on", *overrides)
    off = _train(workdir, "ddp_cache_off", *overrides, "distill.feature_cache.enabled=false")
    a = json.loads((on / "distill" / "metrics.json").read_text())["metrics"]
    b = json.loads((off / "distill" / "metrics.json").read_text())["metrics"]
    assert a == b
    logs = [path.read_text() for path in sorted(on.glob("train*.log"))]
    assert len(logs) == 2 and all("Stage-2 feature cache on" in log for log in logs)  # both ranks cached
