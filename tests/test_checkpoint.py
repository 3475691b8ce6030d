import pytest
import torch

from aand_lightning.checkpoint import CheckpointError, load_model
from aand_lightning.handoff import save_teacher
from aand_lightning.models.build import build_amplified_teacher


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
    teacher = build_amplified_teacher({"name": "resnet18", "weights": "none"}, {"num_prototypes": 2})
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
