"""What the entry points do with errors: one sentence for the user's mistakes, a record of every failure.

`train`, `predict` and `export` print a `UserError` as one line on stderr and exit with status 2.
Set `HYDRA_FULL_ERROR=1` to see the traceback instead.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from aand_lightning.errors import UserError

FAILED = "failed.json"
STAGES = ("amplify", "distill")


def full_error() -> bool:
    """The user asked for tracebacks (Hydra's own switch)."""
    return os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")


def user_error(error: BaseException) -> UserError | None:
    """The UserError behind `error`: itself, or the cause Hydra's `instantiate` wrapped it in."""
    while error is not None and not isinstance(error, UserError):
        error = error.__cause__
    return error


def reason(error: BaseException) -> str:
    """One line: the sentence of a user error, else the exception type and its first line."""
    error = user_error(error) or error
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text if isinstance(error, UserError) else f"{type(error).__name__}: {text}".rstrip(": ")


def exit_with(error: BaseException) -> NoReturn:
    print(f"Error: {reason(error)}", file=sys.stderr)
    raise SystemExit(2)


@contextmanager
def user_errors() -> Iterator[None]:
    """Around an entry point: a UserError ends the process with its one sentence."""
    try:
        yield
    except Exception as error:
        if full_error() or user_error(error) is None:
            raise
        exit_with(error)


def mark_failed(run_dir: Path, error: BaseException, record: dict[str, Any]) -> None:
    """Write `failed.json` (the one-line reason and the traceback) and remove every stage folder
    that holds no checkpoint, so a failed run never looks finished or resumable when it is not."""
    for stage in STAGES:
        stage_dir = run_dir / stage
        if stage_dir.is_dir() and not any(stage_dir.glob("checkpoints/*.ckpt")):
            shutil.rmtree(stage_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    details = record | {
        "error": reason(error),
        "traceback": "".join(traceback.format_exception(error)),
    }
    (run_dir / FAILED).write_text(json.dumps(details, indent=2))
