"""Bad config values fail before any model is built, with one sentence naming the key."""

import pytest
from hydra import compose, initialize_config_dir

from aand_lightning.config import config_dir
from aand_lightning.config.checks import check_config
from aand_lightning.errors import ConfigError


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("datamodule.batch_size=0", "datamodule.batch_size=0"),
        ("datamodule.eval_batch_size=-1", "datamodule.eval_batch_size=-1"),
        ("dataset.image_size=0", "dataset.image_size=0"),
        ("dataset.image_size=abc", "dataset.image_size=abc"),
        ("dataset.image_size=30", "dataset.image_size=30"),
        ("dataset.image_size=[256,100]", "dataset.image_size=[256, 100]"),
        ("amplify.epochs=0", "amplify.epochs=0"),
        ("amplify.teacher_forcing=maybe", "amplify.teacher_forcing=maybe"),
        ("distill.epochs=0", "distill.epochs=0"),
        ("datamodule.val_fraction=1.0", "datamodule.val_fraction=1.0"),
        ("distill.threshold_quantile=1.5", "distill.threshold_quantile=1.5"),
        ("evaluation.fpr_limit=0", "evaluation.fpr_limit=0"),
        ("synthesis.clean_probability=-0.1", "synthesis.clean_probability=-0.1"),
        ("distill.feature_cache.dtype=float64", "distill.feature_cache.dtype=float64"),
        ("distill.feature_cache.max_gb=-1", "distill.feature_cache.max_gb=-1"),
        ("ckpt_path=/no/such/file.ckpt", "ckpt_path=/no/such/file.ckpt"),
        ("protocol.check_val_every_n_epoch=0", "protocol.check_val_every_n_epoch=0"),
        ("protocol=authors protocol.distill.every=0", "protocol.distill.every=0"),
    ],
)
def test_bad_value_names_its_key(override, key):
    with pytest.raises(ConfigError) as error:
        check_config(_cfg(*override.split()))
    message = str(error.value)
    assert message.startswith(key) and message.endswith(".") and "\n" not in message


@pytest.mark.parametrize("size", ["256", "64", "[256,320]"])
def test_sizes_that_fit_the_strides_pass(size):
    check_config(_cfg(f"dataset.image_size={size}"))


def test_stage_combinations_that_cannot_work(tmp_path):
    with pytest.raises(ConfigError, match=r"^stage=amplify trains RAA but raa.enabled=false"):
        check_config(_cfg("stage=amplify", "raa=off"))
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"resumes one stage; pass stage=amplify or stage=distill"):
        check_config(_cfg("stage=all", f"ckpt_path={ckpt}"))


def test_epochs_of_a_stage_that_does_not_run_are_not_checked():
    check_config(_cfg("stage=distill", "amplify.epochs=0"))
