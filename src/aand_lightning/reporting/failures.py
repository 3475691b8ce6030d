"""What the entry points do with errors: one sentence for the user's mistakes, a record of every failure.

`train`, `eval`, `predict` and `export` print a `UserError` as one line on stderr and exit with status 2.
Set `HYDRA_FULL_ERROR=1` to see the traceback instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from lightning.pytorch.utilities import rank_zero_only

from aand_lightning.errors import UserError

log = logging.getLogger(__name__)

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


def root_cause(error: BaseException) -> BaseException:
    """The innermost cause: what went wrong, not the wrapper around it (Hydra's "Error in call to target")."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def reason(error: BaseException) -> str:
    """One line: the sentence of a user error, else the root cause's type and its first line."""
    error = user_error(error) or root_cause(error)
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


def job_failed(error: Exception, run_dir: Path, record: dict[str, Any], multirun: bool) -> None:
    """What a training job does with its failure: `failed.json` (rank 0); then the traceback with
    HYDRA_FULL_ERROR=1, a log line in a multirun (the sweep goes on), one sentence for a user error
    (exit 2), else the traceback."""
    if rank_zero_only.rank == 0:
        mark_failed(run_dir, error, record)
    if full_error():
        raise error
    if multirun:
        log.error("This job failed: %s (traceback in %s)", reason(error), run_dir / FAILED)
        return
    if user_error(error) is not None:
        exit_with(error)
    raise error
