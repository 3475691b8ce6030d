"""Reading the project's own torch files (checkpoints, stage-1 artifacts) safely, with one-sentence errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from aand_lightning.errors import UserError


def load_torch_file(
    path: Path, expected: str, fix: str, error: type[UserError] = UserError
) -> dict[str, Any]:
    """torch.load with weights_only=True; any failure becomes `error`, naming the file and what was expected.

    torch's own messages suggest `weights_only=False`, which would run code from an untrusted file. The
    unpickler raises almost any exception type on arbitrary bytes (IndexError, TypeError, ...), so every
    one but an OS error (a missing or unreadable file, reported as such) means "not a torch file".
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:
        raise error(f"{path} is not {expected} (it cannot be read as a PyTorch file); {fix}.") from err
    if not isinstance(payload, dict):
        raise error(f"{path} is not {expected} (it holds a {type(payload).__name__}); {fix}.")
    return payload
