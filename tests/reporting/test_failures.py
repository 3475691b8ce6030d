"""What a user meets at the command line when something is wrong: one sentence, exit status 2, no
traceback, and no run directory that looks finished or resumable; sweeps go on past a failed job.

The entry points' real `main` runs in this process (`cli_in_process`); only the terminal case needs a
process of its own, since its stdin must be a TTY."""

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import wandb

from aand_lightning.data.demo import ensure_category


def _one_error_line(result) -> str:
    """The exit status is 2, and the output's last line, the only one starting `Error: `, is a sentence."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and errors[0].endswith(".") and result.stderr.rstrip().endswith(errors[0])
    return errors[0]


def test_train_error_is_one_line_and_leaves_no_run(cli_in_process, tmp_path, smoke):
    run_dir = tmp_path / "run"
    result = cli_in_process(
        "train", *smoke, "dataset.image_size=30", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    line = _one_error_line(result)
    assert "dataset.image_size=30" in line and "multiple of 32" in line
    leftovers = {p.name for p in run_dir.iterdir()}
    assert leftovers <= {"failed.json", ".hydra", "train.log"}, leftovers
    assert json.loads((run_dir / "failed.json").read_text())["error"] == line.removeprefix("Error: ")


def test_full_traceback_on_request(cli_in_process, tmp_path, smoke, monkeypatch):
    """With HYDRA_FULL_ERROR=1 the error is raised, not reduced to a line: Python prints its traceback."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(Exception, match=r"datamodule\.batch_size") as raised:
        cli_in_process(
            "train", *smoke, "datamodule.batch_size=0", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path
        )
    assert type(raised.value).__name__ == "ConfigError"


@pytest.mark.parametrize("module", ["predict", "export"])
def test_a_file_that_is_no_checkpoint_is_one_line(module, cli_in_process, tmp_path):
    junk = tmp_path / "model.ckpt"
    junk.write_bytes(os.urandom(2048))
    args = [f"ckpt={junk}", f"input={tmp_path}"] if module == "predict" else [f"ckpt={junk}"]
    line = _one_error_line(cli_in_process(module, *args, cwd=tmp_path))
    assert str(junk) in line and "stage-2 checkpoint" in line and "weights_only" not in line


def test_backbone_weights_that_are_no_weights_is_one_line(cli_in_process, tmp_path, smoke):
    junk = tmp_path / "weights.pth"
    junk.write_bytes(os.urandom(2048))
    overrides = [*smoke, f"backbone.weights={junk}", "stage=distill", "raa=off"]
    result = cli_in_process(
        "train",
        *overrides,
        f"dataset.root={tmp_path / 'demo'}",
        f"hydra.run.dir={tmp_path / 'r'}",
        cwd=tmp_path,
    )
    line = _one_error_line(result)
    assert str(junk) in line and "weights_only" not in line


def _wandb_overrides(tmp_path: Path, smoke: tuple[str, ...]) -> list[str]:
    return [*smoke, "logger=wandb", f"hydra.run.dir={tmp_path / 'r'}", f"dataset.root={tmp_path / 'demo'}"]


@pytest.fixture
def fresh_wandb():
    """wandb keeps the settings it first loads in a process and then ignores WANDB_* changes: torn down
    around a test that sets its own, it loads them from that test's environment."""
    wandb.teardown()
    yield
    wandb.teardown()


def _assert_names_the_ways_out(line: str) -> None:
    for way_out in ("wandb login", "WANDB_MODE=offline", "logger=csv"):
        assert way_out in line


def test_wandb_without_credentials_stops_before_training(
    cli_in_process, tmp_path, smoke, monkeypatch, fresh_wandb
):
    for key in [key for key in os.environ if key.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    _assert_names_the_ways_out(
        _one_error_line(cli_in_process("train", *_wandb_overrides(tmp_path, smoke), cwd=tmp_path))
    )


def test_wandb_without_credentials_never_prompts_at_a_terminal(tmp_path, smoke):
    """A terminal on stdin, where wandb would otherwise wait at its login prompt: a process of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {"HOME": str(tmp_path), "NETRC": str(tmp_path / "no_netrc")}
    leader, follower = pty.openpty()
    result = subprocess.run(
        [sys.executable, "-m", "aand_lightning.train", *_wandb_overrides(tmp_path, smoke)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env, stdin=follower,
    )  # fmt: skip
    os.close(leader)
    os.close(follower)
    _assert_names_the_ways_out(_one_error_line(result))


def test_sweep_survives_a_failing_job_and_reports_it(
    cli_in_process, tmp_path, smoke, monkeypatch, fresh_wandb
):
    """Two categories, one with no data: the other still runs, the summary has both rows, exit 1;
    with logger=wandb (offline) both jobs share the sweep's group and the summary is logged too."""
    good = ensure_category(tmp_path / "demo", "brick", image_size=64) / "train" / "good"
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "good_line").symlink_to(good, target_is_directory=True)
    sweep_dir = tmp_path / "sweep"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = cli_in_process(
        "train", "-m", *smoke, "stage=all", "dataset=folder", "dataset.category=good_line,missing_line",
        f"dataset.train_dir={tmp_path / 'parts'}/${{dataset.category}}", "logger=wandb",
        f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    summary = (sweep_dir / "summary.md").read_text()
    assert "| folder | good_line | distill |" in summary
    assert "| folder | missing_line |" in summary and "missing_line does not exist" in summary
    rows = (sweep_dir / "summary.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 + 1  # header, good_line's two stages, the failed job
    group = f"sweep-{sweep_dir.name}".encode()
    job_runs = list(sweep_dir.rglob("run-*.wandb"))
    assert len(job_runs) == 3  # good_line amplify + distill, and the summary
    # wandb's service process may still be writing the files after `finish()` returns (seen under load)
    deadline = time.monotonic() + 60
    while not all(group in run.read_bytes() for run in job_runs) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert all(group in run.read_bytes() for run in job_runs)
    tables = list((sweep_dir / "wandb").rglob("*.table.json"))
    assert tables and "missing_line" in tables[0].read_text()


def test_one_training_image_stores_a_threshold_not_nan(train_in_process, tmp_path):
    image = next((ensure_category(tmp_path / "demo", "brick", image_size=64) / "train" / "good").iterdir())
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / image.name).symlink_to(image)
    with pytest.warns(UserWarning, match="No normal validation images"):
        _, run_dir = train_in_process(
            "single", "stage=distill", "raa=off", "dataset=folder", f"dataset.train_dir={tmp_path / 'single'}"
        )
    state = torch.load(run_dir / "distill" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.isfinite(state["model.threshold"]) and torch.isfinite(state["model.map_threshold"])


def test_a_failure_records_its_root_cause_not_hydras_wrapper():
    """What `failed.json` and a sweep's summary row say of a failure inside `instantiate`: the error
    itself, not "Error in call to target ..." (issue 23)."""
    from hydra.utils import instantiate

    from aand_lightning.reporting.failures import reason

    with pytest.raises(Exception) as caught:
        instantiate({"_target_": "builtins.int", "_args_": ["x"]})
    assert "Error in call to target" in str(caught.value)
    assert reason(caught.value) == "ValueError: invalid literal for int() with base 10: 'x'"
