"""Hydra's `experiment` config group, served from the top-level `experiments/` folder (no symlink).

Hydra maps a config group to a sub-folder of a search-path root, so a folder named `experiments` beside
`conf/` cannot be the group `experiment` by search path alone. `ExperimentsSource` is a config source
with its own scheme, `aand-experiments://`, that shows one group, `experiment`, whose options are the
files of that folder: `experiment/<name>` is `<folder>/<name>.yaml`. `ExperimentsSearchPath` puts it
(`aand-experiments://`; an empty path means `experiments_dir()`, the packaged copy in a wheel, else the
checkout's) on the search path of this package's configs, and of no other Hydra app. It is a plugin,
not `hydra.searchpath` in train.yaml: Hydra takes that key only from a primary config, and
conf/eval.yaml includes train.yaml. Importing `aand_lightning.config`, as every entry point and the
tests do before Hydra composes, registers both.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.core.plugins import Plugins
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

GROUP = "experiment"


class ExperimentsSource(ConfigSource):
    """The config group `experiment`, whose options are the YAML files of one folder."""

    def __init__(self, provider: str, path: str) -> None:
        super().__init__(provider=provider, path=path)
        if not self.path:
            from aand_lightning.config import experiments_dir  # config imports this module

            self.path = str(experiments_dir())

    @staticmethod
    def scheme() -> str:
        return "aand-experiments"

    def _file(self, config_path: str) -> Path | None:
        """The file or folder behind a Hydra path (`experiment`, `experiment/demo.yaml`); None if
        the path is outside the group."""
        if config_path == GROUP:
            return Path(self.path)
        if config_path.startswith(f"{GROUP}/"):
            return Path(self.path) / config_path[len(GROUP) + 1 :]
        return None

    def load_config(self, config_path: str) -> ConfigResult:
        file = self._file(self._normalize_file_name(config_path))
        if file is None or not file.is_file():
            raise ConfigLoadError(f"Config not found : {config_path} (in {self.full_path()})")
        with file.open(encoding="utf-8") as f:  # as Hydra's FileConfigSource reads a file
            header = ConfigSource._get_header_dict(f.read(512))
            f.seek(0)
            config = OmegaConf.load(f)
        return ConfigResult(config=config, path=self.full_path(), provider=self.provider, header=header)

    def available(self) -> bool:
        return Path(self.path).is_dir()

    def is_group(self, config_path: str) -> bool:
        if config_path == "":  # the root holds the one group
            return self.available()
        file = self._file(config_path)
        return file is not None and file.is_dir()

    def is_config(self, config_path: str) -> bool:
        file = self._file(self._normalize_file_name(config_path))
        return file is not None and file.is_file()

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        if config_path == "":
            names = [GROUP] if self.available() else []
            return names if results_filter in (None, ObjectType.GROUP) else []
        folder = self._file(config_path)
        if folder is None or not folder.is_dir():
            return []
        files: list[str] = []
        for entry in folder.iterdir():
            self._list_add_result(
                files=files,
                file_path=f"{config_path}/{entry.name}",
                file_name=entry.name,
                results_filter=results_filter,
            )
        return sorted(set(files))


class ExperimentsSearchPath(SearchPathPlugin):
    """Adds the `experiment` group to the search path when the primary configs are this package's."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from aand_lightning.config import config_dir  # config imports this module

        ours = config_dir()
        if any(Path(element.path.removeprefix("file://")) == ours for element in search_path.get_path()):
            search_path.append(provider="aand-lightning", path=f"{ExperimentsSource.scheme()}://")


Plugins.instance().register(ExperimentsSource)
Plugins.instance().register(ExperimentsSearchPath)
