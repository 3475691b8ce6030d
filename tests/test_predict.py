import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

from aand_lightning.artifacts.checkpoint import TrainedModel, load_model
from aand_lightning.data.io import read_image
from aand_lightning.inference import Inferencer
from aand_lightning.predict import PredictError, choose_thresholds, find_images, run


def _cfg(ckpt: Path, input_path: Path, output: Path, **kwargs) -> OmegaConf:
    base = {
        "ckpt": str(ckpt), "input": str(input_path), "output": str(output), "batch_size": 4,
        "device": "cpu", "threshold": "stored", "threshold_images": None, "threshold_percentile": 99,
    }  # fmt: skip
    return OmegaConf.create(base | kwargs)


def _outputs(trained: TrainedModel, paths: list[Path]) -> list[tuple[Path, float, np.ndarray]]:
    """(path, score, map at the model's size) per readable image, from the Inferencer's raw outputs."""
    inferencer = Inferencer.from_checkpoint(trained)
    return [(path, float(out.score[0]), out.anomaly_map[0, 0]) for path, _, out in inferencer.outputs(paths)]


def test_predict_folder_writes_overlays_masks_and_scores(stage2_checkpoint, demo_root, tmp_path):
    test_dir = demo_root / "brick" / "test"
    (tmp_path / "broken.png").write_bytes(b"not an image")
    scores_csv = run(_cfg(stage2_checkpoint, test_dir, tmp_path / "out"))
    rows = list(csv.DictReader(scores_csv.open()))
    assert len(rows) == len(find_images(test_dir)) == 25
    model = load_model(stage2_checkpoint).model
    assert all(float(r["threshold"]) == pytest.approx(float(model.threshold), rel=1e-5) for r in rows)
    assert all(int(r["is_anomalous"]) == (float(r["score"]) > float(r["threshold"])) for r in rows)
    assert len(list((tmp_path / "out" / "overlays").glob("*.png"))) == 25
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 25
    for row in rows[:3]:  # masks at each image's own size, overlays two panels of it
        name = "__".join(Path(row["path"]).relative_to(test_dir).with_suffix("").parts) + ".png"
        height, width = read_image(Path(row["path"])).shape[:2]
        assert np.asarray(Image.open(tmp_path / "out" / "masks" / name)).shape == (height, width, 3)
        assert np.asarray(Image.open(tmp_path / "out" / "overlays" / name)).shape == (height, 2 * width, 3)
    with pytest.warns(UserWarning, match="broken.png"):
        run(_cfg(stage2_checkpoint, tmp_path, tmp_path / "out2"))


def test_predict_cli_end_to_end(stage2_checkpoint, demo_root, tmp_path):
    """The predict entry point's smoke test, as a user runs it: its own process, the composed config."""
    good = demo_root / "brick" / "test" / "good"
    command = [
        sys.executable, "-m", "aand_lightning.predict", f"ckpt={stage2_checkpoint}", f"input={good}",
        f"output={tmp_path / 'out'}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "out" / "scores.csv").open()))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(p.name for p in find_images(good))
    assert len(list((tmp_path / "out" / "overlays").glob("*.png"))) == len(rows)


def test_threshold_modes(stage2_checkpoint, demo_root):
    """The paper's map: the image score is the map's maximum, so each mode gives one threshold for both."""
    trained = load_model(stage2_checkpoint)
    test_dir = demo_root / "brick" / "test"
    number = choose_thresholds(trained, _cfg(stage2_checkpoint, test_dir, "x", threshold=0.25))
    assert number.score == number.map == 0.25
    stored = choose_thresholds(trained, _cfg(stage2_checkpoint, test_dir, "x"))
    assert stored.score == stored.map == pytest.approx(float(trained.model.threshold))
    good = sorted((test_dir / "good").glob("*.png"))
    good_scores = np.array([score for _, score, _ in _outputs(trained, good)])
    percentile = choose_thresholds(
        trained,
        _cfg(
            stage2_checkpoint, test_dir, "x", threshold="percentile", threshold_images=str(test_dir / "good")
        ),
    )
    assert percentile.score == percentile.map == pytest.approx(np.percentile(good_scores, 99))
    paths = find_images(test_dir)
    scores = np.array([score for _, score, _ in _outputs(trained, paths)])
    labels = np.array([p.parent.name != "good" for p in paths])
    f1_threshold = choose_thresholds(
        trained,
        _cfg(stage2_checkpoint, test_dir, "x", threshold="f1", threshold_images=str(test_dir)),
    )
    assert f1_threshold.score == f1_threshold.map

    def f1(t: float) -> float:
        predicted = scores > t
        tp = (predicted & labels).sum()
        return 2 * tp / (predicted.sum() + labels.sum())

    assert f1(f1_threshold.score) == pytest.approx(
        max(f1(t - 1e-7) for t in scores), abs=1e-9
    )  # best over all cuts


def test_bad_inputs_name_the_fix(stage2_checkpoint, tmp_path):
    with pytest.raises(PredictError, match="input="):
        find_images(tmp_path / "missing")
    with pytest.raises(PredictError, match="no images"):
        find_images(tmp_path)
    trained = load_model(stage2_checkpoint)
    with pytest.raises(PredictError, match="threshold_images="):
        choose_thresholds(trained, _cfg(stage2_checkpoint, tmp_path, "x", threshold="percentile"))
    with pytest.raises(PredictError, match="Unknown threshold"):
        choose_thresholds(trained, _cfg(stage2_checkpoint, tmp_path, "x", threshold="median"))
    (tmp_path / "unreadable").mkdir()
    (tmp_path / "unreadable" / "broken.png").write_bytes(b"not an image")
    unreadable = _cfg(
        stage2_checkpoint,
        tmp_path,
        "x",
        threshold="percentile",
        threshold_images=str(tmp_path / "unreadable"),
    )
    with pytest.warns(UserWarning, match="broken.png"), pytest.raises(PredictError, match="None of the"):
        choose_thresholds(trained, unreadable)
    trained.model.threshold.fill_(float("nan"))  # a checkpoint trained without validation images
    with pytest.raises(PredictError, match="threshold=<number>"):
        choose_thresholds(trained, _cfg(stage2_checkpoint, tmp_path, "x"))


def test_f1_threshold_gives_the_best_f1_in_the_written_decisions(stage2_checkpoint, demo_root, tmp_path):
    """The decisions in scores.csv reach the best F1 over all cuts: the image at the cut is anomalous
    (its threshold, stored in the model's float32 buffer, stays just below that image's score)."""
    from aand_lightning.metrics.anomaly_metrics import f1_max

    test_dir = demo_root / "brick" / "test"
    cfg = _cfg(stage2_checkpoint, test_dir, tmp_path / "out", threshold="f1", threshold_images=str(test_dir))
    rows = list(csv.DictReader(run(cfg).open()))
    labels = np.array([Path(r["path"]).parent.name != "good" for r in rows])
    decided = np.array([r["is_anomalous"] == "1" for r in rows])
    tp = (decided & labels).sum()
    scores = [score for _, score, _ in _outputs(load_model(stage2_checkpoint), find_images(test_dir))]
    best, _ = f1_max(torch.tensor(scores), torch.from_numpy(labels.astype(np.int64)))
    assert 2 * tp / (decided.sum() + labels.sum()) == pytest.approx(best, abs=1e-6)  # best: float32


def test_f1_threshold_skips_an_unreadable_labelled_image(stage2_checkpoint, demo_root, tmp_path):
    """One unreadable file among the labelled threshold images is skipped with its label: the F1 threshold
    is the one of the readable images alone (issue 23: the labels of all files were counted)."""
    test_dir = demo_root / "brick" / "test"
    labelled = tmp_path / "labelled"
    for path in find_images(test_dir):
        (labelled / path.parent.name).mkdir(parents=True, exist_ok=True)
        (labelled / path.parent.name / path.name).symlink_to(path)
    (labelled / "good" / "broken.png").write_bytes(b"not an image")
    trained = load_model(stage2_checkpoint)
    with pytest.warns(UserWarning, match="broken.png"):
        chosen = choose_thresholds(
            trained, _cfg(stage2_checkpoint, test_dir, "x", threshold="f1", threshold_images=str(labelled))
        )
    readable = choose_thresholds(
        trained, _cfg(stage2_checkpoint, test_dir, "x", threshold="f1", threshold_images=str(test_dir))
    )
    assert chosen == readable


def _noise_images(folder: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


def test_fused_checkpoint_decides_on_the_papers_score_and_masks_on_the_fused_map(fused_checkpoint, tmp_path):
    images = _noise_images(tmp_path / "in", 3)
    trained = load_model(fused_checkpoint)
    model = trained.model
    assert model.output == "fused" and not torch.isclose(model.threshold, model.map_threshold)
    rows = list(csv.DictReader(run(_cfg(fused_checkpoint, images, tmp_path / "out")).open()))
    assert len(rows) == 3
    predicted = {path.name: (score, amap) for path, score, amap in _outputs(trained, find_images(images))}
    for row in rows:  # the decision: the paper's score against the threshold chosen on it
        assert float(row["threshold"]) == pytest.approx(float(model.threshold), rel=1e-5)
        assert int(row["is_anomalous"]) == (float(row["score"]) > float(row["threshold"]))
        score, amap = predicted[Path(row["path"]).name]
        assert float(row["score"]) == pytest.approx(score, rel=1e-5)
        mask = np.asarray(Image.open(tmp_path / "out" / "masks" / Path(row["path"]).name))[..., 0] > 0
        own = torch.from_numpy(amap > float(model.map_threshold)).float()[None, None]
        expected = F.interpolate(own, (80, 80), mode="nearest-exact")[0, 0].numpy() > 0.5
        np.testing.assert_array_equal(mask, expected)  # the mask: the fused map's own, at the image's size
    with torch.no_grad():
        paper = model(torch.randn(2, 3, 64, 64), maps=model.map_names())
    assert torch.equal(paper.score, paper.maps["aand"].flatten(1).amax(1))


def test_fused_checkpoint_chooses_each_threshold_on_its_own_values(fused_checkpoint, tmp_path):
    images = _noise_images(tmp_path / "good", 5)
    trained = load_model(fused_checkpoint)
    outputs = _outputs(trained, find_images(images))
    scores, peaks = np.array([s for _, s, _ in outputs]), np.array([amap.max() for *_, amap in outputs])
    assert not np.allclose(scores, peaks)
    chosen = choose_thresholds(
        trained,
        _cfg(fused_checkpoint, images, "x", threshold="percentile", threshold_images=str(images)),
    )
    assert chosen.score == pytest.approx(np.percentile(scores, 99))
    assert chosen.map == pytest.approx(np.percentile(peaks, 99))


# A preprocessing unlike every default (size, resize method, mean, std): a stage that fell back to a
# default of its own would feed the model other tensors than training did.
PREPROCESSING = (
    "dataset.image_size=[64,96]", "preprocessing.interpolation=cv2_cubic",
    "+preprocessing.mean=[0.5,0.4,0.3]", "+preprocessing.std=[0.2,0.25,0.3]",
)  # fmt: skip


def test_train_predict_and_export_use_the_one_preprocessing(
    train_in_process, cli_arguments, cli_in_process, tmp_path
):
    """The training config's `preprocessing` is what the datamodule feeds, what the checkpoint stores,
    what the export sidecar says and what predict feeds the model, bit for bit."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from aand_lightning.config import config_dir
    from aand_lightning.data.preprocessing import Preprocessing

    overrides = ("stage=distill", "raa=off", *PREPROCESSING)
    _, run_dir = train_in_process("run", *overrides)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            "train", return_hydra_config=True,
            overrides=cli_arguments(tmp_path, run_dir, f"hydra.runtime.output_dir={run_dir}", *overrides),
        )  # fmt: skip
    HydraConfig.instance().set_config(cfg)  # as in the training run: paths resolve against its runtime
    configured = instantiate(cfg.preprocessing)
    assert configured == Preprocessing((64, 96), "cv2_cubic", (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    datamodule = instantiate(cfg.datamodule)
    assert datamodule.preprocessing == configured

    ckpt = run_dir / "distill" / "checkpoints" / "last.ckpt"
    trained = load_model(ckpt)
    assert trained.preprocessing == configured

    output = tmp_path / "model.onnx"
    exported = cli_in_process("export", f"ckpt={ckpt}", f"output={output}", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    sidecar = json.loads(output.with_name("model.onnx.json").read_text())["preprocessing"]
    assert sidecar == {"image_size": [64, 96], "interpolation": "cv2_cubic", "mean": [0.5, 0.4, 0.3],
                       "std": [0.2, 0.25, 0.3]}  # fmt: skip
    assert Preprocessing.from_dict(sidecar) == configured

    datamodule.setup()
    sample = datamodule.splits.train[0]
    item = datamodule.dataset([sample], "normal")[0]
    fed = []
    hook = trained.model.register_forward_pre_hook(lambda _, args: fed.append(args[0].clone()))
    try:
        (prediction,) = Inferencer.from_checkpoint(trained).predict(sample.image)
    finally:
        hook.remove()
    assert prediction.path == sample.image and len(fed) == 1
    assert prediction.anomaly_map.shape == read_image(sample.image).shape[:2]
    assert fed[0].shape == (1, 3, 64, 96) and torch.equal(fed[0][0], item.image)
    # the check tells them apart: the defaults (PIL bicubic, ImageNet statistics) give another tensor
    _, default_input = Preprocessing((64, 96))(read_image(sample.image))
    assert not torch.allclose(default_input, item.image, atol=1e-3)
