"""Where the Hydra configs live (inside the installed package, or at the top of a source checkout), the
resolvers they use, and plain values of config nodes. `checks` validates a config before anything is
built; `experiment_group` serves the top-level experiments/ folder as Hydra's `experiment` group."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from aand_lightning.config import experiment_group  # noqa: F401  (registers the `experiment` group's source)

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
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "conf", package.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"No Hydra configs found next to {package}; reinstall aand-lightning (pip install .) "
        "or run from a checkout."
    )


def experiments_dir() -> Path:
    """The `experiments/` folder, Hydra's `experiment` group (see experiment_group.py): the one beside
    the `conf/` that `config_dir()` found, i.e. the packaged copy (wheel) or the checkout's top level."""
    experiments = config_dir().parent / "experiments"
    if not experiments.is_dir():
        raise FileNotFoundError(
            f"No experiments/ folder next to {config_dir()}; reinstall aand-lightning (pip install .) "
            "or run from a checkout."
        )
    return experiments


def config_file(path: str) -> dict[str, Any]:
    """One file of `conf/` as written (not composed, not resolved), e.g. `raa/default.yaml`."""
    return OmegaConf.to_container(OmegaConf.load(config_dir() / path))


def plain(node: Any) -> Any:
    """A config node as plain Python values (resolved), for checkpoints, files and loggers."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


def backbone_option(name: str) -> tuple[str, dict[str, Any]] | None:
    """The `backbone=` option (its file name and settings) whose timm `name` or file name is `name`."""
    for path in sorted((config_dir() / "backbone").glob("*.yaml")):
        option = config_file(f"backbone/{path.name}")
        if name in (option["name"], path.stem):
            return path.stem, option
    return None


def backbone_override(name: str) -> str:
    """How a user asks for the timm backbone `name`: `backbone=wide_resnet50_2` for the option of
    `wide_resnet50_2.tv_in1k`, else `backbone.name=<name>`."""
    option = backbone_option(name)
    return f"backbone={option[0]}" if option else f"backbone.name={name}"
