import pytest
import torch

from aand_lightning.config import config_file
from aand_lightning.models.anomaly_map import MapName
from aand_lightning.models.build import build_aand
from aand_lightning.models.fused_map import WEIGHT_CAP, FusedMap, gate_weight, parse_weight

BACKBONE = {**config_file("backbone/resnet18.yaml"), "weights": "none"}
RAA, ANOMALY_MAP = config_file("raa/default.yaml"), config_file("train.yaml")["anomaly_map"]


def _model(output: str, weight: str | float = "auto", raa: dict | None = None):
    """The model of `anomaly_map.output=<output>` with `anomaly_map.fused_weight=<weight>`."""
    torch.manual_seed(0)
    anomaly_map = {**ANOMALY_MAP, "output": output, "fused_weight": weight}
    return build_aand(BACKBONE, {**RAA, "num_prototypes": 4, **(raa or {})}, anomaly_map).eval()


def _calibrated(output: str, weight: str | float = "auto"):
    """A model whose fused map is calibrated on the maps of a few 'normal' images (and a responsive gate)."""
    model = _model(output, weight)
    with torch.no_grad():
        images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        maps = model(images, maps=model.map_names()).maps
        gate = maps[MapName.GATE]
        model.fused_map.calibrate(maps[MapName.AAND], gate, gate.flatten() + 0.2)
    return model


def test_weight_zero_is_the_papers_map_exactly():
    images = torch.randn(2, 3, 64, 64)
    fused, paper = _calibrated("fused", 0.0), _calibrated("aand")
    with torch.no_grad():
        out, reference = fused(images, maps=fused.map_names()), paper(images)
    assert fused.output == "fused" and paper.output == "aand"
    assert torch.equal(out.map, reference.map) and torch.equal(out.score, reference.score)
    assert torch.equal(out.maps["fused"], out.maps["aand"])


def test_weight_one_is_the_normalised_gate_map():
    model = _calibrated("fused", 1.0)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(images, maps=model.map_names())
        gate, _ = model.anomaly_map.gate_map(model.teacher(images).gates, (64, 64))
    mean_a, std_a, mean_g, std_g = model.fused_map.stats
    assert torch.equal(gate, out.maps["gate"])
    assert torch.allclose(out.map, mean_a + std_a * (gate - mean_g) / std_g, atol=1e-6)
    assert torch.equal(out.score, out.maps["aand"].flatten(1).amax(1))  # the paper's score


@pytest.mark.parametrize("weight", [0.25, 1.0])
def test_fused_map_says_where_and_the_papers_map_scores_the_image(weight):
    model, paper = _calibrated("fused", weight), _calibrated("aand")
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        out, reference = model(images, maps=model.map_names()), paper(images)
    assert torch.equal(out.map, out.maps["fused"]) and not torch.equal(out.map, reference.map)
    assert torch.equal(out.score, reference.score)
    assert not torch.equal(out.score, out.map.flatten(1).amax(1))
    assert MapName("fused").scored_by == "aand" and MapName("gate").scored_by == "gate"
    assert MapName("aand").scored_by == "aand"


def test_calibration_is_the_normal_maps_statistics():
    fused = FusedMap(0.3)
    aand, gate = torch.rand(4, 1, 8, 8) + 1, torch.rand(4, 1, 8, 8) * 0.1
    assert not fused.calibrated
    fused.calibrate(aand, gate)
    expected = torch.stack([aand.mean(), aand.std(), gate.mean(), gate.std()])
    assert fused.calibrated and torch.allclose(fused.stats, expected)
    assert float(fused.weight) == pytest.approx(0.3)
    gate_only = FusedMap(1.0)
    gate_only.calibrate(aand, gate)
    moved = gate_only(aand, gate)  # the gate map in the AAND map's units: its normal mean and spread
    assert torch.allclose(moved.mean(), aand.mean()) and torch.allclose(moved.std(), aand.std())


def test_uncalibrated_aand_model_reports_no_fused_map_and_raa_off_none_at_all():
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model, calibrated, rd = _model("aand"), _calibrated("aand"), _model("aand", raa={"enabled": False})
        assert set(model(images, maps=model.map_names()).maps) == {"aand", "gate"}
        assert set(calibrated(images, maps=calibrated.map_names()).maps) == {"aand", "gate", "fused"}
        assert set(rd(images, maps=rd.map_names()).maps) == {"aand"}
    with pytest.raises(
        ValueError, match=r"^anomaly_map\.output=fused fuses the RAA gate map, which raa=off does not have"
    ):
        _model("fused", raa={"enabled": False})


def test_gate_weight_is_the_gates_responsiveness_capped_at_a_quarter():
    normal = torch.full((2, 1, 4, 4), 0.2)
    assert gate_weight(normal, torch.tensor([0.2, 0.4])) == pytest.approx((0.3 - 0.2) / 0.8)
    assert gate_weight(normal, torch.tensor([0.9, 1.0])) == WEIGHT_CAP == 0.25  # synthetic: at most ¼
    assert gate_weight(normal, torch.tensor([0.2001])) == pytest.approx(1.25e-4, rel=1e-3)  # a dead gate
    assert gate_weight(normal, torch.tensor([0.1])) == 0.0 and gate_weight(normal, torch.tensor([])) == 0.0


def test_auto_weight_needs_the_gate_on_anomalies():
    fused = FusedMap("auto")
    with pytest.raises(ValueError, match="fixed weight"):
        fused.calibrate(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4))
    fused.calibrate(torch.rand(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.2), torch.tensor([0.3]))
    assert float(fused.weight) == pytest.approx(0.125)


@pytest.mark.parametrize("setting", ["off", "on", True, 1.5, -0.1, "0.5x", None])
def test_bad_settings_name_the_valid_ones(setting):
    with pytest.raises(ValueError, match="pass auto or a weight in"):
        parse_weight(setting)


def test_settings():
    assert parse_weight("auto") is None and FusedMap("auto").setting == "auto"
    assert parse_weight(0) == 0.0 and FusedMap(0.5).setting == 0.5
