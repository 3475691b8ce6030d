"""Evaluation: `python -m aand_lightning.eval ckpt=<stage-2 checkpoint> dataset=<name> [key=value ...]`
(`aand-eval`), or from Python, `evaluate(["ckpt=...", "dataset=..."])`.

Tests a trained model on any dataset's test split the way training tests it, and writes what training
writes: `<run dir>/distill/metrics.json`, heatmaps, ROC and histogram. The model, its thresholds and its
preprocessing come from the checkpoint; the config (conf/eval.yaml: the training config plus `ckpt`)
chooses the data, loader, trainer, loggers and callbacks. The work is `runs/evaluation.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from aand_lightning.config.command_line import entry_point
from aand_lightning.config.compose import hydra_job
from aand_lightning.reporting.failures import job_failed
from aand_lightning.runs.evaluation import test_checkpoint
from aand_lightning.runs.stage import failure_details, raising_failures


def evaluate(overrides: Sequence[str] = ()) -> dict[str, float | None]:
    """Evaluate as `python -m aand_lightning.eval <overrides>` does, in this process; returns the test
    metrics of the checkpoint's output map (a metric that cannot be computed: None). A user mistake
    raises its `UserError`; a failure leaves `failed.json` in the run dir."""
    with hydra_job("eval", overrides) as (cfg, run_dir), raising_failures(cfg, run_dir):
        return test_checkpoint(cfg, run_dir)["metrics"]


@entry_point("eval")
def main(cfg: DictConfig) -> None:
    """Evaluate; a failure leaves `failed.json` in the run dir. A user error is one line on stderr
    (exit 2); in a multirun (e.g. `-m sweep=all_categories`), a failed job is logged and the sweep goes on."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        test_checkpoint(cfg, run_dir)
    except Exception as error:
        job_failed(error, run_dir, failure_details(cfg), multirun=hydra_cfg.mode == RunMode.MULTIRUN)


if __name__ == "__main__":
    main()
