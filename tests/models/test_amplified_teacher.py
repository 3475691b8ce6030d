import torch

from aand_lightning.models.build import build_aand, build_amplified_teacher

RESNET18 = {"name": "resnet18", "weights": "none"}


def test_state_dicts_from_before_the_encoder_rename_still_load():
    """Artifacts and checkpoints saved when the encoder was `AmplifiedTeacher.teacher` hold `teacher.*`."""
    torch.manual_seed(0)
    saved = build_amplified_teacher(RESNET18, {"num_prototypes": 4})
    old = {k.replace("encoder.", "teacher.", 1): v for k, v in saved.state_dict().items()}
    assert any(k.startswith("teacher.backbone.") for k in old)
    torch.manual_seed(1)
    loaded = build_amplified_teacher(RESNET18, {"num_prototypes": 4})
    loaded.load_state_dict(old)  # strict
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in saved.state_dict().items())
    # nested: a stage-2 model (AAND.teacher.teacher.* → AAND.teacher.encoder.*)
    model = build_aand(RESNET18 | {"student": {"block": "basic", "decoder_layers": [1, 1, 1]}}, {}, {})
    nested = {k.replace("teacher.encoder.", "teacher.teacher.", 1): v for k, v in model.state_dict().items()}
    assert any(k.startswith("teacher.teacher.") for k in nested)
    model.load_state_dict(nested)
