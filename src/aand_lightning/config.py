"""Where the Hydra configs live: inside the installed package, or at the top of a source checkout."""

from __future__ import annotations

import hashlib
from pathlib import Path

from omegaconf import OmegaConf

# Lets configs turn a list into a sweep value, e.g. every category of a dataset (conf/sweep/).
OmegaConf.register_new_resolver("csv", lambda items: ",".join(map(str, items)), replace=True)
# A run id that is the same whenever the same run directory and stage are used (wandb resume).
OmegaConf.register_new_resolver(
    "stable_id",
    lambda *parts: hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()[:16],
    replace=True,
)


def sweep_group(sweep_dir: str | Path) -> str:
    """The wandb group of every job of one multirun (and of its summary run)."""
    return f"sweep-{Path(sweep_dir).name}"


# wandb group: the sweep's (shared by all its jobs) in a multirun, else the run's own name.
OmegaConf.register_new_resolver(
    "wandb_group",
    lambda mode, sweep_dir, run_name: sweep_group(sweep_dir) if str(mode).endswith("MULTIRUN") else run_name,
    replace=True,
)


def config_dir() -> Path:
    """The `conf/` folder: packaged copy first (wheel install), then the checkout's (editable install)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"No Hydra configs found next to {package}; reinstall aand-lightning (pip install .) "
        "or run from a checkout."
    )
