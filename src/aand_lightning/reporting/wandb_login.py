"""Before anything is built: can a `logger=wandb` run log online, offline, or must it stop?

wandb itself is asked, rather than re-implementing where it keeps a login (which moved: wandb 0.31
stores `wandb login` in netrc under its new default host, not `api.wandb.ai`): its settings give the
mode and server that `wandb.init` will use, and its own credential lookup (WANDB_API_KEY,
WANDB_IDENTITY_TOKEN_FILE, netrc, settings files) says whether it holds a login for that server.
Left to itself, wandb would wait at its login prompt without one, and with one but no network would
retry for about two minutes and end in a `CommError` traceback; here both end in one sentence.
"""

from __future__ import annotations

import ssl
import threading
import urllib.error
import urllib.request

from aand_lightning.errors import UserError

# wandb modes that log locally, or not at all, and so need neither a login nor the server.
_LOCAL_MODES = ("offline", "dryrun", "disabled")
# How long the server may take to answer; wandb's own retries would take minutes to give up.
REACH_TIMEOUT_S = 5.0
_WAYS_OUT = "set WANDB_MODE=offline to log locally (upload later with `wandb sync`), or pass logger=csv"


class WandbLoginError(UserError):
    """A `logger=wandb` run that could not log online, stopped before anything is built."""


def check_wandb_login(offline: bool = False) -> None:
    """Return if the run logs offline or wandb has credentials for a server that answers; else stop.

    Never shows wandb's login prompt; the server is only contacted once credentials are found.
    `offline` is the logger's own `offline` setting.
    """
    if offline:
        return
    # wandb>=0.31: `authenticate_session(prompt=..., update_session=...)`; imported here so that runs
    # without logger=wandb never depend on these internals.
    from wandb.errors import AuthenticationError
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    try:
        settings = wandb_setup.singleton().settings  # what `wandb.init` will use: env, settings files
        if settings.mode in _LOCAL_MODES:
            return
        host = wbauth.HostUrl(settings.base_url)
        credentials = wbauth.authenticate_session(
            host=host, source="aand_lightning", prompt=False, update_session=False
        )
    except (AuthenticationError, ValueError) as error:
        reason = " ".join(str(error).split())
        raise WandbLoginError(
            f"logger=wandb cannot use wandb's login settings ({reason}); run `wandb login --relogin` "
            f"or fix WANDB_API_KEY / WANDB_BASE_URL, {_WAYS_OUT}."
        ) from None
    if credentials is None:
        raise WandbLoginError(
            f"logger=wandb found no wandb credentials for {host.url}; run `wandb login` (or set "
            f"WANDB_API_KEY), {_WAYS_OUT}."
        )
    problem = _unreachable(host.url)
    if problem is not None:
        raise WandbLoginError(
            f"logger=wandb has credentials for {host.url} but cannot reach it ({problem}); check the "
            f"network or WANDB_BASE_URL, {_WAYS_OUT}."
        )


def _unreachable(url: str, timeout: float = REACH_TIMEOUT_S) -> str | None:
    """Why the server at `url` does not answer within `timeout` seconds, or None if it answers.

    Any HTTP answer counts, and so does a TLS error (the host is there; its certificate is wandb's
    concern). The request runs in a daemon thread so that a hanging DNS lookup cannot hold the run.
    """
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)
        except urllib.error.URLError as error:
            outcome.append(None if isinstance(error.reason, ssl.SSLError) else str(error.reason))
        except OSError as error:  # a timeout while reading the answer
            outcome.append(str(error) or type(error).__name__)

    thread = threading.Thread(target=probe, name="wandb-reachability", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"
