"""aand_lightning: AAND (Residual Anomaly Amplification + Hard Knowledge Distillation), Lightning + Hydra."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Inferencer", "train"]

if TYPE_CHECKING:
    from aand_lightning.inference import Inferencer
    from aand_lightning.train import train

# The public API by name → its module, imported on first use, so that importing one submodule (the
# entry points, `errors`) does not load the whole package.
_API = {"Inferencer": "aand_lightning.inference"}


def __getattr__(name: str) -> Any:
    if name == "train":  # the entry-point module itself, made callable in train.py: `python -m` and the call
        return importlib.import_module("aand_lightning.train")
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'aand_lightning' has no attribute {name!r}")
