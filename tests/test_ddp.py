"""DDP on CPU (gloo, 2 processes) through the real CLI; an in-process ddp would relaunch pytest.

The runs start from the smallest real run (`smoke`), on the full trainer (`trainer=cpu` or `ddp`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def _train_ddp(smoke: tuple[str, ...], cwd: Path, name: str, *overrides: str) -> Path:
    """The train CLI in 2 gloo processes, with the data, caches and run dir `train_at` would use."""
    run_dir = cwd / name
    command = [
        sys.executable, "-m", "aand_lightning.train", *smoke, f"dataset.root={cwd / 'demo'}",
        f"paths.cache_dir={cwd / 'cache'}", f"hydra.run.dir={run_dir}", *DDP, *overrides,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def _metrics(run_dir: Path, stage: str = "distill") -> dict[str, float]:
    return json.loads((run_dir / stage / "metrics.json").read_text())["metrics"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ddp")


def test_ddp_and_single_process_evaluation_agree(workdir, smoke, train_at):
    """Same untrained model (same seed), test set split over 2 ranks without padding duplicates."""
    overrides = ["stage=distill", "raa=off", "++trainer.limit_train_batches=0"]
    _, single = train_at(workdir, "single", "trainer=cpu", *overrides)
    a, b = _metrics(single), _metrics(_train_ddp(smoke, workdir, "ddp_eval", *overrides))
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], abs=1e-5), key  # stated tolerance: 1e-5 (float32 reductions)


def test_ddp_stage_all_hands_over_the_teacher_writes_once_and_caches_per_rank(workdir, smoke):
    """Stage 1 hands its teacher to stage 2 inside the process group, rank 0 alone writes, and each rank
    fills its own stage-2 feature cache with the items it sees (a different share every epoch): the
    metrics equal those of the same DDP run without the cache (its stage 1 comes from the teacher
    cache, which per-stage seeding makes the same stage-2 run)."""
    overrides = ["stage=all", "distill.epochs=2", "logger=csv", "++trainer.limit_train_batches=2"]
    on = _train_ddp(smoke, workdir, "ddp_all", *overrides)
    assert (on / "amplify" / "teacher.pt").is_file()
    records = json.loads((on / "metrics.json").read_text())
    assert [r["stage"] for r in records] == ["amplify", "distill"]
    assert not (workdir / "outputs").exists() and not (workdir / "lightning_logs").exists()
    assert len(list((on / "distill" / "csv").glob("version_*"))) == 1  # one logger dir, rank 0 only
    logs = [path.read_text() for path in sorted(on.glob("train*.log"))]
    assert len(logs) == 2 and all("Stage-2 feature cache on" in log for log in logs)  # both ranks cached

    off = _train_ddp(smoke, workdir, "ddp_all_uncached", *overrides, "distill.feature_cache.enabled=false")
    assert "cached_from" in json.loads((off / "metrics.json").read_text())[0]  # stage 1 was not trained again
    assert _metrics(on) == _metrics(off)
