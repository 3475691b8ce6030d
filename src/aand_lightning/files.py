"""Reading the project's own torch files (checkpoints, stage-1 artifacts) safely, with one-sentence errors."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from aand_lightning.errors import UserError

# What torch.load raises for a file that is not a (weights-only loadable) torch file.
TORCH_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, zipfile.BadZipFile)


def load_torch_file(
    path: Path, expected: str, fix: str, error: type[UserError] = UserError
) -> dict[str, Any]:
    """torch.load with weights_only=True; any failure becomes `error`, naming the file and what was expected.

    torch's own messages suggest `weights_only=False`, which would run code from an untrusted file.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except TORCH_LOAD_ERRORS as err:
        raise error(f"{path} is not {expected} (it cannot be read as a PyTorch file); {fix}.") from err
    if not isinstance(payload, dict):
        raise error(f"{path} is not {expected} (it holds a {type(payload).__name__}); {fix}.")
    return payload
