"""Training end to end on generated demo data: once through the real CLI (a subprocess, the `stage_all`
fixture), the other cases in-process through the Python call `aand_lightning.train` (`train_at`), which
composes the config the CLI runs."""

import importlib
import json
import logging
from importlib.metadata import entry_points

import pytest
from omegaconf import OmegaConf

import aand_lightning
from aand_lightning.artifacts.amplifier import AmplifierError, load_amplifier
from aand_lightning.errors import UserError


def test_stage_all_writes_metrics_amplifier_checkpoints_and_heatmaps(stage_all):
    for stage in ("amplify", "distill"):
        record = json.loads((stage_all / stage / "metrics.json").read_text())
        assert record["stage"] == stage and record["dataset"] == "demo" and record["category"] == "brick"
        assert record["textures"].startswith("procedural (seed 0")  # stage 2 reads it from the amplifier
        assert record["map"] == {"amplify": "gate", "distill": "aand"}[stage]  # each stage's output map
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            assert 0.0 <= record["metrics"][key] <= 1.0
        assert (stage_all / stage / "checkpoints" / "last.ckpt").is_file()
        assert len(list((stage_all / stage / "heatmaps").glob("*.png"))) == 3
        assert (stage_all / stage / "roc.png").is_file() and (
            stage_all / stage / "score_histogram.png"
        ).is_file()
    assert (stage_all / "amplify" / "amplifier.pt").is_file()
    combined = json.loads((stage_all / "metrics.json").read_text())
    assert [r["stage"] for r in combined] == ["amplify", "distill"]


def test_distill_from_a_stage1_amplifier_is_the_same_run_as_stage2_of_stage_all(stage_all, train_at):
    """Each stage starts from the seed: stage 2 must not depend on whether stage 1 ran just before it
    (nor, so, on whether the amplifier came from the cache)."""
    _, run_dir = train_at(stage_all.parent, "run_distill", "stage=distill", f"amplifier={stage_all}")
    alone = json.loads((run_dir / "distill" / "metrics.json").read_text())
    after_stage1 = json.loads((stage_all / "distill" / "metrics.json").read_text())
    assert alone["stage"] == "distill"
    assert alone["metrics"] == pytest.approx(after_stage1["metrics"], abs=1e-6)


def test_stage2_sweep_reuses_the_cached_stage1_amplifier(stage_all, caplog, train_at):
    caplog.set_level(logging.INFO, logger="aand_lightning")  # the cache logs from artifacts/
    records, run_dir = train_at(stage_all.parent, "run_cached", "stage=all", "loss.k_hard=5")
    assert "Reusing the cached stage-1 amplifier" in caplog.text
    assert not (run_dir / "amplify").exists()  # stage 1 did not run again
    assert [r["stage"] for r in records] == ["amplify", "distill"] and "cached_from" in records[0]
    # a different stage-1 setting is a different amplifier
    _, other = train_at(stage_all.parent, "run_other", "stage=amplify", "raa.temperature=0.5")
    assert (other / "amplify" / "amplifier.pt").is_file()


def test_rd_baseline_with_the_authors_protocol_is_labelled(stage_all, train_at, authors_every_epoch):
    _, run_dir = train_at(
        stage_all.parent, "run_rd", "stage=distill", "raa=off", "loss=rd", *authors_every_epoch,
        "trainer.limit_val_batches=1.0",  # both labels in the evaluation, so a score to keep it by
    )  # fmt: skip
    record = json.loads((run_dir / "distill" / "metrics.json").read_text())
    assert record["raa"] is False and record["protocol"] == "selected on test (authors)"
    assert (run_dir / "distill" / "checkpoints" / "best.ckpt").is_file()
    assert record["performance"]["inference_images_per_second"] > 0


def test_distill_without_amplifier_names_the_fix(stage_all, train_at):
    with pytest.raises(AmplifierError, match="pass amplifier="):
        train_at(stage_all.parent, "run_missing", "stage=distill", "amplifier_cache=null")
    failed = json.loads((stage_all.parent / "run_missing" / "failed.json").read_text())
    assert failed["stage"] == "distill" and failed["error"].startswith("Stage 2 needs a stage-1 amplifier")


def test_teacher_is_rebuilt_from_its_amplifier_settings_and_a_disagreeing_config_is_refused(
    stage_all, tmp_path
):
    artifact = stage_all / "amplify" / "amplifier.pt"
    raa = {"enabled": True, "num_prototypes": 50, "temperature": 0.2, "max_hidden": 1024, "eps": 1e-8}
    teacher, about = load_amplifier(artifact, {"name": "resnet18", "weights": "imagenet"}, raa)
    assert teacher.raa[0].temperature == 0.2 and len(teacher.raa) == 3
    assert about["textures"].startswith("procedural")
    with pytest.raises(AmplifierError, match=r"pass backbone=resnet18 "):
        load_amplifier(artifact, {"name": "tf_efficientnet_lite0"}, raa)
    for key, value in (("num_prototypes", 8), ("temperature", 0.5), ("eps", 1e-6)):
        with pytest.raises(AmplifierError, match=rf"pass raa\.{key}={raa[key]} "):
            load_amplifier(artifact, {"name": "resnet18"}, raa | {key: value})
    junk = tmp_path / "amplifier.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(AmplifierError, match="is not a stage-1 amplifier") as error:
        load_amplifier(junk, {"name": "resnet18"}, raa)
    assert "weights_only" not in str(error.value)


def test_wandb_logger_works_offline(stage_all, monkeypatch, train_at):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _, run_dir = train_at(stage_all.parent, "run_wandb", "stage=amplify", "logger=wandb")
    offline_runs = list((run_dir / "amplify" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert list((offline_runs[0] / "files" / "media" / "images").rglob("*.png")), "no heatmaps logged"
    record = next(offline_runs[0].glob("run-*.wandb")).read_bytes()
    assert b"num_prototypes" in record and b"test/image_auroc" in record  # resolved config + metrics


EVALUATION_ONLY = ("stage=distill", "raa=off", "trainer.limit_train_batches=0")


@pytest.fixture(scope="module")
def fp32_metrics(stage_all, train_at) -> dict:
    """The metrics every fast path is compared with: the same evaluation in float32, run once."""
    return train_at(stage_all.parent, "fp32", *EVALUATION_ONLY)[0][0]["metrics"]


@pytest.mark.parametrize(
    ("fast_path", "tolerance"),
    [
        (["performance.channels_last=true"], 1e-4),
        (["trainer.precision=bf16-mixed"], 0.05),  # bf16 features; the map itself is computed in float32
        pytest.param(["performance.compile=true"], 1e-3, marks=pytest.mark.slow),
    ],
)
def test_fast_paths_keep_the_metrics(stage_all, fp32_metrics, fast_path, tolerance, train_at):
    """Evaluation of the same (untrained, seeded) model with and without a fast path."""
    name = "fast_" + "_".join(fast_path).replace("=", "-")
    a = fp32_metrics
    b = train_at(stage_all.parent, name, *EVALUATION_ONLY, *fast_path)[0][0]["metrics"]
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert b[key] == pytest.approx(a[key], abs=tolerance), key


def test_folder_dataset_without_test_split_trains_and_skips_evaluation(stage_all, train_at):
    """A user's own folder of normal images, no test set: both stages train, nothing is evaluated."""
    train_dir = stage_all.parent / "demo" / "brick" / "train" / "good"
    _, run_dir = train_at(
        stage_all.parent, "run_folder", "stage=all", "dataset=folder", f"dataset.train_dir={train_dir}",
        "dataset.category=my_parts", "amplifier_cache=null",
    )  # fmt: skip
    assert (run_dir / "amplify" / "amplifier.pt").is_file()
    assert json.loads((run_dir / "distill" / "metrics.json").read_text())["metrics"] == {}


def test_a_callback_added_from_the_command_line_runs(train_in_process):
    """lightning-hydra-template's habit: callbacks are a config group, extended without code."""
    _, run_dir = train_in_process(
        "lr", "stage=distill", "raa=off", "logger=csv",
        "+callbacks.lr_monitor._target_=lightning.pytorch.callbacks.LearningRateMonitor",
    )  # fmt: skip
    header = next((run_dir / "distill" / "csv").rglob("metrics.csv")).read_text().splitlines()[0]
    assert "lr-Adam" in header
    assert list((run_dir / "distill" / "heatmaps").glob("*.png"))  # the default callbacks still run


def test_train_from_python_returns_each_stages_metrics_and_needs_no_directory_change(
    stage_all, smoke, tmp_path, monkeypatch
):
    """`aand_lightning.train(overrides)`: relative paths are the working directory's, as on the command
    line, whatever it is; the run dir holds the metrics.json and the saved config the CLI writes."""
    monkeypatch.chdir(tmp_path)
    data = [f"dataset.root={stage_all.parent / 'demo'}", f"paths.cache_dir={stage_all.parent / 'cache'}"]
    metrics = aand_lightning.train([*smoke, *data, "hydra.run.dir=runs/python", *EVALUATION_ONLY])
    run_dir = tmp_path / "runs" / "python"
    (record,) = json.loads((run_dir / "metrics.json").read_text())
    assert metrics == {"distill": record["metrics"]} and 0.0 <= metrics["distill"]["image_auroc"] <= 1.0
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").stage.name == "distill"
    assert aand_lightning.train is importlib.import_module("aand_lightning.train")  # one name, both uses


def test_a_mistake_in_the_python_call_raises_its_user_error(stage_all, smoke, tmp_path, monkeypatch):
    """No exit from a Python call: a user mistake is raised as the UserError naming the fix, also when
    Hydra's composition or `instantiate` met it; a failed run leaves failed.json."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="dataset=nope is not an option of dataset; choose one of demo"):
        aand_lightning.train(["dataset=nope"])
    with pytest.raises(UserError, match="a Python call runs one job"):
        aand_lightning.train(["hparams_search=distill_optuna"])
    data = [f"dataset.root={stage_all.parent / 'demo'}", f"paths.cache_dir={stage_all.parent / 'cache'}"]
    with pytest.raises(UserError, match="Unknown interpolation 'foo'"):
        aand_lightning.train([*smoke, *data, "hydra.run.dir=bad", "preprocessing.interpolation=foo"])
    assert json.loads((tmp_path / "bad" / "failed.json").read_text())["error"].startswith(
        "Unknown interpolation"
    )


def test_hparams_search_runs_optuna_trials_on_the_returned_metric(stage_all, smoke, tmp_path, cli_in_process):
    """hparams_search=distill_optuna, two trials: each job returns its `optimized_metric`
    (distill/image_auroc), and Optuna's best value is the best trial's."""
    sweep = tmp_path / "sweep"
    result = cli_in_process(
        "train", *smoke, f"dataset.root={stage_all.parent / 'demo'}", f"paths.cache_dir={tmp_path / 'cache'}",
        "stage=distill", "raa=off", "hparams_search=distill_optuna", "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    trials = [json.loads(path.read_text()) for path in sorted(sweep.rglob("trial*/distill/metrics.json"))]
    assert len(trials) == 2
    found = OmegaConf.load(sweep / "optimization_results.yaml")
    assert found.best_value == max(trial["metrics"]["image_auroc"] for trial in trials)
    assert set(found.best_params) == {"distill.optimizer.lr", "loss.k_hard", "anomaly_map.sigma"}
    assert (sweep / "summary.md").is_file()


def test_every_entry_point_is_a_console_script():
    scripts = {script.name: script for script in entry_points(group="console_scripts")}
    for entry in ("train", "eval", "predict", "export"):
        assert scripts[f"aand-{entry}"].value == f"aand_lightning.{entry}:main"
        assert scripts[f"aand-{entry}"].load() is importlib.import_module(f"aand_lightning.{entry}").main
