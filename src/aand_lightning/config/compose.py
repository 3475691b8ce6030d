"""The command line's config and run directory for Python callers (`aand_lightning.train`, `eval`'s
`evaluate`, the tests): Hydra's compose API with the runtime values `@hydra.main` would set, without
changing the working directory."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from aand_lightning.config.command_line import compose_checked
from aand_lightning.errors import ConfigError


def _composed(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """`config_name` with the command-line `overrides`, the `hydra` node included."""
    cfg = compose_checked(config_name, overrides)
    if cfg.hydra.mode == RunMode.MULTIRUN:
        raise ConfigError(
            f"The overrides {list(overrides)} ask for a sweep, and a Python call runs one job; run sweeps "
            f"(-m, hparams_search=...) from the command line: python -m aand_lightning.{config_name} -m ..."
        )
    return cfg


@contextmanager
def hydra_job(config_name: str, overrides: Sequence[str] = ()) -> Iterator[tuple[DictConfig, Path]]:
    """As `python -m aand_lightning.<config_name> <overrides>` starts a job: the config composed (relative
    paths are from the working directory), the run dir `hydra.run.dir` made, with the config saved in
    `.hydra/`, and Hydra's runtime values (`${hydra:...}`) set while the block runs. Yields (the job's
    config, without the `hydra` node; the run dir). Sweeps stay on the command line."""
    cfg = _composed(config_name, overrides)
    run_dir = Path(cfg.hydra.run.dir).absolute()
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    job = copy.deepcopy(cfg)
    with read_write(job), open_dict(job):
        del job["hydra"]
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.hydra.output_subdir is not None:
        saved = run_dir / cfg.hydra.output_subdir
        saved.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(job, saved / "config.yaml")
        OmegaConf.save(cfg.hydra.overrides.task, saved / "overrides.yaml")
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)
    try:
        yield job, run_dir
    finally:
        HydraConfig.instance().cfg = previous
