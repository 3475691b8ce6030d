"""`python -m aand_lightning.export ckpt=<stage-2 checkpoint> format=onnx|torchscript [output=<file>]`.

Exports the whole inference path — normalised image (B,3,H,W) → anomaly map (B,1,H,W) and score (B,),
σ = 4 smoothing included — with a dynamic batch dimension, checks it numerically against PyTorch
and writes a JSON sidecar with the model's preprocessing (image size, interpolation, mean, std; the
same value the checkpoint stores) and the thresholds (on the score, and on the map for masks).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from aand_lightning.artifacts.checkpoint import load_model
from aand_lightning.config import config_dir
from aand_lightning.errors import UserError
from aand_lightning.models.aand import AAND
from aand_lightning.reporting.failures import user_errors

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


class InferencePath(nn.Module):
    """AAND as a plain function of tensors, as exporters want: image → (map, score)."""

    def __init__(self, model: AAND) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        return out.map, out.score


def suffix(fmt: str) -> str:
    """The file suffix of an export format; an unknown format is a user error."""
    if fmt not in SUFFIX:
        raise UserError(f"Unknown export format {fmt!r}; pass format=onnx or format=torchscript.")
    return SUFFIX[fmt]


def export(model: AAND, image_size: tuple[int, int], fmt: str, path: Path, opset: int = 17) -> Path:
    """Write the exported model; batch size stays dynamic."""
    suffix(fmt)
    wrapper = InferencePath(model).eval()
    example = torch.randn(2, 3, *image_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(wrapper, example), str(path))
        else:
            torch.onnx.export(
                wrapper, (example,), str(path), dynamo=False, opset_version=opset,
                input_names=["image"], output_names=["anomaly_map", "score"],
                dynamic_axes={"image": {0: "batch"}, "anomaly_map": {0: "batch"}, "score": {0: "batch"}},
            )  # fmt: skip
    return path


def run_exported(path: Path, fmt: str, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Run an exported model (onnxruntime for ONNX) on normalised images."""
    if fmt == "torchscript":
        with torch.no_grad():
            maps, scores = torch.jit.load(str(path))(images)
        return maps.numpy(), scores.numpy()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    maps, scores = session.run(None, {"image": images.numpy()})
    return maps, scores


def max_difference(
    model: AAND, path: Path, fmt: str, image_size: tuple[int, int], batch_sizes=(1, 3)
) -> float:
    """Largest |exported − PyTorch| over the maps and scores of random inputs of several batch sizes."""
    worst = 0.0
    generator = torch.Generator().manual_seed(0)
    for batch in batch_sizes:
        images = torch.randn(batch, 3, *image_size, generator=generator)
        with torch.no_grad():
            out = model(images)
        maps, scores = run_exported(path, fmt, images)
        worst = max(
            worst,
            float(np.abs(maps - out.map.numpy()).max()),
            float(np.abs(scores - out.score.numpy()).max()),
        )
    return worst


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="export")
def main(cfg: DictConfig) -> None:
    with user_errors():
        _export(cfg)


def _export(cfg: DictConfig) -> None:
    """Export, write the sidecar, and verify against PyTorch."""
    trained = load_model(cfg.ckpt)
    model, image_size = trained.model, trained.preprocessing.image_size
    path = Path(cfg.output) if cfg.output else Path(cfg.ckpt).with_suffix(suffix(cfg.format))
    export(model, image_size, cfg.format, path, cfg.opset)
    threshold, map_threshold = float(model.threshold), float(model.map_threshold)
    sidecar = {
        "format": cfg.format, "input": "normalised RGB image (B, 3, H, W), float32",
        "outputs": ["anomaly_map (B, 1, H, W)", "score (B,)"],
        "preprocessing": trained.preprocessing.to_dict(),
        "threshold": None if math.isnan(threshold) else threshold,  # anomalous: score > threshold
        "map_threshold": None if math.isnan(map_threshold) else map_threshold,  # mask: map > map_threshold
    }  # fmt: skip
    sidecar_path = path.with_name(path.name + ".json")  # model.onnx.json: onnx and .pt sidecars never clash
    sidecar_path.write_text(json.dumps(sidecar, indent=2))
    print(f"Exported {cfg.format} to {path} (preprocessing in {sidecar_path})")
    if cfg.verify:
        difference = max_difference(model, path, cfg.format, image_size)
        print(f"Max |exported − PyTorch| on random inputs (batch 1 and 3): {difference:.2e}")
        if difference > cfg.tolerance:
            raise UserError(
                f"The exported model differs from PyTorch by {difference:.2e} > tolerance={cfg.tolerance}; "
                "try another opset (opset=...) or format=torchscript, and report the model if it persists."
            )


if __name__ == "__main__":
    main()
