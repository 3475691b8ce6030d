"""Rebuild a trained AAND model from a stage-2 checkpoint alone (no config, no download)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aand_lightning.artifacts.migrate import migrate_model_state, migrate_settings
from aand_lightning.artifacts.torch_file import load_torch_file
from aand_lightning.data.preprocessing import Preprocessing
from aand_lightning.errors import UserError
from aand_lightning.models.aand import AAND
from aand_lightning.models.build import build_aand

# The config sections a stage-2 model is built from, stored in its checkpoint (`TrainedModel.settings`).
MODEL_SETTINGS = ("backbone", "raa", "anomaly_map")
STAGE2_HINT = "pass ckpt=<run dir>/distill/checkpoints/last.ckpt (a stage-2 checkpoint)"


class CheckpointError(UserError):
    """The file is not a usable stage-2 checkpoint; the message names what to pass."""


@dataclass
class TrainedModel:
    """A stage-2 model in eval mode (thresholds included), the preprocessing it was trained with, and
    the settings it was built from (`MODEL_SETTINGS`: backbone, raa, anomaly_map)."""

    model: AAND
    preprocessing: Preprocessing
    settings: dict[str, Any]


def load_model(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> TrainedModel:
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}; {STAGE2_HINT}.")
    payload = load_torch_file(path, "a stage-2 checkpoint", STAGE2_HINT, CheckpointError)
    if payload.get("format", "").startswith(("aand-teacher", "aand-amplifier")):
        raise CheckpointError(f"{path} is a stage-1 amplifier, not a trained detector; {STAGE2_HINT}.")
    config = payload.get("hyper_parameters", {}).get("model_config")
    if not config:
        raise CheckpointError(f"{path} is not a stage-2 (distill) checkpoint; {STAGE2_HINT}.")
    config = migrate_settings(config)
    model = build_aand(config["backbone"], config["raa"], config["anomaly_map"], weights="none")
    state = {k.removeprefix("model."): v for k, v in payload["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(migrate_model_state(state, model.output), strict=True)
    preprocessing = Preprocessing.from_dict(config.pop("preprocessing"))
    return TrainedModel(model.eval().to(map_location), preprocessing, config)
