"""`python -m aand_lightning.export ckpt=<stage-2 checkpoint> [format=onnx|openvino] [output=<file>]`.

Exports `DeployedModel`: uint8 RGB images (B, H, W, 3) at the model's size in; `score`,
`anomaly_map`, `normalized_score` and `mask` out, with the normalisation and both thresholds inside
the graph and a dynamic batch. ONNX goes through torch's dynamo exporter (`exporter=legacy`: the
TorchScript-based one, a fallback for models the dynamo exporter cannot take); OpenVINO IR (.xml +
.bin) is converted from the same `torch.export` graph. TorchScript is not offered: `torch.jit` is
deprecated, and Python users run the checkpoint itself. Every export is run on random uint8 images
(batch 1 and 3) and compared with PyTorch; above `tolerance` it is refused. A JSON sidecar
(`<file>.json`) holds the preprocessing (the resize stays outside the graph, since it depends on the
input's size), the thresholds, the input and outputs, and the measured difference. Reading the
sidecar and running the file: `artifacts/exported.py`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from aand_lightning.artifacts.checkpoint import load_model
from aand_lightning.artifacts.exported import (
    FORMATS,
    OUTPUTS,
    STATIC_BATCH_NOTE,
    ExportError,
    deployed_model,
    run_exported,
    runtime_package,
    sidecar_path,
)
from aand_lightning.config.command_line import entry_point
from aand_lightning.data.preprocessing import Preprocessing
from aand_lightning.models.deployed import Deployed, DeployedModel
from aand_lightning.reporting.failures import user_errors

EXPORTERS = ("dynamo", "legacy")
INPUT = "image"
BATCH = {"images": {0: torch.export.Dim("batch", min=1)}}  # DeployedModel.forward(images)


def suffix(fmt: str) -> str:
    """The file suffix of an export format; an unknown format is a user error."""
    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format {fmt!r}; pass format=onnx or format=openvino.")
    return FORMATS[fmt]


def export(
    deployed: DeployedModel,
    image_size: tuple[int, int],
    fmt: str,
    path: Path,
    opset: int = 18,
    exporter: str = "dynamo",
) -> Path:
    """Write `deployed` as `fmt` to `path` (OpenVINO: `path` .xml and its .bin, converted from the
    `torch.export` graph by OpenVINO's PyTorch frontend); the batch stays dynamic."""
    suffix(fmt)
    if exporter not in EXPORTERS:
        raise ExportError(f"Unknown exporter={exporter!r}; pass exporter=dynamo or exporter=legacy.")
    if fmt == "openvino" and exporter != "dynamo":
        raise ExportError("exporter=legacy is for format=onnx; leave exporter out for format=openvino.")
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, *image_size, 3, dtype=torch.uint8)
    if fmt == "openvino":
        ov = runtime_package("openvino")
        with torch.no_grad():
            program = _dynamo(lambda: torch.export.export(deployed, (example,), dynamic_shapes=BATCH))
        model = ov.convert_model(program)
        for port, name in zip([*model.inputs, *model.outputs], (INPUT, *OUTPUTS), strict=True):
            port.get_tensor().set_names({name})
        ov.save_model(model, path, compress_to_fp16=False)  # float32, as checked
        return path
    names = {"input_names": [INPUT], "output_names": list(OUTPUTS), "opset_version": opset}
    with torch.no_grad():
        if exporter == "legacy":
            axes = {name: {0: "batch"} for name in (INPUT, *OUTPUTS)}
            torch.onnx.export(deployed, (example,), path, dynamo=False, dynamic_axes=axes, **names)
            return path
        runtime_package("onnxscript")
        program = _dynamo(
            lambda: torch.onnx.export(
                deployed, (example,), dynamo=True, dynamic_shapes=BATCH, verbose=False, **names
            )
        )
    program.save(str(path))
    return path


def _dynamo(capture: Callable[[], Any]) -> Any:
    """Run a torch.export-based capture with the ONNX passes' INFO logs quiet; its failure, one sentence."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        return capture()
    except Exception as error:  # the exporter's own errors are many types, none of them a user's fault
        first = str(error).splitlines()[0] if str(error) else ""
        raise ExportError(
            f"torch's dynamo exporter failed on this model ({type(error).__name__}: {first}); pass "
            "format=onnx exporter=legacy to use the TorchScript-based ONNX exporter."
        ) from error
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@dataclass(frozen=True)
class Difference:
    """Exported against PyTorch: the largest absolute difference over the float outputs, and the mask
    pixels that differ where the map is farther than the tolerance from the map threshold (closer, a
    rounding difference may flip a pixel legitimately)."""

    largest: float
    mask_pixels: int


def compare(deployed: DeployedModel, path: Path, images: np.ndarray, tolerance: float = 1e-4) -> Difference:
    """Run `images` (uint8, B x H x W x 3) through the exported file and through PyTorch."""
    with torch.no_grad():
        reference = Deployed(*(t.numpy() for t in deployed(torch.from_numpy(images))))
    return difference(reference, run_exported(path, images), float(deployed.model.map_threshold), tolerance)


def difference(reference: Deployed, exported: Deployed, map_threshold: float, tolerance: float) -> Difference:
    """`exported` against `reference` (numpy `Deployed`s of the same images)."""
    largest = max(
        float(np.abs(getattr(exported, name).astype(np.float64) - getattr(reference, name)).max())
        for name in ("score", "anomaly_map", "normalized_score")
    )
    decided = np.abs(reference.anomaly_map - map_threshold) > tolerance
    return Difference(largest, int(((exported.mask != reference.mask) & decided).sum()))


def check_images(image_size: tuple[int, int], batch_sizes: tuple[int, ...] = (1, 3)) -> list[np.ndarray]:
    """The check's inputs: random uint8 images of each batch size (the exported batch is dynamic)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (batch, *image_size, 3), dtype=np.uint8) for batch in batch_sizes]


@entry_point("export")
def main(cfg: DictConfig) -> None:
    with user_errors():
        _export(cfg)


def _export(cfg: DictConfig) -> Path:
    """Export, check against PyTorch (refused above `tolerance`), then write the sidecar."""
    ending = suffix(cfg.format)
    path = Path(cfg.output) if cfg.output else Path(cfg.ckpt).with_suffix(ending)
    if path.suffix != ending:  # run_exported and the readers tell the format by the suffix
        raise ExportError(
            f"output={path} does not end in {ending}, the suffix of format={cfg.format}; pass "
            f"output={path.with_name(path.name + ending) if path.suffix == '' else path.with_suffix(ending)}."
        )
    trained = load_model(cfg.ckpt)
    deployed = deployed_model(trained, cfg.threshold, cfg.map_threshold)
    image_size = trained.preprocessing.image_size
    export(deployed, image_size, cfg.format, path, cfg.opset, cfg.exporter)
    print(f"Exported {cfg.format} to {path}")
    differences = [compare(deployed, path, images, cfg.tolerance) for images in check_images(image_size)]
    largest = max(d.largest for d in differences)
    mask_pixels = sum(d.mask_pixels for d in differences)
    print(
        f"Max |exported − PyTorch| on random uint8 images (batch 1 and 3): {largest:.2e} over score, "
        f"anomaly_map and normalized_score; mask pixels that differ: {mask_pixels}"
    )
    if largest > cfg.tolerance or mask_pixels:
        raise ExportError(
            f"The exported model differs from PyTorch by {largest:.2e} (tolerance={cfg.tolerance}, "
            f"{mask_pixels} mask pixels); try format=onnx with exporter=legacy or another opset, and report "
            "the model if it persists."
        )
    overrides = {key: cfg[key] for key in ("threshold", "map_threshold") if cfg[key] is not None}
    source = ", ".join(f"{key}={value}" for key, value in overrides.items()) or "checkpoint"
    sidecar = describe(cfg.format, trained.preprocessing, deployed, source, largest)
    sidecar_path(path).write_text(json.dumps(sidecar, indent=2))
    print(f"Preprocessing, thresholds and inputs/outputs in {sidecar_path(path)}")
    return path


def describe(
    fmt: str, preprocessing: Preprocessing, deployed: DeployedModel, source: str, largest: float
) -> dict[str, Any]:
    """The sidecar's content; `source` says where the thresholds came from, `largest` is the check's
    difference to PyTorch."""
    height, width = preprocessing.image_size
    threshold, map_threshold = float(deployed.model.threshold), float(deployed.model.map_threshold)
    per_image, per_pixel = ["batch"], ["batch", 1, height, width]
    return {
        "format": fmt,
        "input": {
            "name": INPUT, "dtype": "uint8", "shape": ["batch", height, width, 3],
            "note": "RGB, resized to image_size by preprocessing.interpolation; the graph normalises",
        },
        "outputs": {
            "score": {"dtype": "float32", "shape": per_image, "note": "anomalous: score > threshold"},
            "anomaly_map": {"dtype": "float32", "shape": per_pixel},
            "normalized_score": {"dtype": "float32", "shape": per_image,
                                 "note": "clamp(score / (2 * threshold), 0, 1): 0.5 at the threshold"},
            "mask": {"dtype": "bool", "shape": per_pixel, "note": "anomaly_map > map_threshold"},
        },
        "preprocessing": preprocessing.to_dict(),
        "threshold": threshold,
        "map_threshold": map_threshold,
        "thresholds_from": source,
        "max_difference_to_pytorch": largest,
        **({"note": STATIC_BATCH_NOTE} if fmt == "openvino" else {}),
    }  # fmt: skip


if __name__ == "__main__":
    main()
