import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from aand_lightning.checkpoint import load_model
from aand_lightning.export import export, max_difference, run_exported


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_with_dynamic_batch(stage2_checkpoint, tmp_path, fmt):
    model, _ = load_model(stage2_checkpoint)
    path = export(model, (64, 64), fmt, tmp_path / f"model.{fmt}")
    assert max_difference(model, path, fmt, (64, 64), batch_sizes=(1, 3)) < 1e-4
    maps, scores = run_exported(path, fmt, torch.randn(5, 3, 64, 64))
    assert maps.shape == (5, 1, 64, 64) and scores.shape == (5,)
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
    assert sidecar["image_size"] == [64, 64] and len(sidecar["mean"]) == 3 and sidecar["threshold"] > 0
