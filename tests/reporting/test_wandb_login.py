"""`logger=wandb` is checked before anything is built: it logs online only with a login that the installed
wandb itself finds and a server that answers, logs offline when asked, and otherwise stops in one
sentence, without wandb's login prompt and without minutes of retries.

Each test runs `check_config` on a composed `logger=wandb` config, as `train` does, in a home of its own
with no WANDB_* variables."""

import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlsplit

import pytest
import wandb
from hydra import compose, initialize_config_dir

from aand_lightning.config import config_dir
from aand_lightning.config.checks import check_config
from aand_lightning.errors import UserError

# The server the installed wandb logs to when nothing else is set, and so where `wandb login` stores
# the key in netrc (`api.forge.coreweave.com` since wandb 0.31, `api.wandb.ai` before).
DEFAULT_URL = wandb.Settings().base_url
KEY = "k" * 40  # the shape of a wandb API key (40 characters)
WAYS_OUT = r"run `wandb login`.*WANDB_API_KEY.*WANDB_MODE=offline.*logger=csv\.$"


def _check(*overrides: str) -> None:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        check_config(compose("train", overrides=["logger=wandb", *overrides]))


def test_the_login_wandb_stores_under_its_default_host_is_found(wandb_home, no_network):
    """Where `wandb login` writes the key: the run gets as far as asking that server (here unreachable)."""
    wandb_home.write_text(f"machine {urlsplit(DEFAULT_URL).netloc}\n  login user\n  password {KEY}\n")
    with pytest.raises(UserError, match=rf"has credentials for {re.escape(DEFAULT_URL)} but cannot reach it"):
        _check()
    assert no_network == [urlsplit(DEFAULT_URL).hostname]


def test_no_credentials_is_one_sentence_naming_the_server_and_the_ways_out(wandb_home, no_network):
    with pytest.raises(
        UserError, match=rf"^logger=wandb found no wandb credentials for {re.escape(DEFAULT_URL)}; {WAYS_OUT}"
    ):
        _check()
    assert no_network == []  # nothing was asked of the network


def test_a_key_wandb_rejects_is_one_sentence(wandb_home, no_network, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "abc")
    with pytest.raises(UserError, match=r"WANDB_API_KEY invalid: API key must have 40\+ characters") as error:
        _check()
    assert "\n" not in str(error.value) and no_network == []


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_key_but_no_server_stops_within_seconds(wandb_home, monkeypatch):
    """wandb itself would retry for about two minutes and end in a CommError traceback."""
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("WANDB_BASE_URL", url)
    start = time.monotonic()
    with pytest.raises(
        UserError, match=rf"^logger=wandb has credentials for {re.escape(url)} but cannot reach it"
    ) as error:
        _check()
    assert time.monotonic() - start < 5
    assert "WANDB_MODE=offline" in str(error.value) and "\n" not in str(error.value)


class _Answer(BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        self.send_response(404)  # any answer: the server is there
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_key_and_a_server_that_answers_go_on(wandb_home, monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("WANDB_API_KEY", KEY)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_port}")
        _check()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("variable", "override"),
    [("offline", None), ("dryrun", None), ("disabled", None), (None, "+logger.wandb.offline=true")],
)
def test_offline_needs_no_login_and_no_network(wandb_home, no_network, monkeypatch, variable, override):
    if variable:
        monkeypatch.setenv("WANDB_MODE", variable)
    _check(*[override] if override else [])
    assert no_network == []
