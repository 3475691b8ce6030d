"""`python -m aand_lightning.export ckpt=<stage-2 checkpoint> [format=onnx|openvino] [output=<file>]`.

Exports `DeployedModel`: uint8 RGB images (B, H, W, 3) at the model's size in; `score`,
`anomaly_map`, `normalized_score` and `mask` out, with the normalisation and both thresholds inside
the graph and a dynamic batch. ONNX goes through torch's dynamo exporter (`exporter=legacy`: the
TorchScript-based one, a fallback for models the dynamo exporter cannot take); OpenVINO IR (.xml +
.bin) is converted from the same `torch.export` graph. TorchScript is not offered: `torch.jit` is
deprecated, and Python users run the checkpoint itself. Every export is run on random uint8 images
(batch 1 and 3) and compared with PyTorch; above `tolerance` it is refused. A JSON sidecar
(`<file>.json`) holds the preprocessing (the resize stays outside the graph, since it depends on the
input's size), the thresholds, the input and outputs, and the measured difference.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from aand_lightning.artifacts.checkpoint import TrainedModel, load_model
from aand_lightning.config.command_line import entry_point
from aand_lightning.data.preprocessing import Preprocessing
from aand_lightning.errors import UserError
from aand_lightning.models.deployed import Deployed, DeployedModel
from aand_lightning.reporting.failures import user_errors

FORMATS = {"onnx": ".onnx", "openvino": ".xml"}
EXPORTERS = ("dynamo", "legacy")
INPUT = "image"
STATIC_BATCH_NOTE = (
    "Compile the IR for the batch size you run (model.reshape([B, H, W, 3])): with a dynamic batch, "
    "OpenVINO 2026.4's CPU plugin gave a fused map wrong by 0.9 in this project's tests; at a fixed batch "
    "it matched PyTorch."
)
BATCH = {"images": {0: torch.export.Dim("batch", min=1)}}  # DeployedModel.forward(images)
OUTPUTS = Deployed._fields  # score, anomaly_map, normalized_score, mask


class ExportError(UserError):
    """The export cannot be made, run or trusted; the message names what to pass."""


def suffix(fmt: str) -> str:
    """The file suffix of an export format; an unknown format is a user error."""
    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format {fmt!r}; pass format=onnx or format=openvino.")
    return FORMATS[fmt]


def format_of(path: Path) -> str:
    """The format of an exported file, from its suffix."""
    for fmt, ending in FORMATS.items():
        if path.suffix == ending:
            return fmt
    raise ExportError(f"{path} is no exported model; pass a .onnx or an OpenVINO .xml file.")


def sidecar_path(path: Path) -> Path:
    """`model.onnx` → `model.onnx.json`: sidecars of different formats never clash."""
    return path.with_name(path.name + ".json")


@dataclass(frozen=True)
class Sidecar:
    """What an exported file needs beside it: its format, the preprocessing whose resize runs before
    the graph, and the thresholds baked into the graph (score → decision, map → mask)."""

    format: str
    preprocessing: Preprocessing
    threshold: float
    map_threshold: float


def read_sidecar(path: str | Path) -> Sidecar:
    """The sidecar of the exported file `path`."""
    json_path = sidecar_path(Path(path))
    if not json_path.is_file():
        raise ExportError(f"No sidecar {json_path} beside {path}; export the model again with aand-export.")
    values = json.loads(json_path.read_text())
    return Sidecar(
        values["format"],
        Preprocessing.from_dict(values["preprocessing"]),
        values["threshold"],
        values["map_threshold"],
    )


def deployed_model(
    trained: TrainedModel, threshold: float | None = None, map_threshold: float | None = None
) -> DeployedModel:
    """The checkpoint's model as `DeployedModel`, with the thresholds given in place of the stored ones
    (`map_threshold` defaults to `threshold`: the paper's map scores an image by its maximum). A
    threshold that is neither given nor stored is refused: the normalised score and the mask would be
    NaN and empty."""
    model = trained.model
    if threshold is not None:
        model.threshold.fill_(float(threshold))
        model.map_threshold.fill_(float(threshold if map_threshold is None else map_threshold))
    elif map_threshold is not None:
        model.map_threshold.fill_(float(map_threshold))
    if torch.isnan(model.threshold) or torch.isnan(model.map_threshold):
        raise ExportError(
            "This checkpoint stores no threshold (it saw no normal validation images); pass "
            "threshold=<score> (and map_threshold=<map value> for masks on another map than the score's)."
        )
    return DeployedModel(model, trained.preprocessing.mean, trained.preprocessing.std)


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
        ov = _runtime_package("openvino")
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
        _runtime_package("onnxscript")
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


def _runtime_package(name: str) -> Any:
    """Import an optional export package, or say which extra installs it."""
    try:
        return __import__(name)
    except ImportError as error:
        extra = "openvino" if name == "openvino" else "export"
        raise ExportError(f"{name} is not installed; pip install 'aand-lightning[{extra}]'.") from error


@functools.lru_cache(maxsize=8)
def runtime(
    path: str, modified_ns: int = 0, threads: int = 0
) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """An exported one-input file loaded for the CPU (onnxruntime for .onnx; openvino for .xml, compiled
    once per input shape: `STATIC_BATCH_NOTE`), in float32 with `threads` intra-op threads (0: the
    runtime's default): input array → every output by name. Cached per file version (`modified_ns`), so
    repeated calls reuse the loaded model."""
    if format_of(Path(path)) == "onnx":
        onnxruntime = _runtime_package("onnxruntime")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        # no spin-waiting after a run: it took the cores from the Python work between batches (reading,
        # resizing) and from other sessions, 1.2x slower in a two-model test
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        names, feed = [o.name for o in session.get_outputs()], session.get_inputs()[0].name
        return lambda images: dict(zip(names, session.run(None, {feed: images}), strict=True))
    ov = _runtime_package("openvino")
    core, compiled = ov.Core(), {}
    model = core.read_model(path)
    settings = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        if images.shape not in compiled:  # see STATIC_BATCH_NOTE
            shaped = model.clone()
            shaped.reshape({shaped.inputs[0]: ov.PartialShape(list(images.shape))})
            compiled[images.shape] = core.compile_model(shaped, "CPU", settings)  # f32: not bf16 on AMX
        result = compiled[images.shape](images)
        return {output.get_any_name(): result[output] for output in compiled[images.shape].outputs}

    return run


def run_exported(path: str | Path, images: np.ndarray) -> Deployed:
    """Run an exported file (ONNX with onnxruntime, OpenVINO .xml with openvino, by suffix) on uint8 RGB
    images (B, H, W, 3) at the model's size; a `Deployed` of numpy arrays."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"No exported model at {path}; pass the .onnx or .xml file aand-export wrote.")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ExportError(
            f"An exported model takes uint8 RGB images (B, H, W, 3), got {images.dtype} {images.shape}."
        )
    outputs = runtime(str(path.resolve()), path.stat().st_mtime_ns)(np.ascontiguousarray(images))
    return Deployed(*(np.asarray(outputs[name]) for name in OUTPUTS))


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
    trained = load_model(cfg.ckpt)
    deployed = deployed_model(trained, cfg.threshold, cfg.map_threshold)
    image_size = trained.preprocessing.image_size
    path = Path(cfg.output) if cfg.output else Path(cfg.ckpt).with_suffix(suffix(cfg.format))
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
