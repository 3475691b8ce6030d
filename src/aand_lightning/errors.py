"""The one error type users see: bad input (config, data, files) whose message is a sentence naming the fix.

The entry points (`train`, `eval`, `predict`, `export`) print such an error as that one sentence, without a
traceback, and exit with status 2; `HYDRA_FULL_ERROR=1` shows the traceback as well. Everything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """Bad input from the user; `str(error)` is one sentence that says what to pass or fix."""


class ConfigError(UserError):
    """A config value (or a command-line override) that cannot be used; the message names the key."""


class ModelConfigError(UserError):
    """A model setting is missing from a config mapping (config, checkpoint, artifact); names its key."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """` (did you mean 'bottle'?)` for the candidate closest to a mistyped `name`, else ""."""
    close = difflib.get_close_matches(name, [c for c in dict.fromkeys(candidates) if c != name], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
