import pytest
import torch
from omegaconf import OmegaConf

from aand_lightning.checkpoint import CheckpointError, load_model
from aand_lightning.config import config_file
from aand_lightning.handoff import save_teacher
from aand_lightning.models.build import build_amplified_teacher
from aand_lightning.predict import PredictError, choose_thresholds


def test_checkpoint_rebuilds_the_trained_model(stage2_checkpoint):
    model, config = load_model(stage2_checkpoint)
    assert config["image_size"] == 64 and len(config["mean"]) == 3
    assert torch.isfinite(model.threshold)  # chosen on normal validation images during training
    state = torch.load(stage2_checkpoint, weights_only=True)["state_dict"]
    assert torch.equal(model.student.state_dict()["decoder.stages.0.0.body.0.weight"],
                       state["model.student.decoder.stages.0.0.body.0.weight"])  # fmt: skip
    again, _ = load_model(stage2_checkpoint)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(images).maps, again(images).maps)


def test_wrong_files_name_the_fix(tmp_path):
    with pytest.raises(CheckpointError, match=r"distill/checkpoints/last\.ckpt"):
        load_model(tmp_path / "missing.ckpt")
    teacher = build_amplified_teacher(
        {"name": "resnet18", "weights": "none"}, {**config_file("raa/default.yaml"), "num_prototypes": 2}
    )
    save_teacher(tmp_path / "teacher.pt", teacher, {"name": "resnet18"}, {"num_prototypes": 2})
    with pytest.raises(CheckpointError, match="stage-1 teacher artifact"):
        load_model(tmp_path / "teacher.pt")
    torch.save({"state_dict": {}, "hyper_parameters": {}}, tmp_path / "stage1.ckpt")
    with pytest.raises(CheckpointError, match="not a stage-2"):
        load_model(tmp_path / "stage1.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match=r"junk\.ckpt is not a stage-2 checkpoint") as error:
        load_model(tmp_path / "junk.ckpt")
    assert "weights_only" not in str(error.value)


def test_a_checkpoint_without_newer_settings_loads_with_the_config_values(fused_checkpoint, tmp_path):
    """Written before anomaly_map.fusion* and backbone.student.fusion_width_per_group existed."""
    payload = torch.load(fused_checkpoint, weights_only=False)
    stored = payload["hyper_parameters"]["model_config"]
    del stored["anomaly_map"]["fusion"], stored["anomaly_map"]["fusion_draws"]
    del stored["backbone"]["student"]["fusion_width_per_group"], stored["raa"]["eps"]
    stored.pop("interpolation", None)
    torch.save(payload, tmp_path / "old.ckpt")
    model, config = load_model(tmp_path / "old.ckpt")
    assert config["anomaly_map"]["fusion"] == "off" and config["anomaly_map"]["fusion_draws"] == 8
    assert config["backbone"]["student"]["fusion_width_per_group"] is None and config["raa"]["eps"] == 1e-8
    assert config["raa"]["num_prototypes"] == 4 and model.map_name == "aand"
    assert config["interpolation"] == "pil_bicubic"


@pytest.mark.parametrize("checkpoint", ["stage2_checkpoint", "fused_checkpoint"])
def test_a_checkpoint_without_a_map_threshold_gets_the_one_its_threshold_was_chosen_on(
    checkpoint, request, tmp_path
):
    """Written when one threshold served the score and the mask: it was chosen on the output map's
    maxima, so it is the mask's. The paper's score is that maximum; the fused map's score no longer is,
    so a fused checkpoint has no decision threshold (predict then asks for one)."""
    payload = torch.load(request.getfixturevalue(checkpoint), weights_only=False)
    threshold = payload["state_dict"].pop("model.map_threshold")
    payload["state_dict"]["model.threshold"] = threshold.clone()  # as the old calibration stored it
    torch.save(payload, tmp_path / "old.ckpt")
    model, _ = load_model(tmp_path / "old.ckpt")
    assert torch.equal(model.map_threshold, threshold)
    if checkpoint == "stage2_checkpoint":
        assert torch.equal(model.threshold, threshold)
    else:
        assert model.map_name == "fused" and torch.isnan(model.threshold)
        settings = OmegaConf.create({"threshold": "stored"})
        with pytest.raises(
            PredictError, match=r"no threshold chosen on its validation images; pass threshold="
        ):
            choose_thresholds(model, {}, settings)
