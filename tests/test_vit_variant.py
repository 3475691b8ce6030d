"""The authors' ViT variant through the same entry points as the CNN path: both stages, the handoff,
predict, the recipe and its authors' loop, and the mistakes a user can make with it (export and resume:
tests/test_export.py and tests/test_resume.py take the ViT run as one of their cases)."""

import csv
import json

import pytest
import torch

from aand_lightning.artifacts.amplifier import read_amplifier
from aand_lightning.artifacts.checkpoint import load_model
from aand_lightning.callbacks.authors_protocol import AuthorsRule
from aand_lightning.config.command_line import compose_checked
from aand_lightning.models.vit_encoder import ViTEncoder
from aand_lightning.models.vit_student import ViTStudent

CLIP = "vit_base_patch16_clip_quickgelu_224.openai"


def test_both_stages_train_and_test_and_hand_the_amplifier_over(vit_run):
    records = json.loads((vit_run / "metrics.json").read_text())
    assert [r["stage"] for r in records] == ["amplify", "distill"]
    for record in records:
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            assert 0.0 <= record["metrics"][key] <= 1.0
    amplifier = read_amplifier(vit_run / "amplify" / "amplifier.pt")
    assert amplifier["backbone"]["family"] == "vit" and amplifier["backbone"]["taps"] == [1, 2, 3]
    trained = load_model(vit_run / "distill" / "checkpoints" / "last.ckpt")
    assert isinstance(trained.model.teacher.encoder, ViTEncoder)
    assert isinstance(trained.model.student, ViTStudent)
    teacher = trained.model.teacher.state_dict()
    assert teacher.keys() == amplifier["state_dict"].keys()
    assert all(torch.equal(teacher[k], amplifier["state_dict"][k]) for k in teacher)  # stage 1's RAA, frozen


def test_predict_scores_a_folder_with_the_vit_checkpoint(vit_checkpoint, demo_root, cli_in_process, tmp_path):
    folder = demo_root / "brick" / "test" / "stain"
    result = cli_in_process("predict", f"ckpt={vit_checkpoint}", f"input={folder}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "predictions" / "scores.csv").open()))
    assert len(rows) == len(list(folder.glob("*.png"))) and all(float(r["score"]) > 0 for r in rows)


def test_the_recipe_and_its_authors_loop():
    cfg = compose_checked("train", ["experiment=paper_vit", "protocol=authors"])
    assert (
        cfg.backbone.name == "vit_base_patch16_clip_quickgelu_224.openai" and cfg.backbone.weights == "openai"
    )
    assert list(cfg.backbone.taps) == [4, 8, 12] and cfg.backbone.student.kind == "vit_decoder"
    assert list(cfg.backbone.student.taps) == [2, 4, 6] and cfg.backbone.student.num_heads == 12
    assert cfg.seed == 111 and cfg.amplify.teacher_forcing is False and cfg.dataset.image_size == 256
    assert (cfg.amplify.epochs, list(cfg.amplify.scheduler.milestones)) == (100, [80, 90])
    assert (cfg.distill.epochs, list(cfg.distill.scheduler.milestones)) == (120, [96, 108])
    assert cfg.amplify.optimizer.lr == cfg.distill.optimizer.lr == 0.005
    amplify, distill = AuthorsRule(**cfg.protocol.amplify), AuthorsRule(**cfg.protocol.distill)
    assert [e for e in range(100) if amplify.evaluates(e)][:3] == [0, 4, 9] and amplify.stop_after == 5
    assert [e for e in range(120) if distill.evaluates(e)][:3] == [9, 19, 29]
    assert distill.select_on == ("image_auroc",) and distill.stop_after == 5
    cnn = compose_checked("train", ["experiment=paper_mvtec", "protocol=authors"])
    assert AuthorsRule(**cnn.protocol.distill).select_on == ("image_auroc", "pixel_auroc")
    assert cnn.protocol.amplify.stop_after == 30 and cnn.protocol.distill.every == 5


def test_stage2_keeps_epochs_on_the_rounded_sum_of_its_rule_metrics(vit_checkpoint):
    from aand_lightning.stages import NormalityDistillation

    module = NormalityDistillation(load_model(vit_checkpoint).model, torch.nn.Identity(), torch.optim.Adam,
                                   selection_metrics=("image_auroc",))  # fmt: skip
    results = {"image_auroc": torch.tensor(0.81249), "pixel_auroc": torch.tensor(0.9)}
    assert float(module.selection_score(results)) == pytest.approx(0.812)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["student=rd"], f"Error: student=rd needs a CNN teacher but backbone {CLIP} is a VIT; pass "
         "student=vit_decoder (or backbone=wide_resnet50_2)."),
        (["backbone.taps=[4,8,13]"], "Error: backbone.taps=[4, 8, 13] must be three increasing block numbers "
         f"within the 3 blocks of {CLIP} (the authors tap [4, 8, 12])."),
        (["backbone.model_args={depth: 3, width: 64}"], "Error: backbone.model_args={'depth': 3, 'width': "
         f"64}} does not build {CLIP} (VisionTransformer.__init__() got an unexpected keyword argument "
         "'width'); pass timm VisionTransformer arguments such as depth, embed_dim, num_heads, or "
         "backbone.model_args=null."),
    ],
)  # fmt: skip
def test_vit_mistakes_are_one_sentence(
    overrides, expected, vit_tiny, cli_arguments, cli_in_process, tmp_path
):
    keys = {o.split("=")[0] for o in overrides}
    vit_tiny = [o for o in vit_tiny if o.split("=")[0] not in keys]  # the case sets these itself
    result = cli_in_process(
        "train", *cli_arguments(tmp_path, tmp_path / "run", *vit_tiny, *overrides), cwd=tmp_path
    )
    assert (result.returncode, result.stderr.strip()) == (2, expected)
    assert not (tmp_path / "run" / "amplify").exists()


def test_cnn_teacher_with_the_vit_student_is_refused(cli_arguments, cli_in_process, tmp_path):
    result = cli_in_process(
        "train", *cli_arguments(tmp_path, tmp_path / "run", "student=vit_decoder"), cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "Error: student=vit_decoder needs a VIT teacher but backbone resnet18 is a CNN; pass student=rd (or "
        "backbone=clip_vit_b16)."
    )


def test_openai_weights_without_a_network_name_what_to_pass(
    no_network, vit_tiny, cli_arguments, cli_in_process, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    overrides = [*vit_tiny, "backbone.weights=openai", "backbone.model_args=null", "backbone.taps=[4,8,12]"]
    result = cli_in_process("train", *cli_arguments(tmp_path, tmp_path / "run", *overrides), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"Error: Pretrained weights for {CLIP} cannot be downloaded here (no "
        "network, not in the local cache); pass backbone.weights=none for a random teacher or "
        "backbone.weights=/path/to/weights.pth for a local file."
    )


def test_an_amplifier_with_other_taps_is_refused_in_one_sentence(vit_run):
    """Stage 2 with taps (or model_args) other than the amplifier's: the same block count may load
    silently into the wrong layers, so the settings are compared first."""
    from aand_lightning.artifacts.amplifier import AmplifierError, load_amplifier

    amplifier = read_amplifier(vit_run / "amplify" / "amplifier.pt")
    backbone = {**amplifier["backbone"], "taps": [1, 3, 3]}
    with pytest.raises(AmplifierError) as error:
        load_amplifier(amplifier["path"], backbone, amplifier["raa"])
    assert str(error.value) == (
        f"The amplifier at {amplifier['path']} was trained with backbone.taps=[1, 2, 3], but this run sets "
        "backbone.taps=[1, 3, 3]; pass backbone.taps=[1, 2, 3] or an amplifier trained with "
        "backbone.taps=[1, 3, 3]."
    )
