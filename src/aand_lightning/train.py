"""Training: `python -m aand_lightning.train stage=amplify|distill|all dataset=<name> ...` (`aand-train`),
or from Python, `aand_lightning.train(["stage=all", "dataset=folder", ...])`.

Each stage trains, then tests on the dataset's test split and writes `<run dir>/<stage>/metrics.json`;
stage 1 also writes the amplifier (`<run dir>/amplify/amplifier.pt`) that stage 2 loads. The stages
themselves are `runs/training.py`.

This module is callable: `aand_lightning.train(...)` is `train(...)` below, so one name serves the
command line (`python -m`) and the Python call.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from aand_lightning.config.command_line import entry_point
from aand_lightning.config.compose import hydra_job
from aand_lightning.reporting.failures import job_failed
from aand_lightning.runs.stage import failure_details, raising_failures
from aand_lightning.runs.training import Metrics, run, selected_metric, stage_metrics


def train(overrides: Sequence[str] = ()) -> Metrics:
    """Train as `python -m aand_lightning.train <overrides>` does, in this process; returns the test
    metrics of each stage's output map by stage, e.g. `{"amplify": {...}, "distill": {"image_auroc":
    0.97, ...}}` (a stage without test images: empty; a metric that cannot be computed: None).

    The run dir is `hydra.run.dir` (default `outputs/<run name>/<time>`, relative to the working
    directory) and holds what the command line writes. A user mistake raises its `UserError` (the
    sentence names the fix) and a failure leaves `failed.json` in the run dir. One job per call: sweeps
    (`-m`, `hparams_search=`) and several GPUs (`trainer=ddp`) run from the command line.
    """
    with hydra_job("train", overrides) as (cfg, run_dir), raising_failures(cfg, run_dir):
        return stage_metrics(run(cfg, run_dir))


@entry_point("train")
def main(cfg: DictConfig) -> float | None:
    """Run; returns the run's `optimized_metric` when one is set (what Hydra's Optuna sweeper maximises or
    minimises, `hparams_search=`). A failure leaves `failed.json` in the run dir. A user error is one line
    on stderr (exit 2); in a multirun, a failed job is logged and returns None (Hydra's Optuna sweeper
    records a failed trial) and the sweep goes on (the summary lists it)."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        metrics = stage_metrics(run(cfg, run_dir))
        return selected_metric(metrics, cfg.optimized_metric) if cfg.get("optimized_metric") else None
    except Exception as error:
        job_failed(error, run_dir, failure_details(cfg), multirun=hydra_cfg.mode == RunMode.MULTIRUN)
        return None


class _Callable(types.ModuleType):
    """This module's type: calling it calls `train` (Python's documented way to customise a module)."""

    def __call__(self, overrides: Sequence[str] = ()) -> Metrics:
        return train(overrides)


sys.modules[__name__].__class__ = _Callable

if __name__ == "__main__":
    main()
