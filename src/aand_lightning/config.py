"""Where the Hydra configs live: inside the installed package, or at the top of a source checkout."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def config_file(path: str) -> dict[str, Any]:
    """One file of `conf/` as written (not composed, not resolved), e.g. `raa/default.yaml`."""
    return OmegaConf.to_container(OmegaConf.load(config_dir() / path))


def _student_defaults(name: str) -> dict[str, Any]:
    """`student` of the backbone option for the timm `name` (e.g. wide_resnet50_2.tv_in1k); {} if none."""
    for path in sorted((config_dir() / "backbone").glob("*.yaml")):
        option = config_file(f"backbone/{path.name}")
        if name in (option["name"], path.stem):
            return option["student"]
    return {}


def with_config_defaults(model: Mapping[str, Any]) -> dict[str, Any]:
    """The model settings a checkpoint or stage-1 artifact stores (`backbone`, `raa`, `anomaly_map`),
    with each key an older version did not write taken from the configs: the one place old files are
    brought up to date, so they keep loading when a setting is added."""
    filled = dict(model)
    if "raa" in model:
        filled["raa"] = {**config_file("raa/default.yaml"), **model["raa"]}
    if "anomaly_map" in model:  # a stage-2 checkpoint's model_config
        train = config_file("train.yaml")
        filled["anomaly_map"] = {**train["anomaly_map"], **model["anomaly_map"]}
        filled.setdefault("interpolation", train["datamodule"]["interpolation"])
    if "student" in model.get("backbone", {}):
        backbone = model["backbone"]
        filled["backbone"] = {
            **backbone,
            "student": {**_student_defaults(backbone["name"]), **backbone["student"]},
        }
    return filled
