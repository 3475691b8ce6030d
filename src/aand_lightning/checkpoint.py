"""Rebuild a trained AAND model from a stage-2 checkpoint alone (no config, no download)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from aand_lightning.config import with_config_defaults
from aand_lightning.errors import UserError
from aand_lightning.files import load_torch_file
from aand_lightning.models.aand import AAND
from aand_lightning.models.build import build_aand

STAGE2_HINT = "pass ckpt=<run dir>/distill/checkpoints/last.ckpt (a stage-2 checkpoint)"


class CheckpointError(UserError):
    """The file is not a usable stage-2 checkpoint; the message names what to pass."""


def load_model(
    ckpt_path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[AAND, dict[str, Any]]:
    """The model (eval mode, threshold buffer included) and its `model_config` (image size, mean, std...)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}; {STAGE2_HINT}.")
    payload = load_torch_file(path, "a stage-2 checkpoint", STAGE2_HINT, CheckpointError)
    if payload.get("format", "").startswith("aand-teacher"):
        raise CheckpointError(f"{path} is a stage-1 teacher artifact, not a trained detector; {STAGE2_HINT}.")
    config = payload.get("hyper_parameters", {}).get("model_config")
    if not config:
        raise CheckpointError(f"{path} is not a stage-2 (distill) checkpoint; {STAGE2_HINT}.")
    config = with_config_defaults(config)  # a checkpoint of an older version may lack newer settings
    model = build_aand(config["backbone"], config["raa"], config["anomaly_map"], weights="none")
    state = {k.removeprefix("model."): v for k, v in payload["state_dict"].items() if k.startswith("model.")}
    if "map_threshold" not in state:  # written before the masks had their own threshold
        state["map_threshold"] = state["threshold"].clone()
        if model.fusion.enabled:  # its threshold was chosen on the fused map's maxima, not today's score
            state["threshold"] = torch.full_like(state["threshold"], float("nan"))
    model.load_state_dict(state, strict=True)
    return model.eval().to(map_location), config
