"""The one error type users see: bad input (config, data, files) whose message is a sentence naming the fix.

The entry points (`train`, `predict`, `export`) print such an error as that one sentence, without a
traceback, and exit with status 2; `HYDRA_FULL_ERROR=1` shows the traceback as well. Everything else
is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user; `str(error)` is one sentence that says what to pass or fix."""


class ModelConfigError(UserError):
    """A model setting is missing from a config mapping (config, checkpoint, artifact); names its key."""
