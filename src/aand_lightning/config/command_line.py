"""The overrides of a command line (or of a Python call) composed into the config, with every mistake
Hydra would report in its own multi-line words turned into one sentence that names the fix: a misspelt
key or group option gets a did-you-mean. `entry_point` puts this check in front of `@hydra.main`."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser  # Hydra's own command-line parser (what @hydra.main uses)
from hydra.core.config_loader import ConfigLoader
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aand_lightning.config import config_dir
from aand_lightning.errors import ConfigError, did_you_mean
from aand_lightning.reporting.failures import user_errors

_ABSENT = object()
# How the mandatory values (`???`) of the entry points' configs look, for the sentence asking for them.
_EXAMPLES = {"ckpt": "<run dir>/distill/checkpoints/last.ckpt", "input": "<an image or a folder>"}


def _parsed(overrides: Sequence[str]) -> list[Override]:
    parser = OverridesParser.create()
    parsed = []
    for line in overrides:
        try:
            parsed += parser.parse_overrides([line])
        except HydraException as error:
            reason = str(error).strip().splitlines()[0].rstrip(".")
            raise ConfigError(f"The override {line!r} cannot be read ({reason}); write key=value.") from None
    return parsed


def _values(override: Override) -> Iterator[Any]:
    """Each value an override sets: a sweep's values (basic sweeps), else its one value."""
    if override.is_sweep_override():
        if override.is_discrete_sweep():
            yield from override.sweep_iterator()
        return  # interval sweeps (Optuna) are ranges of numbers, not options
    yield override.value()


def _check_options(loader: ConfigLoader, override: Override) -> None:
    """A group override names options the group has (a list, e.g. logger=[csv,tensorboard], names several)."""
    group, options = override.key_or_group, loader.get_group_options(override.key_or_group)
    for value in _values(override):
        for option in value if isinstance(value, list) else [value]:
            if option is not None and str(option) not in options:
                raise ConfigError(
                    f"{group}={option} is not an option of {group}{did_you_mean(str(option), options)}; "
                    f"choose one of {', '.join(options)}."
                )


def _first(override: Override) -> str:
    """The override with a sweep's first value, as one job of the sweep would get it."""
    if not override.is_sweep_override() or not override.is_discrete_sweep():
        return override.input_line
    value = next(override.sweep_string_iterator())
    return f"{override.get_key_element()}={value}"


def _node(tree: Any, key: str) -> Any:
    """The value at dotted `key` of a plain config tree (interpolations and `???` as written), or _ABSENT."""
    for part in key.split(".") if key else []:
        if not isinstance(tree, dict) or part not in tree:
            return _ABSENT
        tree = tree[part]
    return tree


def _check_keys(cfg: DictConfig, overrides: list[Override]) -> None:
    """Every `key=value` (no `+`) sets a key that exists; a misspelt one gets the nearest sibling key."""
    tree = OmegaConf.to_container(cfg, resolve=False)
    for override in overrides:
        key = override.key_or_group
        if (
            override.type != OverrideType.CHANGE
            or override.package is not None
            or _node(tree, key) is not _ABSENT
        ):
            continue
        parent = key.rpartition(".")[0]
        node = _node(tree, parent)
        siblings = [f"{parent}.{k}" if parent else str(k) for k in node] if isinstance(node, dict) else []
        raise ConfigError(
            f"{key} is not a setting{did_you_mean(key, siblings)}; `--cfg job` lists the settings "
            f"(a new key is added with +{key}=...)."
        )


def _unset(tree: Any, prefix: str = "") -> Iterator[str]:
    """The dotted keys whose value is still `???` (mandatory, e.g. predict's `ckpt`)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _unset(value, f"{prefix}{key}.")
    elif tree == "???":
        yield prefix.rstrip(".")


def _complete(cfg: DictConfig) -> DictConfig:
    """No mandatory value (`???`, e.g. predict's `ckpt`) is left unset."""
    tree = OmegaConf.to_container(cfg, resolve=False)
    missing = sorted(key for key in _unset(tree) if not key.startswith("hydra."))
    if missing:
        needed = " ".join(f"{key}={_EXAMPLES.get(key, '...')}" for key in missing)
        raise ConfigError(f"{' and '.join(missing)} must be given; pass {needed} on the command line.")
    return cfg


def compose_checked(config_name: str, overrides: Sequence[str], sweep: bool = False) -> DictConfig:
    """`config_name` composed with `overrides` (the `hydra` node included); a sweep (`sweep=True`,
    the `-m` command line) is composed with each sweep's first value, after every group option of every
    sweep value is checked. A mistake raises a ConfigError whose sentence names the key or option."""
    parsed = _parsed(overrides)
    with initialize_config_dir(config_dir=str(config_dir()), job_name=config_name, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        groups = [o for o in parsed if o.package is None and loader.get_group_options(o.key_or_group)]
        for override in groups:
            _check_options(loader, override)
        lines = [_first(o) for o in parsed] if sweep else list(overrides)
        try:
            return _complete(compose(config_name, overrides=lines, return_hydra_config=True))
        except (HydraException, OmegaConfBaseException) as error:
            failure = error
        try:  # which override failed: the groups alone compose, so look for a key that is not there
            base = compose(config_name, overrides=[_first(o) for o in groups], return_hydra_config=True)
        except (HydraException, OmegaConfBaseException):
            base = None
    if base is not None:
        _check_keys(base, [o for o in parsed if o not in groups])
    first = " ".join(str(failure).strip().splitlines()[0].split()).rstrip(".")
    hints = {"Ambiguous value": "add -m to sweep over its values, or quote it", "already at": "drop the +"}
    hint = next((h for text, h in hints.items() if text in first), "see `--help`")
    raise ConfigError(f"The overrides do not compose: {first}; {hint}.")


def check_command_line(config_name: str, argv: Sequence[str]) -> None:
    """What Hydra would compose for `argv`, checked first; Hydra's informational flags (--help, --cfg,
    --info, ...) and other config sources (-cp, -cn, -cd) are left to Hydra."""
    args = get_args_parser().parse_args(list(argv))
    if any(
        (args.help, args.hydra_help, args.cfg, args.info, args.shell_completion, args.config_path,
         args.config_name, args.config_dir, args.experimental_rerun)
    ):  # fmt: skip
        return
    compose_checked(config_name, args.overrides, sweep=args.multirun)


def entry_point(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """`@hydra.main(config_name=...)` with the command line checked first: a mistake is one line on
    stderr and exit status 2 (`reporting/failures.py`), never Hydra's own text and status 1."""

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        hydra_main = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
        hydra_main = hydra_main(task)

        @functools.wraps(task)
        def main() -> Any:
            with user_errors():
                check_command_line(config_name, sys.argv[1:])
            return hydra_main()

        return main

    return decorate
