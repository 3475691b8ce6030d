import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from aand_lightning.checkpoint import load_model
from aand_lightning.predict import PredictError, choose_thresholds, find_images, predict_images, run


def _cfg(ckpt: Path, input_path: Path, output: Path, **kwargs) -> OmegaConf:
    base = {
        "ckpt": str(ckpt), "input": str(input_path), "output": str(output), "batch_size": 4,
        "device": "cpu", "threshold": "stored", "threshold_images": None, "threshold_percentile": 99,
    }  # fmt: skip
    return OmegaConf.create(base | kwargs)


def test_predict_folder_writes_overlays_masks_and_scores(stage2_checkpoint, demo_root, tmp_path):
    test_dir = demo_root / "brick" / "test"
    (tmp_path / "broken.png").write_bytes(b"not an image")
    scores_csv = run(_cfg(stage2_checkpoint, test_dir, tmp_path / "out"))
    rows = list(csv.DictReader(scores_csv.open()))
    assert len(rows) == len(find_images(test_dir)) == 25
    model, _ = load_model(stage2_checkpoint)
    assert all(float(r["threshold"]) == pytest.approx(float(model.threshold), rel=1e-5) for r in rows)
    assert all(int(r["is_anomalous"]) == (float(r["score"]) > float(r["threshold"])) for r in rows)
    assert len(list((tmp_path / "out" / "overlays").glob("*.png"))) == 25
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 25
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
    model, model_config = load_model(stage2_checkpoint)
    test_dir = demo_root / "brick" / "test"
    number = choose_thresholds(model, model_config, _cfg(stage2_checkpoint, test_dir, "x", threshold=0.25))
    assert number.score == number.map == 0.25
    stored = choose_thresholds(model, model_config, _cfg(stage2_checkpoint, test_dir, "x"))
    assert stored.score == stored.map == pytest.approx(float(model.threshold))
    good = sorted((test_dir / "good").glob("*.png"))
    good_scores = np.array([s for *_, s in predict_images(model, model_config, good, progress=False)])
    percentile = choose_thresholds(
        model,
        model_config,
        _cfg(
            stage2_checkpoint, test_dir, "x", threshold="percentile", threshold_images=str(test_dir / "good")
        ),
    )
    assert percentile.score == percentile.map == pytest.approx(np.percentile(good_scores, 99))
    paths = find_images(test_dir)
    scores = np.array([s for *_, s in predict_images(model, model_config, paths, progress=False)])
    labels = np.array([p.parent.name != "good" for p in paths])
    f1_threshold = choose_thresholds(
        model,
        model_config,
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
    model, model_config = load_model(stage2_checkpoint)
    with pytest.raises(PredictError, match="threshold_images="):
        choose_thresholds(model, model_config, _cfg(stage2_checkpoint, tmp_path, "x", threshold="percentile"))
    with pytest.raises(PredictError, match="Unknown threshold"):
        choose_thresholds(model, model_config, _cfg(stage2_checkpoint, tmp_path, "x", threshold="median"))
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
        choose_thresholds(model, model_config, unreadable)
    model.threshold.fill_(float("nan"))  # a checkpoint trained without validation images
    with pytest.raises(PredictError, match="threshold=<number>"):
        choose_thresholds(model, model_config, _cfg(stage2_checkpoint, tmp_path, "x"))


def _noise_images(folder: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


def test_fused_checkpoint_decides_on_the_papers_score_and_masks_on_the_fused_map(fused_checkpoint, tmp_path):
    images = _noise_images(tmp_path / "in", 3)
    model, model_config = load_model(fused_checkpoint)
    assert model.map_name == "fused" and not torch.isclose(model.threshold, model.map_threshold)
    rows = list(csv.DictReader(run(_cfg(fused_checkpoint, images, tmp_path / "out")).open()))
    assert len(rows) == 3
    predicted = {
        p.name: (amap, score)
        for p, _, amap, score in predict_images(model, model_config, find_images(images))
    }
    for row in rows:  # the decision: the paper's score against the threshold chosen on it
        assert float(row["threshold"]) == pytest.approx(float(model.threshold), rel=1e-5)
        assert int(row["is_anomalous"]) == (float(row["score"]) > float(row["threshold"]))
        amap, score = predicted[Path(row["path"]).name]
        assert float(row["score"]) == pytest.approx(score, rel=1e-5)
        mask = np.asarray(Image.open(tmp_path / "out" / "masks" / Path(row["path"]).name))[..., 0] > 0
        np.testing.assert_array_equal(
            mask, amap > float(model.map_threshold)
        )  # the mask: the fused map's own
    with torch.no_grad():
        paper = model(torch.randn(2, 3, 64, 64), all_maps=True)
    assert torch.equal(paper.scores, paper.maps_by_name["aand"].flatten(1).amax(1))


def test_fused_checkpoint_chooses_each_threshold_on_its_own_values(fused_checkpoint, tmp_path):
    images = _noise_images(tmp_path / "good", 5)
    model, model_config = load_model(fused_checkpoint)
    outputs = list(predict_images(model, model_config, find_images(images), progress=False))
    scores, peaks = np.array([s for *_, s in outputs]), np.array([amap.max() for *_, amap, _ in outputs])
    assert not np.allclose(scores, peaks)
    chosen = choose_thresholds(
        model,
        model_config,
        _cfg(fused_checkpoint, images, "x", threshold="percentile", threshold_images=str(images)),
    )
    assert chosen.score == pytest.approx(np.percentile(scores, 99))
    assert chosen.map == pytest.approx(np.percentile(peaks, 99))
