"""`Inferencer`: a trained detector as a Python object — images in, one typed `Prediction` per image out.

Built from a stage-2 checkpoint or from an exported model; both run the same `DeployedModel`
computation (uint8 RGB at the model's size → score, map, normalised score, mask), so the only steps
here are the ones that depend on the input: reading it, resizing it to the model's size with the
checkpoint's `Preprocessing.resize` (what training and the datasets use), and bringing the map
(bilinear) and the mask (nearest, so every masked model pixel stays masked) back to the input's
own size.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from aand_lightning.artifacts.checkpoint import TrainedModel, load_model
from aand_lightning.artifacts.exported import deployed_model, read_sidecar, run_exported
from aand_lightning.data.io import CorruptImageError, list_images, read_image, rgb_array
from aand_lightning.data.preprocessing import Preprocessing
from aand_lightning.errors import UserError
from aand_lightning.models.deployed import Deployed, DeployedModel

# One image or many: a file or folder path, a uint8 HxWx3 RGB array, a PIL image, a CxHxW or BxCxHxW
# tensor (uint8, or float RGB in [0, 1]), or a list of these.
Images = str | Path | np.ndarray | Image.Image | torch.Tensor | Sequence["Images"]
# The deployed computation: uint8 (B, H, W, 3) at the model's size → `Deployed` of numpy arrays.
Backend = Callable[[np.ndarray], Deployed]


class PredictError(UserError):
    """Bad input to predict (the command or the Python API); the message names the fix."""


@dataclass(frozen=True, eq=False)
class Prediction:
    """One image's answer. `score`: the raw image score; `is_anomalous`: score > the decision
    threshold; `normalized_score`: on [0, 1] with 0.5 at that threshold; `anomaly_map` (float32 HxW)
    and `mask` (bool HxW: map pixels above the map threshold) at the input's own size; `image`: the
    input as uint8 HxWx3 RGB; `path`: its file (None for an image given in memory)."""

    score: float
    is_anomalous: bool
    normalized_score: float
    anomaly_map: np.ndarray
    mask: np.ndarray
    image: np.ndarray
    path: Path | None = None


@dataclass(frozen=True)
class _Source:
    """One input image, read only when its batch runs."""

    read: Callable[[], np.ndarray]
    path: Path | None = None


def find_images(path: str | Path) -> list[Path]:
    """One image, or every image below a folder (sorted, recursive, hidden files skipped)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PredictError(f"Input {path} does not exist; pass input=<an image or a folder of images>.")
    images = list_images(path, recursive=True)
    if not images:
        raise PredictError(f"Folder {path} holds no images; pass input=<a folder with png/jpg images>.")
    return images


def _tensor_images(tensor: torch.Tensor) -> list[np.ndarray]:
    """CxHxW or BxCxHxW RGB, uint8 or float in [0, 1] → uint8 HxWx3 arrays (float: round(x·255))."""
    if tensor.ndim not in (3, 4) or tensor.shape[-3] != 3:
        raise PredictError(
            f"A tensor image must be CxHxW or BxCxHxW RGB (channels first, C=3), not {tuple(tensor.shape)}; "
            "pass a numpy array for HxWx3."
        )
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
        if not bool(((tensor >= 0) & (tensor <= 1)).all()):
            raise PredictError(
                "A float tensor is read as RGB in [0, 1], but this one has values outside it (a normalised "
                "image?); pass the unnormalised pixels in [0, 1] or uint8 0-255."
            )
        tensor = (tensor * 255).round().to(torch.uint8)
    elif tensor.dtype != torch.uint8:
        raise PredictError(f"A tensor image must be uint8 or float in [0, 1], not {tensor.dtype}.")
    batch = tensor if tensor.ndim == 4 else tensor[None]
    return list(batch.permute(0, 2, 3, 1).numpy())


def _sources(images: Images) -> list[_Source]:
    """Every image of `images`, in order: files are read lazily, folders listed recursively."""
    if isinstance(images, (str, Path)):
        return [_Source(lambda p=p: read_image(p), p) for p in find_images(images)]
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[2] != 3:
            raise PredictError(
                f"A numpy image must be uint8 HxWx3 RGB, not {images.dtype} {images.shape}; pass float "
                "pixels as a CxHxW tensor in [0, 1]."
            )
        return [_Source(lambda: images)]
    if isinstance(images, Image.Image):
        return [_Source(lambda: rgb_array(images))]
    if isinstance(images, torch.Tensor):
        return [_Source(lambda a=array: a) for array in _tensor_images(images)]
    if isinstance(images, Sequence):
        return [source for item in images for source in _sources(item)]
    raise PredictError(
        f"Cannot predict on a {type(images).__name__}; pass a path, a folder, a uint8 HxWx3 array, a PIL "
        "image, a CxHxW/BxCxHxW tensor or a list of these."
    )


def _to_size(deployed: Deployed, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The map (bilinear) and the mask (nearest) of a one-image `Deployed`, as HxW arrays at `size`."""
    amap = torch.from_numpy(np.asarray(deployed.anomaly_map, dtype=np.float32))
    mask = torch.from_numpy(np.asarray(deployed.mask, dtype=np.float32))
    amap = F.interpolate(amap, size, mode="bilinear", align_corners=False)
    mask = F.interpolate(mask, size, mode="nearest-exact")
    return amap[0, 0].numpy(), mask[0, 0].numpy() > 0.5


class TorchBackend:
    """A `DeployedModel` run by PyTorch on `device`, as a `Backend`."""

    def __init__(self, module: DeployedModel, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.module = module.to(self.device)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> Deployed:
        out = self.module(torch.from_numpy(images).to(self.device))
        return Deployed(*(value.cpu().numpy() for value in out))


class Inferencer:
    """A trained detector: `predict(images)` → one `Prediction` per image.

    `backend` runs the deployed computation (`from_checkpoint`, `from_exported`), `preprocessing`
    says the model's size and resize, `threshold` is the decision threshold its graph normalises the
    score with and `map_threshold` the one its masks use (NaN for a model that has none: then only
    `outputs` works, as predict's threshold choice needs). `batch_size` images run at a time.
    """

    def __init__(
        self,
        backend: Backend,
        preprocessing: Preprocessing,
        threshold: float,
        map_threshold: float,
        batch_size: int = 8,
    ) -> None:
        self.backend = backend
        self.preprocessing = preprocessing
        self.threshold = threshold
        self.map_threshold = map_threshold
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path | TrainedModel,
        threshold: float | None = None,
        map_threshold: float | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
    ) -> Inferencer:
        """From a stage-2 checkpoint file (or one loaded with `load_model`), with the thresholds that
        `aand-export` would put in the graph: the stored ones, or those given (`map_threshold` defaults to
        `threshold`), written into the model (a loaded one is changed); none at all is refused."""
        trained = checkpoint if isinstance(checkpoint, TrainedModel) else load_model(checkpoint)
        module = deployed_model(trained, threshold, map_threshold)
        model = module.model
        return cls(
            TorchBackend(module, device), trained.preprocessing, float(model.threshold),
            float(model.map_threshold), batch_size,
        )  # fmt: skip

    @classmethod
    def from_exported(cls, path: str | Path, batch_size: int = 8) -> Inferencer:
        """From a file written by `aand-export` (ONNX or OpenVINO .xml, with its `<file>.json` sidecar: the
        preprocessing and the thresholds in its graph), run by onnxruntime or OpenVINO on the CPU."""
        sidecar = read_sidecar(path)
        backend = partial(run_exported, Path(path))
        return cls(backend, sidecar.preprocessing, sidecar.threshold, sidecar.map_threshold, batch_size)

    def outputs(
        self, images: Images, progress: bool = False
    ) -> Iterator[tuple[Path | None, np.ndarray, Deployed]]:
        """(file or None, uint8 HxWx3 image, its `Deployed` answer at the model's size: a batch of one)
        for each readable image of `images`; unreadable files are skipped with a warning."""
        sources = _sources(images)
        with tqdm(total=len(sources), disable=not progress, desc="predict", unit="img") as bar:
            for start in range(0, len(sources), self.batch_size):
                batch = sources[start : start + self.batch_size]
                kept, resized = [], []
                for source in batch:
                    try:
                        image = source.read()
                    except CorruptImageError as error:
                        warnings.warn(error.skipped, stacklevel=2)
                        continue
                    kept.append((source, image))
                    resized.append(self.preprocessing.resize(image=image)["image"])
                bar.update(len(batch))
                if not kept:
                    continue
                deployed = self.backend(np.stack(resized))
                for index, (source, image) in enumerate(kept):
                    yield source.path, image, Deployed(*(value[index : index + 1] for value in deployed))

    def predictions(self, images: Images, progress: bool = False) -> Iterator[Prediction]:
        """`predict`, one image at a time (for many images: nothing is kept)."""
        if math.isnan(self.threshold) or math.isnan(self.map_threshold):
            raise PredictError(
                "This model has no thresholds, so it gives scores and maps only (Inferencer.outputs); pass "
                "threshold=<number> to Inferencer.from_checkpoint for predictions."
            )
        for path, image, deployed in self.outputs(images, progress):
            amap, mask = _to_size(deployed, image.shape[:2])
            score = float(deployed.score[0])
            normalized = float(deployed.normalized_score[0])
            yield Prediction(score, score > self.threshold, normalized, amap, mask, image, path)

    def predict(self, images: Images, progress: bool = False) -> list[Prediction]:
        """One `Prediction` per readable image of `images` (see `Images`), in order; unreadable files are
        skipped with a warning."""
        return list(self.predictions(images, progress))
