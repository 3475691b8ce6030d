import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from aand_lightning.artifacts.checkpoint import load_model
from aand_lightning.export import _export, export, max_difference, run_exported


@pytest.mark.parametrize("checkpoint", ["stage2_checkpoint", "fused_checkpoint"])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_with_dynamic_batch(checkpoint, request, tmp_path, fmt):
    model = load_model(request.getfixturevalue(checkpoint)).model
    path = export(model, (64, 64), fmt, tmp_path / f"model.{fmt}")
    assert max_difference(model, path, fmt, (64, 64), batch_sizes=(1, 3)) < 1e-4
    maps, scores = run_exported(path, fmt, torch.randn(5, 3, 64, 64))
    assert maps.shape == (5, 1, 64, 64) and scores.shape == (5,)
    if checkpoint == "stage2_checkpoint":  # the fused map's score is the paper's map's maximum
        np.testing.assert_allclose(scores, maps.reshape(5, -1).max(1), atol=1e-6)  # smoothing + max inside


def test_export_cli_writes_sidecar(stage2_checkpoint, tmp_path):
    output = tmp_path / "model.onnx"
    command = [
        sys.executable,
        "-m",
        "aand_lightning.export",
        f"ckpt={stage2_checkpoint}",
        "format=onnx",
        f"output={output}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Max |exported − PyTorch|" in result.stdout
    sidecar = json.loads(output.with_name("model.onnx.json").read_text())
    preprocessing = sidecar["preprocessing"]
    assert (
        preprocessing["image_size"] == [64, 64]
        and len(preprocessing["mean"]) == 3
        and sidecar["threshold"] > 0
    )
    assert sidecar["map_threshold"] == sidecar["threshold"]  # the paper's map: one threshold for both


def test_fused_checkpoint_exports_the_fused_map(fused_checkpoint, tmp_path):
    trained = load_model(fused_checkpoint)
    model, anomaly_map = trained.model, trained.settings["anomaly_map"]
    assert anomaly_map["output"] == "fused" and anomaly_map["fused_weight"] == 0.5 and model.output == "fused"
    assert model.fused_map.calibrated and torch.isfinite(model.threshold)
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        out = model(images, maps=model.map_names())
    assert not torch.allclose(out.maps["fused"], out.maps["aand"])
    maps, scores = run_exported(export(model, (64, 64), "onnx", tmp_path / "fused.onnx"), "onnx", images)
    np.testing.assert_allclose(maps, out.maps["fused"].numpy(), atol=1e-4)
    np.testing.assert_allclose(scores, out.score.numpy(), atol=1e-4)
    np.testing.assert_allclose(scores, out.maps["aand"].flatten(1).amax(1).numpy(), atol=1e-4)


def test_fused_sidecar_carries_both_thresholds(fused_checkpoint, tmp_path):
    output = tmp_path / "fused.pt"
    settings = {"ckpt": str(fused_checkpoint), "format": "torchscript", "output": str(output), "opset": 17,
                "verify": True, "tolerance": 1e-4}  # fmt: skip
    _export(OmegaConf.create(settings))
    sidecar = json.loads(output.with_name("fused.pt.json").read_text())
    model = load_model(fused_checkpoint).model
    assert sidecar["threshold"] == pytest.approx(float(model.threshold))
    assert sidecar["map_threshold"] == pytest.approx(float(model.map_threshold))
    assert sidecar["threshold"] != pytest.approx(sidecar["map_threshold"])
