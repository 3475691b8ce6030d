"""Every config group composes, and the composed configs instantiate what they name."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from aand_lightning.config import config_dir, experiments_dir
from aand_lightning.config.checks import check_config
from aand_lightning.errors import ConfigError
from aand_lightning.models.losses import CosineDistillationLoss, HardKnowledgeDistillationLoss

CONF = config_dir()
GROUPS = [
    "dataset",
    "backbone",
    "raa",
    "synthesis",
    "augment",
    "loss",
    "stage",
    "trainer",
    "logger",
    "paths",
    "callbacks",
    "protocol",
    "sweep",
    "experiment",
]


def _options(group: str) -> list[str]:
    folder = experiments_dir() if group == "experiment" else CONF / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_every_group_has_options():
    for group in GROUPS:
        assert _options(group), f"config group {group} is empty"


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in _options(g)])
def test_group_option_composes(group, option, tmp_path):
    cfg = _compose(
        [f"{group}={option}", f"hydra.runtime.output_dir={tmp_path}", f"hydra.runtime.cwd={tmp_path}"]
    )
    OmegaConf.resolve(cfg.hydra)
    plain = OmegaConf.to_container(cfg, resolve=False)
    assert plain["stage"]["run"]


def test_spec_hyperparameters_are_defaults():
    cfg = _compose([])
    assert cfg.raa.num_prototypes == 50 and cfg.raa.temperature == 0.2
    assert (
        cfg.amplify.loss.margin == 0.3
        and cfg.amplify.loss.focal_alpha == 0.8
        and cfg.amplify.loss.focal_gamma == 2
    )
    assert cfg.amplify.loss.amplification_weight == 0.1 and cfg.loss.k_hard == 10
    assert cfg.amplify.optimizer.lr == 0.005 and list(cfg.amplify.optimizer.betas) == [0.5, 0.999]
    assert list(cfg.amplify.scheduler.milestones) == [80, 90] and list(cfg.distill.scheduler.milestones) == [
        96,
        108,
    ]
    assert cfg.amplify.epochs == 100 and cfg.distill.epochs == 120 and cfg.anomaly_map.sigma == 4.0


def test_loss_options_instantiate():
    expected = {"hkd": HardKnowledgeDistillationLoss, "rd": CosineDistillationLoss}
    assert _options("loss") == sorted(expected)
    for option, loss in expected.items():
        assert type(instantiate(_compose([f"loss={option}"]).loss)) is loss


def test_paper_experiments_are_the_paper_protocol():
    for name in ("paper_mvtec", "paper_visa", "paper_mvtec3d"):
        cfg = _compose([f"experiment={name}"])
        assert cfg.dataset.image_size == 256 and cfg.datamodule.batch_size == 16
        assert cfg.amplify.epochs == 100 and cfg.distill.epochs == 120
        assert cfg.backbone.name.startswith("wide_resnet50_2")
        assert cfg.anomaly_map.output == "aand"  # the paper's map; the fused one is only reported
        categories = cfg.hydra.sweeper.params["dataset.category"].split(",")
        assert sorted(categories) == sorted(cfg.dataset.categories)
        assert cfg.synthesis.textures == "dtd" and cfg.synthesis.texture_dir is None
        assert cfg.dataset.download == "auto" and cfg.dataset.source.download == "auto"


@pytest.mark.parametrize("dataset", ["mvtec", "visa", "mvtec3d"])
def test_paper_recipes_are_the_shared_base_plus_a_dataset(dataset):
    recipe = _compose([f"experiment=paper_{dataset}"])
    base = _compose(["experiment=paper", f"dataset={dataset}"])
    job = {k: v for k, v in OmegaConf.to_container(recipe).items() if k != "hydra"}
    assert job == {k: v for k, v in OmegaConf.to_container(base).items() if k != "hydra"}
    assert recipe.dataset.name == dataset and recipe.hydra.sweeper.params == base.hydra.sweeper.params
    assert recipe.hydra.runtime.choices.sweep == "all_categories"


def test_the_stages_share_the_optimizer_but_not_its_overrides():
    cfg = _compose([])
    assert cfg.distill.optimizer == cfg.amplify.optimizer
    assert cfg.distill.optimizer._target_ == "torch.optim.Adam" and cfg.distill.optimizer.fused is True
    cfg = _compose(["distill.optimizer.lr=0.1"])
    assert cfg.distill.optimizer.lr == 0.1 and cfg.amplify.optimizer.lr == 0.005


@pytest.mark.parametrize("experiment", [None, "demo", "quick"])
def test_base_and_small_recipes_use_procedural_textures(experiment):
    cfg = _compose([f"experiment={experiment}"] if experiment else [])
    assert cfg.synthesis.textures == "procedural"
    assert OmegaConf.to_container(cfg.synthesis)["dtd_root"] == "${paths.data_dir}/dtd"  # for textures=dtd


def test_experiments_dir_is_the_experiment_group():
    assert experiments_dir() == (Path(__file__).parents[1] / "experiments").resolve()
    assert not (CONF / "experiment").exists()  # the group is served from experiments/, not from conf/


def _leaves(node: dict, prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize(
    ("experiment", "recipes"),
    [("demo", ["demo"]), ("quick", ["quick"]), ("paper_mvtec", ["paper", "paper_mvtec"])],
)
def test_experiment_recipes_compose_from_the_checkout(experiment, recipes):
    """`experiment=<name>` is `experiments/<name>.yaml` (and what it includes): its group choices and
    every value it writes are in the composed config."""
    cfg = _compose([f"experiment={experiment}"])
    assert cfg.hydra.runtime.choices.experiment == experiment
    for recipe in recipes:
        written = OmegaConf.to_container(OmegaConf.load(experiments_dir() / f"{recipe}.yaml"))
        for entry in written.pop("defaults"):
            if isinstance(entry, dict):  # override /<group>: <option>
                ((group, option),) = entry.items()
                assert cfg.hydra.runtime.choices[group.removeprefix("override /")] == option
        for key, value in _leaves(written):
            assert OmegaConf.select(cfg, key) == value, key
    if experiment == "demo":
        assert cfg.backbone.name.startswith("tf_efficientnet_lite0")
        assert (cfg.amplify.epochs, cfg.distill.epochs) == (30, 50)


def test_no_symlinks_in_the_configs_or_the_repository():
    """Symlinks break on Windows and in some packaging: conf/ and the git tree have none."""
    root = Path(__file__).parents[1]
    linked = [
        Path(folder, name)
        for folder, folders, files in os.walk(root / "conf")
        for name in folders + files
        if Path(folder, name).is_symlink()
    ]
    assert linked == []
    try:
        listed = subprocess.run(["git", "ls-files", "-s"], cwd=root, capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("git is not installed")
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    assert [line for line in listed.stdout.splitlines() if line.startswith("120000")] == []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project built as a wheel (pip's isolated build: hatchling from the configured index)."""
    out = tmp_path_factory.mktemp("wheel")
    root = Path(__file__).parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(root)],
        check=True,
        capture_output=True,
    )
    return next(out.glob("*.whl"))


def test_wheel_ships_configs_and_experiments(wheel):
    """An installed (non-editable) package must find conf/ and experiments/ without a checkout."""
    names = zipfile.ZipFile(wheel).namelist()
    assert "aand_lightning/conf/train.yaml" in names
    assert "aand_lightning/experiments/demo.yaml" in names
    assert "aand_lightning/conf/dataset/mvtec.yaml" in names


_COMPOSE_INSTALLED = """
import json
from hydra import compose, initialize_config_dir
import aand_lightning
from aand_lightning.config import config_dir, experiments_dir
with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
    cfg = compose("train", overrides=["experiment=demo"])
print(json.dumps({"package": aand_lightning.__file__, "conf": str(config_dir()),
                  "experiments": str(experiments_dir()), "backbone": cfg.backbone.name,
                  "epochs": [cfg.amplify.epochs, cfg.distill.epochs]}))
"""


def test_installed_wheel_composes_experiments(wheel, tmp_path):
    """Installed from the wheel and run outside the checkout, `experiment=demo` composes from the
    packaged experiments/."""
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", _COMPOSE_INSTALLED], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    package = site / "aand_lightning"
    assert Path(found["package"]).parent == package  # the wheel's copy, not the checkout's
    assert Path(found["conf"]) == package / "conf" and Path(found["experiments"]) == package / "experiments"
    assert found["backbone"].startswith("tf_efficientnet_lite0") and found["epochs"] == [30, 50]


@pytest.mark.parametrize(
    ("launcher", "target"), [("slurm", "SlurmLauncher"), ("local_parallel", "JoblibLauncher")]
)
def test_cluster_launchers_are_configuration(launcher, target):
    cfg = _compose([f"hydra/launcher={launcher}"])
    assert cfg.hydra.launcher._target_.endswith(target)


@pytest.mark.parametrize("dataset", ["mvtec", "mvtec3d"])
def test_sweep_and_reader_share_the_yaml_category_list(dataset):
    cfg = _compose([f"dataset={dataset}", "sweep=all_categories"])
    swept = cfg.hydra.sweeper.params["dataset.category"].split(",")
    assert swept == list(cfg.dataset.categories) == list(cfg.dataset.source.categories)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["anomaly_map.output=on"], "anomaly_map.output=on is not valid; pass one of aand, fused"),
        (["anomaly_map.fused_weight=on"], "pass auto or a weight in"),
        (["anomaly_map.fused_weight=1.5"], "pass auto or a weight in"),
        (["anomaly_map.output=fused", "raa=off"], "anomaly_map.output=aand for the RD baseline"),
        (
            ["anomaly_map.output=fused", "anomaly_map.fused_weight=0.5", "datamodule.validate_on_test=true"],
            "output=aand with it",
        ),
        (["distill.gate_draws=0"], "distill.gate_draws=0 is not valid"),
    ],
)
def test_output_map_settings_are_checked_before_any_model(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(_compose(["stage=distill", *overrides]))


def test_output_map_settings_that_work():
    for settings in (
        ["anomaly_map.output=aand"],
        ["anomaly_map.output=fused", "anomaly_map.fused_weight=auto"],
        ["anomaly_map.output=fused", "anomaly_map.fused_weight=0.3"],
    ):
        check_config(_compose(["stage=distill", *settings]))
    check_config(_compose(["stage=distill", "raa=off"]))  # the default (aand) suits the RD baseline
