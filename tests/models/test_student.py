import pytest
import torch

from aand_lightning.config import config_file
from aand_lightning.models.build import build_aand
from aand_lightning.models.student import Student

STUDENTS = {
    name: config_file(f"backbone/{name}.yaml")["student"]
    for name in ("resnet18", "tf_efficientnet_lite0", "wide_resnet50_2")
}
RAA, ANOMALY_MAP = config_file("raa/default.yaml"), config_file("train.yaml")["anomaly_map"]


@pytest.mark.parametrize("name", list(STUDENTS))
def test_student_matches_teacher_shapes(name):
    """Shapes only: on the meta device nothing is initialised or computed (WideResNet50-2 in 0.2 s)."""
    with torch.device("meta"):
        model = build_aand({"name": name, "weights": "none", "student": STUDENTS[name]}, RAA, ANOMALY_MAP)
        out = model.eval()(torch.randn(2, 3, 64, 64))
    assert [s.shape for s in out.student] == [t.shape for t in out.teacher_features.amplified]
    assert out.map.shape == (2, 1, 64, 64) and out.score.shape == (2,)


def test_wide_resnet_student_is_rd_design():
    student = Student([256, 512, 1024], "bottleneck", 3, (3, 4, 6), 128, None)
    code = student.bottleneck(
        [torch.randn(1, 256, 64, 64), torch.randn(1, 512, 32, 32), torch.randn(1, 1024, 16, 16)]
    )
    assert code.shape == (1, 2048, 8, 8)
    assert student.bottleneck.blocks[0].downsample[0].in_channels == 3072
    assert [len(s) for s in student.decoder.stages] == [3, 4, 6]
    assert student.decoder.stages[0][0].body[0].out_channels == 512  # bottleneck width 256 * 128 / 64


def test_teacher_stays_frozen_in_train_mode():
    model = build_aand(
        {"name": "resnet18", "weights": "none", "student": STUDENTS["resnet18"]}, RAA, ANOMALY_MAP
    )
    model.train()
    assert not model.teacher.training and model.student.training
    assert not any(p.requires_grad for p in model.teacher.parameters())


def test_bottleneck_width_can_differ_from_the_decoder():
    rd = Student([256, 512, 1024], "bottleneck", 3, (3, 4, 6), 128, None)
    narrow = Student([256, 512, 1024], "bottleneck", 3, (3, 4, 6), 128, 64)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(narrow.decoder) == count(rd.decoder)
    assert round(count(rd.bottleneck) / 1e6, 1) == 58.9 and round(count(narrow.bottleneck) / 1e6, 1) == 30.8
