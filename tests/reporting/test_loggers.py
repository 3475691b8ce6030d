"""Several experiment loggers at once: one stage=all run logs to csv, TensorBoard and MLflow, and each
logger that takes images gets the heatmaps, ROC curve and score histogram."""

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from aand_lightning.errors import UserError
from aand_lightning.reporting.loggers import build_loggers, logger_configs, wandb_config

STAGES = ("amplify", "distill")


def _png(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, train_at) -> Path:
    tmp = tmp_path_factory.mktemp("loggers")
    _, run_dir = train_at(tmp, "run", "stage=all", "logger=[csv,tensorboard,mlflow]", "amplifier_cache=null")
    return run_dir


def _pictures(stage_dir: Path) -> dict[str, Path]:
    """The stage's pictures in the run dir, by the name the loggers give them."""
    (heatmap,) = (stage_dir / "heatmaps").glob("*.png")
    return {
        f"test/heatmaps/{heatmap.stem}": heatmap,
        "test/score_plots/roc": stage_dir / "roc.png",
        "test/score_plots/score_histogram": stage_dir / "score_histogram.png",
    }


def test_csv_has_both_stages_metrics(run_dir):
    for stage in STAGES:
        (file,) = (run_dir / stage / "csv").rglob("metrics.csv")
        tested = [row for row in csv.DictReader(file.open()) if row.get("test/image_auroc")]
        expected = json.loads((run_dir / stage / "metrics.json").read_text())["metrics"]["image_auroc"]
        assert float(tested[-1]["test/image_auroc"]) == pytest.approx(expected, abs=1e-6)


def test_tensorboard_has_both_stages_metrics_and_pictures(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    for stage in STAGES:
        (log_dir,) = (run_dir / stage / "tensorboard").iterdir()
        events = EventAccumulator(str(log_dir), size_guidance={IMAGES: 0}).Reload()
        expected = json.loads((run_dir / stage / "metrics.json").read_text())["metrics"]["image_auroc"]
        assert events.Scalars("test/image_auroc")[-1].value == pytest.approx(expected, abs=1e-6)
        for tag, file in _pictures(run_dir / stage).items():
            logged = _png(events.Images(tag)[-1].encoded_image_string)
            assert np.array_equal(logged, cv2.imread(str(file))), tag


def test_mlflow_has_one_run_per_stage_with_its_metrics_and_pictures(run_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("aand_lightning")
    runs = {r.info.run_name.rsplit("/", 1)[-1]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(STAGES)
    for stage, run in runs.items():
        assert run.data.params["raa/num_prototypes"] == "50"  # the resolved config
        expected = json.loads((run_dir / stage / "metrics.json").read_text())["metrics"]["image_auroc"]
        assert run.data.metrics["test/image_auroc"] == pytest.approx(expected, abs=1e-6)
        for name, file in _pictures(run_dir / stage).items():
            logged = Path(client.download_artifacts(run.info.run_id, f"{name}.png", str(tmp_path / stage)))
            assert np.array_equal(cv2.imread(str(logged)), cv2.imread(str(file))), name


def test_logger_choices_are_keyed_by_name():
    node = OmegaConf.create(
        {"csv": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": "x"}, "wandb": None}
    )
    assert list(logger_configs(node)) == ["csv"]  # logger.wandb=null drops that logger
    assert wandb_config(node) is None and logger_configs(None) == {}
    with pytest.raises(UserError, match=r"logger\._target_ is not a logger config.*\+logger\.<name>"):
        logger_configs(OmegaConf.create({"_target_": "lightning.pytorch.loggers.CSVLogger"}))


def test_a_logger_whose_package_is_missing_names_the_install(monkeypatch):
    class Missing:
        def __bool__(self) -> bool:
            return False

        def __str__(self) -> str:
            return "Requirement 'mlflow' not met"

    monkeypatch.setattr("lightning.pytorch.loggers.mlflow._MLFLOW_AVAILABLE", Missing())
    node = OmegaConf.create({"mlflow": {"_target_": "lightning.pytorch.loggers.MLFlowLogger"}})
    with pytest.raises(UserError, match=r"logger\.mlflow needs .*mlflow.*aand-lightning\[mlflow\]"):
        build_loggers(node, {})
