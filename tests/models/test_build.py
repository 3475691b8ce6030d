"""The build functions take every setting from the config mapping: a missing one is named, not guessed."""

import pytest

from aand_lightning.config import config_file
from aand_lightning.errors import ModelConfigError
from aand_lightning.models.build import build_aand, build_teacher

BACKBONE = {**config_file("backbone/resnet18.yaml"), "weights": "none"}
RAA, ANOMALY_MAP = config_file("raa/default.yaml"), config_file("train.yaml")["anomaly_map"]


@pytest.mark.parametrize("key", list(RAA))
def test_a_missing_raa_setting_is_named(key):
    with pytest.raises(ModelConfigError, match=rf"^The model config lacks raa\.{key}; set it"):
        build_teacher(BACKBONE, {k: v for k, v in RAA.items() if k != key})


@pytest.mark.parametrize("key", list(BACKBONE["student"]))
def test_a_missing_student_setting_is_named(key):
    student = {k: v for k, v in BACKBONE["student"].items() if k != key}
    with pytest.raises(ModelConfigError, match=rf"lacks backbone\.student\.{key};"):
        build_aand({**BACKBONE, "student": student}, RAA, ANOMALY_MAP)


@pytest.mark.parametrize("key", ["output", "fused_weight"])
def test_a_missing_output_map_setting_is_named(key):
    with pytest.raises(ModelConfigError, match=rf"lacks anomaly_map\.{key};"):
        build_aand(BACKBONE, RAA, {k: v for k, v in ANOMALY_MAP.items() if k != key})


def test_the_configs_values_reach_the_modules():
    model = build_aand(
        BACKBONE,
        {**RAA, "num_prototypes": 3, "temperature": 0.5},
        {**ANOMALY_MAP, "output": "fused", "fused_weight": 0.4},
    )
    level = model.teacher.raa[0]
    assert (level.num_prototypes, level.temperature, level.eps) == (3, 0.5, RAA["eps"])
    assert level.prototypes.shape[0] == 6 and model.fused_map.fixed_weight == 0.4
    assert model.output == "fused"
    assert len(model.student.decoder.stages[0]) == BACKBONE["student"]["decoder_layers"][0]
