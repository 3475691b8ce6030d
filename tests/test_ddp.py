"""DDP on CPU (gloo, 2 processes) through the real CLI; an in-process ddp would relaunch pytest.

The runs start from the smallest real run (`cli_arguments`), on the full trainer (`trainer=cpu` or `ddp`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aand_lightning.callbacks.last_checkpoint import LAST

# Two-process DDP runs (about a minute of two cores): `make test-slow` runs them.
pytestmark = pytest.mark.slow

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def _train_ddp(cli_arguments, cwd: Path, name: str, *overrides: str) -> Path:
    """The train CLI in 2 gloo processes, with the data, caches and run dir `train_at` would use."""
    run_dir = cwd / name
    command = [sys.executable, "-m", "aand_lightning.train", *cli_arguments(cwd, run_dir, *DDP, *overrides)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def _metrics(run_dir: Path, stage: str = "distill") -> dict[str, float]:
    return json.loads((run_dir / stage / "metrics.json").read_text())["metrics"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ddp")


# Pretrained lite0 (offline), full epochs of 8 per rank: each rank's 18 images leave 2 out of its
# first epoch, which come back among stored ones (see tests/stages/test_feature_cache.py).
BACKBONE = ["backbone=tf_efficientnet_lite0", "backbone.weights=imagenet", "datamodule.batch_size=8"]
OVERRIDES = ["stage=all", "distill.epochs=2", "logger=csv", "++trainer.limit_train_batches=1.0", *BACKBONE]


@pytest.fixture(scope="module")
def ddp_run(workdir, cli_arguments) -> Path:
    """Both stages in 2 processes, the stage-2 feature cache on (the default)."""
    return _train_ddp(cli_arguments, workdir, "ddp_all", *OVERRIDES)


def test_ddp_stage_all_hands_over_the_amplifier_and_writes_once(ddp_run, workdir):
    assert (ddp_run / "amplify" / "amplifier.pt").is_file()
    records = json.loads((ddp_run / "metrics.json").read_text())
    assert [r["stage"] for r in records] == ["amplify", "distill"]
    assert not (workdir / "outputs").exists() and not (workdir / "lightning_logs").exists()
    assert len(list((ddp_run / "distill" / "csv").glob("version_*"))) == 1  # one logger dir, rank 0 only


def test_each_rank_caches_what_it_sees_and_the_metrics_are_the_uncached_ones(ddp_run, workdir, cli_arguments):
    """Each rank fills its own stage-2 feature cache with the items it sees (a different share every
    epoch); the metrics equal those of the same DDP run without the cache (its stage 1 comes from the
    amplifier cache, which per-stage seeding makes the same stage-2 run)."""
    logs = [path.read_text() for path in sorted(ddp_run.glob("train*.log"))]
    assert len(logs) == 2 and all("Stage-2 feature cache on" in log for log in logs)  # both ranks cached
    off = _train_ddp(
        cli_arguments, workdir, "ddp_all_uncached", *OVERRIDES, "distill.feature_cache.enabled=false"
    )
    assert "cached_from" in json.loads((off / "metrics.json").read_text())[0]  # stage 1 was not trained again
    assert _metrics(ddp_run) == _metrics(off)


def test_ddp_evaluation_scores_what_one_process_scores(ddp_run, workdir, train_at):
    """The test set split over 2 ranks (no padding duplicates): the DDP-trained model, evaluated again by
    one process from its last checkpoint, gets the metrics the 2 ranks reported."""
    checkpoint = ddp_run / "distill" / "checkpoints" / LAST
    _, single = train_at(
        workdir, "single_eval", "trainer=cpu", "stage=distill", f"amplifier={ddp_run}",
        "distill.epochs=2", f"ckpt_path={checkpoint}", *BACKBONE,
    )  # fmt: skip
    record = json.loads((single / "distill" / "metrics.json").read_text())
    assert record["performance"]["resumed_from"] == str(checkpoint)  # restored at its last epoch: no training
    a, b = record["metrics"], _metrics(ddp_run)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-5), key  # stated tolerance: 1e-5 (float32 reductions)


def test_the_vit_variant_trains_both_stages_under_ddp(workdir, cli_arguments, vit_tiny):
    """The authors' ViT variant through the same DDP path: both stages, one amplifier handed over."""
    run_dir = _train_ddp(cli_arguments, workdir, "ddp_vit", "stage=all", "logger=csv", *vit_tiny)
    assert (run_dir / "amplify" / "amplifier.pt").is_file()
    records = json.loads((run_dir / "metrics.json").read_text())
    assert [r["stage"] for r in records] == ["amplify", "distill"]
    assert all(0.0 <= r["metrics"]["image_auroc"] <= 1.0 for r in records)
