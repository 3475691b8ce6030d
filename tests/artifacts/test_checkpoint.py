import pytest
import torch
from omegaconf import OmegaConf

from aand_lightning.artifacts.amplifier import save_amplifier
from aand_lightning.artifacts.checkpoint import CheckpointError, load_model
from aand_lightning.config import config_file
from aand_lightning.data.preprocessing import Preprocessing
from aand_lightning.models.build import build_teacher
from aand_lightning.predict import PredictError, choose_thresholds

# Old state-dict prefix of a stage-2 model (inside its `model.`) → today's.
_OLD_KEYS = {"teacher.encoder.": "teacher.teacher.", "fused_map.": "fusion."}
_OLD_STUDENT_KEYS = {
    "bottleneck_blocks": "fusion_blocks",
    "bottleneck_width_per_group": "fusion_width_per_group",
}


def _as_an_older_version_wrote_it(checkpoint) -> dict:
    """The payload of `checkpoint` as versions before the renames wrote it: `anomaly_map.fusion` (off |
    auto | a weight) and `fusion_draws`, the student's `fusion_*` keys, image size, interpolation, mean
    and std beside the model settings, state keys `teacher.teacher.*` and `fusion.*`, and one threshold
    (chosen on the output map's maxima) for the score and the masks."""
    payload = torch.load(checkpoint, weights_only=False)
    config = payload["hyper_parameters"]["model_config"]
    anomaly_map = config["anomaly_map"]
    output, weight = anomaly_map.pop("output"), anomaly_map.pop("fused_weight")
    anomaly_map["fusion"] = "off" if output == "aand" else weight
    anomaly_map["fusion_draws"] = 8
    student = config["backbone"]["student"]
    config["backbone"]["student"] = {_OLD_STUDENT_KEYS.get(k, k): v for k, v in student.items()}
    preprocessing = config.pop("preprocessing")
    config["image_size"] = preprocessing["image_size"][0]
    config |= {k: preprocessing[k] for k in ("interpolation", "mean", "std")}
    state = {}
    for key, value in payload["state_dict"].items():
        new = next((n for n in _OLD_KEYS if key.startswith(f"model.{n}")), None)
        state[key if new is None else f"model.{_OLD_KEYS[new]}{key[len(f'model.{new}') :]}"] = value
    state["model.threshold"] = state.pop("model.map_threshold").clone()
    payload["state_dict"] = state
    return payload


def test_checkpoint_rebuilds_the_trained_model(stage2_checkpoint):
    trained = load_model(stage2_checkpoint)
    model = trained.model
    assert trained.preprocessing.image_size == (64, 64) and len(trained.preprocessing.mean) == 3
    assert torch.isfinite(model.threshold)  # chosen on normal validation images during training
    state = torch.load(stage2_checkpoint, weights_only=True)["state_dict"]
    assert torch.equal(model.student.state_dict()["decoder.stages.0.0.body.0.weight"],
                       state["model.student.decoder.stages.0.0.body.0.weight"])  # fmt: skip
    again = load_model(stage2_checkpoint).model
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(images).map, again(images).map)


def test_wrong_files_name_the_fix(tmp_path):
    with pytest.raises(CheckpointError, match=r"distill/checkpoints/last\.ckpt"):
        load_model(tmp_path / "missing.ckpt")
    teacher = build_teacher(
        {"name": "resnet18", "weights": "none"}, {**config_file("raa/default.yaml"), "num_prototypes": 2}
    )
    save_amplifier(tmp_path / "amplifier.pt", teacher, {"name": "resnet18"}, {"num_prototypes": 2})
    with pytest.raises(CheckpointError, match="is a stage-1 amplifier, not a trained detector"):
        load_model(tmp_path / "amplifier.pt")
    old = torch.load(tmp_path / "amplifier.pt", weights_only=True) | {"format": "aand-teacher/2"}
    torch.save(old, tmp_path / "teacher.pt")  # as stage 1 wrote it before the file had its own name
    with pytest.raises(CheckpointError, match="is a stage-1 amplifier, not a trained detector"):
        load_model(tmp_path / "teacher.pt")
    torch.save({"state_dict": {}, "hyper_parameters": {}}, tmp_path / "stage1.ckpt")
    with pytest.raises(CheckpointError, match="not a stage-2"):
        load_model(tmp_path / "stage1.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match=r"junk\.ckpt is not a stage-2 checkpoint") as error:
        load_model(tmp_path / "junk.ckpt")
    assert "weights_only" not in str(error.value)


def test_a_checkpoint_of_an_older_version_loads_with_todays_settings(fused_checkpoint, tmp_path):
    """Its settings come back under today's names (fusion=0.5 is output=fused with fused_weight=0.5) and
    its weights, fused-map statistics and mask threshold under today's keys."""
    payload = _as_an_older_version_wrote_it(fused_checkpoint)
    assert any(k.startswith("model.teacher.teacher.backbone.") for k in payload["state_dict"])
    assert {"model.fusion.weight", "model.fusion.stats"} <= set(payload["state_dict"])
    assert "model.map_threshold" not in payload["state_dict"]
    torch.save(payload, tmp_path / "old.ckpt")
    old, today = load_model(tmp_path / "old.ckpt"), load_model(fused_checkpoint)
    assert set(old.settings) == {"backbone", "raa", "anomaly_map"}  # no image_size, mean... beside them
    assert old.settings == today.settings
    assert old.settings["anomaly_map"] == {
        **config_file("train.yaml")["anomaly_map"], "output": "fused", "fused_weight": 0.5
    }  # fmt: skip
    assert old.settings["backbone"]["student"] == config_file("backbone/resnet18.yaml")["student"]
    assert old.preprocessing == today.preprocessing == Preprocessing((64, 64), "pil_bicubic")
    assert old.model.output == "fused" and old.model.fused_map.calibrated
    current = today.model.state_dict()
    assert torch.equal(old.model.map_threshold, current["map_threshold"])
    assert torch.isnan(old.model.threshold)  # chosen on the fused map's maxima: not today's score
    assert all(torch.equal(v, current[k]) for k, v in old.model.state_dict().items() if k != "threshold")
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(old.model(images).map, today.model(images).map)


def test_a_checkpoint_without_newer_settings_loads_with_the_config_values(fused_checkpoint, tmp_path):
    """Written before anomaly_map.fusion*, backbone.student.fusion_width_per_group, raa.eps and the
    interpolation setting existed."""
    payload = _as_an_older_version_wrote_it(fused_checkpoint)
    stored = payload["hyper_parameters"]["model_config"]
    del stored["anomaly_map"]["fusion"], stored["anomaly_map"]["fusion_draws"]
    del stored["backbone"]["student"]["fusion_width_per_group"], stored["raa"]["eps"]
    del stored["interpolation"]
    torch.save(payload, tmp_path / "old.ckpt")
    trained = load_model(tmp_path / "old.ckpt")
    config = trained.settings
    assert config["anomaly_map"]["output"] == "aand" and config["anomaly_map"]["fused_weight"] == "auto"
    assert "fusion" not in config["anomaly_map"] and "fusion_draws" not in config["anomaly_map"]
    assert (
        config["backbone"]["student"]["bottleneck_width_per_group"] is None and config["raa"]["eps"] == 1e-8
    )
    assert "fusion_blocks" not in config["backbone"]["student"]
    assert config["raa"]["num_prototypes"] == 4 and trained.model.output == "aand"
    assert trained.preprocessing.interpolation == "pil_bicubic"


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
    trained = load_model(tmp_path / "old.ckpt")
    model = trained.model
    assert torch.equal(model.map_threshold, threshold)
    if checkpoint == "stage2_checkpoint":
        assert torch.equal(model.threshold, threshold)
    else:
        assert model.output == "fused" and torch.isnan(model.threshold)
        settings = OmegaConf.create({"threshold": "stored"})
        with pytest.raises(
            PredictError, match=r"no threshold chosen on its validation images; pass threshold="
        ):
            choose_thresholds(trained, settings)
