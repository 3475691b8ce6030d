"""An exported model (`aand-export`'s ONNX or OpenVINO .xml file) and its JSON sidecar: which format a
file is, what the sidecar says (preprocessing, thresholds), and running the file on the CPU; and the
checkpoint's model as the `DeployedModel` that is exported and that the `Inferencer` runs.

Reading and running need no Hydra: the export command (`aand_lightning.export`) and the Python API
(`aand_lightning.inference`) both build on this module.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aand_lightning.artifacts.checkpoint import TrainedModel
from aand_lightning.data.preprocessing import Preprocessing
from aand_lightning.errors import UserError
from aand_lightning.models.deployed import Deployed, DeployedModel

FORMATS = {"onnx": ".onnx", "openvino": ".xml"}
OUTPUTS = Deployed._fields  # score, anomaly_map, normalized_score, mask
STATIC_BATCH_NOTE = (
    "Compile the IR for the batch size you run (model.reshape([B, H, W, 3])): with a dynamic batch, "
    "OpenVINO 2026.4's CPU plugin gave a fused map wrong by 0.9 in this project's tests; at a fixed batch "
    "it matched PyTorch."
)


class ExportError(UserError):
    """The export cannot be made, run or trusted; the message names what to pass."""


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
    """What an exported file needs beside it: the preprocessing whose resize runs before the graph, and
    the thresholds baked into the graph (score → decision, map → mask)."""

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


def runtime_package(name: str) -> Any:
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
        onnxruntime = runtime_package("onnxruntime")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        # no spin-waiting after a run: it took the cores from the Python work between batches (reading,
        # resizing) and from other sessions, 1.2x slower in a two-model test
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        names, feed = [o.name for o in session.get_outputs()], session.get_inputs()[0].name
        return lambda images: dict(zip(names, session.run(None, {feed: images}), strict=True))
    ov = runtime_package("openvino")
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
