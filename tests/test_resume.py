"""A run SIGKILLed while it trains, resumed with ckpt_path=last, ends with the uninterrupted run's metrics.

Only the killed runs need processes of their own; the uninterrupted reference and the resume run in
this process (`train_at`), on the same composed config the CLI runs."""

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aand_lightning.callbacks.last_checkpoint import LAST, LastCheckpoint

EPOCHS = 3
# pretrained lite0, full epochs of 7 over 36 images: the one image left out of the resumed epoch comes
# back alone among stored ones in the next (lite0 rounds a lone image otherwise than a batch)
LITE0_FULL_EPOCHS = [
    "backbone=tf_efficientnet_lite0", "backbone.weights=imagenet", "trainer.limit_train_batches=1.0",
    "datamodule.batch_size=7",
]  # fmt: skip


def _overrides(*extra: str) -> list[str]:
    """The smoke run with EPOCHS epochs per stage (a kill can land before the last), csv logging; the
    learning rate drops at epoch 2, so a resume that lost the scheduler's state ends elsewhere."""
    return [
        "logger=csv", "amplifier_cache=null", f"amplify.epochs={EPOCHS}", f"distill.epochs={EPOCHS}",
        "amplify.scheduler.milestones=[2]", "distill.scheduler.milestones=[2]", *extra,
    ]  # fmt: skip


def _kill_while_training(command: list[str], cwd: Path, stage_dir: Path) -> int:
    """Start a run and SIGKILL it as soon as the stage's first epoch checkpoint exists; returns the epoch
    of the checkpoint left on disk, which must be one before the last (the kill came while training)."""
    checkpoint = stage_dir / "checkpoints" / LAST
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists(), f"the run ended without a checkpoint in {checkpoint.parent}"
    assert not (stage_dir / "metrics.json").exists(), "the stage finished before the kill"
    epoch = torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"]
    assert epoch < EPOCHS - 1, "the checkpoint on disk is from the last epoch: nothing was left to resume"
    return epoch


@pytest.mark.parametrize(
    ("overrides", "reference_only"),
    [
        pytest.param(["stage=all"], [], id="stage_all"),
        pytest.param(  # the ViT variant (conftest.VIT_TINY): the same resume code as stage_all's
            ["stage=all", "vit_tiny"], [], id="vit_stage_all", marks=pytest.mark.slow
        ),
        pytest.param(
            [
                "stage=distill",
                "raa=off",
                "protocol=authors",  # evaluated after every epoch (the authors_every_epoch fixture)
                "trainer.limit_val_batches=1.0",
            ],
            [],
            id="rd_selected_on_test",
            marks=pytest.mark.slow,  # the protocol callback's state in last.ckpt: also test_protocol.py
        ),
        pytest.param(  # the feature cache rebuilt on resume: its metrics are the uncached run's
            ["stage=distill", "raa=off", *LITE0_FULL_EPOCHS],
            ["distill.feature_cache.enabled=false"],
            id="rd_lite0_cached_resumed_vs_uncached",
        ),
    ],
)
def test_run_killed_in_each_stage_resumes_to_the_same_metrics(
    overrides, reference_only, tmp_path, cli_arguments, train_at, caplog, authors_every_epoch, vit_tiny
):
    expand = {"protocol=authors": authors_every_epoch, "vit_tiny": vit_tiny}
    overrides = [o for override in overrides for o in expand.get(override, [override])]
    _, reference_dir = train_at(tmp_path, "reference", *_overrides(*overrides, *reference_only))
    resumed_dir = tmp_path / "resumed"
    command = [
        sys.executable,
        "-m",
        "aand_lightning.train",
        *cli_arguments(tmp_path, resumed_dir, *_overrides(*overrides)),
    ]
    stages = ["amplify", "distill"] if "stage=all" in overrides else ["distill"]

    _kill_while_training(command, tmp_path, resumed_dir / stages[0])
    if len(stages) == 2:  # resume: stage 1 finishes, then kill again while stage 2 trains
        _kill_while_training([*command, "ckpt_path=last"], tmp_path, resumed_dir / "distill")
        assert (resumed_dir / "amplify" / "metrics.json").is_file(), "stage 1 did not finish on resume"
    caplog.set_level(logging.INFO, logger="aand_lightning")  # the entry point and the modules it calls
    train_at(tmp_path, "resumed", *_overrides(*overrides), "ckpt_path=last")
    assert "Resuming stage distill from" in caplog.text
    if len(stages) == 2:
        assert "Stage 1 already finished" in caplog.text
    for stage in stages:
        reference = json.loads((reference_dir / stage / "metrics.json").read_text())["metrics"]
        resumed = json.loads((resumed_dir / stage / "metrics.json").read_text())["metrics"]
        assert resumed.keys() == reference.keys() and resumed
        assert resumed == reference, stage  # exactly: 1e-6 would let the cache's old rounding (2e-7) pass


def test_resume_without_a_checkpoint_names_the_directory(tmp_path, cli_arguments, cli_in_process):
    run_dir = tmp_path / "never_ran"
    arguments = cli_arguments(tmp_path, run_dir, *_overrides("stage=distill", "raa=off", "ckpt_path=last"))
    result = cli_in_process("train", *arguments, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: ckpt_path=last found nothing to resume in {run_dir} (no <stage>/checkpoints/last.ckpt); "
        "pass hydra.run.dir=<the run dir to resume>, or leave ckpt_path out to start afresh."
    ]


class _Trainer:
    """Just what LastCheckpoint uses of a Trainer; its save is killed half way through the write."""

    is_global_zero = True

    class strategy:
        @staticmethod
        def barrier(name: str) -> None: ...

    def save_checkpoint(self, path: Path, weights_only: bool = False) -> None:
        Path(path).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt  # the process dies here


def test_a_kill_during_the_write_keeps_the_previous_checkpoint(tmp_path):
    previous = b"the previous epoch's checkpoint"
    (tmp_path / LAST).write_bytes(previous)
    with pytest.raises(KeyboardInterrupt):
        LastCheckpoint(tmp_path).on_train_epoch_end(_Trainer(), None)
    assert (tmp_path / LAST).read_bytes() == previous
