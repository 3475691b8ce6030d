import pytest
import torch

from aand_lightning.config import config_file
from aand_lightning.models.build import build_aand
from aand_lightning.models.fusion import WEIGHT_CAP, MapFusion, gate_weight, parse_fusion, scored_map

BACKBONE = {**config_file("backbone/resnet18.yaml"), "weights": "none"}
RAA, ANOMALY_MAP = config_file("raa/default.yaml"), config_file("train.yaml")["anomaly_map"]


def _model(fusion, raa: dict | None = None):
    torch.manual_seed(0)
    return build_aand(
        BACKBONE, {**RAA, "num_prototypes": 4, **(raa or {})}, {**ANOMALY_MAP, "fusion": fusion}
    ).eval()


def _calibrated(fusion):
    """A model whose fusion is calibrated on the maps of a few 'normal' images (and a responsive gate)."""
    model = _model(fusion)
    with torch.no_grad():
        maps = model(torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)), all_maps=True)
        gate = maps.maps_by_name["gate"]
        model.fusion.calibrate(maps.maps_by_name["aand"], gate, gate.flatten() + 0.2)
    return model


def test_weight_zero_is_the_papers_map_exactly():
    images = torch.randn(2, 3, 64, 64)
    fused, paper = _calibrated(0.0), _calibrated("off")
    with torch.no_grad():
        out, reference = fused(images, all_maps=True), paper(images)
    assert fused.map_name == "fused" and paper.map_name == "aand"
    assert torch.equal(out.maps, reference.maps) and torch.equal(out.scores, reference.scores)
    assert torch.equal(out.maps_by_name["fused"], out.maps_by_name["aand"])


def test_weight_one_is_the_normalised_gate_map():
    model = _calibrated(1.0)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(images, all_maps=True)
        gate, _ = model.anomaly_map.gate_map(model.teacher(images).gates, (64, 64))
    mean_a, std_a, mean_g, std_g = model.fusion.stats
    assert torch.equal(gate, out.maps_by_name["gate"])
    assert torch.allclose(out.maps, mean_a + std_a * (gate - mean_g) / std_g, atol=1e-6)
    assert torch.equal(out.scores, out.maps_by_name["aand"].flatten(1).amax(1))  # the paper's score


@pytest.mark.parametrize("weight", [0.25, 1.0])
def test_fused_map_says_where_and_the_papers_map_scores_the_image(weight):
    model, paper = _calibrated(weight), _calibrated("off")
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        out, reference = model(images, all_maps=True), paper(images)
    assert torch.equal(out.maps, out.maps_by_name["fused"]) and not torch.equal(out.maps, reference.maps)
    assert torch.equal(out.scores, reference.scores)
    assert not torch.equal(out.scores, out.maps.flatten(1).amax(1))
    assert scored_map("fused") == "aand" and scored_map("gate") == "gate" and scored_map("aand") == "aand"


def test_calibration_is_the_normal_maps_statistics():
    fusion = MapFusion(0.3)
    aand, gate = torch.rand(4, 1, 8, 8) + 1, torch.rand(4, 1, 8, 8) * 0.1
    assert not fusion.calibrated
    fusion.calibrate(aand, gate)
    expected = torch.stack([aand.mean(), aand.std(), gate.mean(), gate.std()])
    assert fusion.calibrated and torch.allclose(fusion.stats, expected)
    assert float(fusion.weight) == pytest.approx(0.3)
    gate_only = MapFusion(1.0)
    gate_only.calibrate(aand, gate)
    moved = gate_only(aand, gate)  # the gate map in the AAND map's units: its normal mean and spread
    assert torch.allclose(moved.mean(), aand.mean()) and torch.allclose(moved.std(), aand.std())


def test_uncalibrated_off_model_reports_no_fused_map_and_raa_off_none_at_all():
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert set(_model("off")(images, all_maps=True).maps_by_name) == {"aand", "gate"}
        assert set(_calibrated("off")(images, all_maps=True).maps_by_name) == {"aand", "gate", "fused"}
        assert set(_model("off", {"enabled": False})(images, all_maps=True).maps_by_name) == {"aand"}
    with pytest.raises(
        ValueError, match=r"^anomaly_map\.fusion=auto fuses the RAA gate map, which raa=off does not have"
    ):
        _model("auto", {"enabled": False})


def test_gate_weight_is_the_gates_responsiveness_capped_at_a_quarter():
    normal = torch.full((2, 1, 4, 4), 0.2)
    assert gate_weight(normal, torch.tensor([0.2, 0.4])) == pytest.approx((0.3 - 0.2) / 0.8)
    assert gate_weight(normal, torch.tensor([0.9, 1.0])) == WEIGHT_CAP == 0.25  # synthetic: at most ¼
    assert gate_weight(normal, torch.tensor([0.2001])) == pytest.approx(1.25e-4, rel=1e-3)  # a dead gate
    assert gate_weight(normal, torch.tensor([0.1])) == 0.0 and gate_weight(normal, torch.tensor([])) == 0.0


def test_auto_weight_needs_the_gate_on_anomalies():
    fusion = MapFusion("auto")
    with pytest.raises(ValueError, match="fixed weight"):
        fusion.calibrate(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4))
    fusion.calibrate(torch.rand(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.2), torch.tensor([0.3]))
    assert float(fusion.weight) == pytest.approx(0.125)


@pytest.mark.parametrize("setting", ["on", True, 1.5, -0.1, "0.5x", None])
def test_bad_settings_name_the_valid_ones(setting):
    with pytest.raises(ValueError, match="pass off, auto or a weight in"):
        parse_fusion(setting)


def test_settings():
    assert parse_fusion("off") == parse_fusion(False) == (False, None)
    assert parse_fusion("auto") == (True, None) and parse_fusion(0) == (True, 0.0)
