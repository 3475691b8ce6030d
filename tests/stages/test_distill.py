from functools import partial

import lightning as L
import pytest
import torch

from aand_lightning.config import config_file
from aand_lightning.data.datamodule import AnomalyDataModule
from aand_lightning.data.demo import DemoDataset
from aand_lightning.data.preprocessing import Preprocessing
from aand_lightning.data.synthesis.synthesizer import AnomalySynthesizer
from aand_lightning.models.anomaly_map import image_scores
from aand_lightning.models.build import build_aand
from aand_lightning.models.fused_map import FusedMap
from aand_lightning.models.losses import HardKnowledgeDistillationLoss
from aand_lightning.stages import NormalityDistillation
from aand_lightning.stages.distill import anomalous_gate_values

RAA, ANOMALY_MAP = config_file("raa/default.yaml"), config_file("train.yaml")["anomaly_map"]


def test_stage2_step_updates_only_student_and_sets_threshold(loader, one_step_trainer, resnet18_backbone):
    torch.manual_seed(0)
    model = build_aand(resnet18_backbone, {**RAA, "num_prototypes": 4}, ANOMALY_MAP)
    module = NormalityDistillation(model, HardKnowledgeDistillationLoss(), partial(torch.optim.Adam, lr=1e-3))
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in model.student.state_dict().items()}

    one_step_trainer().fit(module, train_dataloaders=loader, val_dataloaders=loader)

    assert all(torch.equal(teacher_before[k], v) for k, v in model.teacher.state_dict().items())
    assert any(not torch.equal(student_before[k], v) for k, v in model.student.state_dict().items())
    assert torch.isfinite(model.threshold)


@pytest.fixture(scope="module")
def demo_datamodule(tmp_path_factory) -> AnomalyDataModule:
    """Generated demo textures at 64 px: 36 train, 4 validation (normal) and 25 test images."""
    datamodule = AnomalyDataModule(
        DemoDataset(tmp_path_factory.mktemp("demo"), "brick", image_size=64), Preprocessing((64, 64)),
        batch_size=8, num_workers=0, synthesizer=AnomalySynthesizer(), seed=0,
    )  # fmt: skip
    datamodule.setup()
    return datamodule


def _fit(datamodule, backbone, output, fused_weight, root) -> tuple[NormalityDistillation, L.Trainer]:
    """One epoch, then validation (no sanity pass): the calibration is that of the trained student.
    The stage gets the datamodule as the entry point hands it: calibration data and skip flags."""
    torch.manual_seed(0)
    model = build_aand(
        backbone,
        {**RAA, "num_prototypes": 4},
        {**ANOMALY_MAP, "output": output, "fused_weight": fused_weight},
    )
    module = NormalityDistillation(
        model, HardKnowledgeDistillationLoss(), partial(torch.optim.Adam, lr=1e-3), gate_draws=2,
        calibration_data=datamodule, skip_image=datamodule.skip_image,
    )  # fmt: skip
    trainer = L.Trainer(
        max_epochs=1, num_sanity_val_steps=0, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    return module, trainer


def test_fusion_is_calibrated_on_validation_images_only(demo_datamodule, resnet18_backbone, tmp_path):
    module, trainer = _fit(demo_datamodule, resnet18_backbone, "fused", "auto", tmp_path)
    trainer.test(module, datamodule=demo_datamodule)
    model = module.model.eval()
    normal = demo_datamodule.loader(demo_datamodule.dataset(demo_datamodule.val_samples, "normal"), 8)
    with torch.no_grad():  # the trained model's maps of the validation images, and nothing else
        maps = [model(batch.image, maps=model.map_names()).maps for batch in normal]
        aand, gate = (torch.cat([m[name] for m in maps]) for name in ("aand", "gate"))
    fusion = FusedMap("auto")
    draws = demo_datamodule.synthetic_anomalies("val", 2)
    fusion.calibrate(aand, gate, anomalous_gate_values(model, draws, torch.device("cpu")))
    assert torch.allclose(model.fused_map.stats, fusion.stats, rtol=1e-5)
    assert torch.isclose(model.fused_map.weight, fusion.weight)
    fused = image_scores(fusion(aand, gate))  # the masks' threshold: on the fused map's maxima
    assert torch.isclose(model.map_threshold, torch.quantile(fused, 0.99), rtol=1e-5)
    paper = image_scores(aand)  # the decision's: on the image scores, the paper's map's maxima
    assert torch.isclose(model.threshold, torch.quantile(paper, 0.99), rtol=1e-5)
    assert not torch.isclose(model.threshold, model.map_threshold)
    assert module.output_map == "fused" and module.test_results == module.test_results_by_map["fused"]
    assert set(module.test_results_by_map) == {"aand", "gate", "fused"}
    details = module.map_details()
    assert details["fused_weight"] == "auto" and details["weight"] == float(fusion.weight)


def test_the_test_pass_never_calibrates(demo_datamodule, resnet18_backbone, tmp_path):
    module, trainer = _fit(demo_datamodule, resnet18_backbone, "fused", 0.5, tmp_path)
    calibration = {k: v.clone() for k, v in module.model.state_dict().items() if k.startswith("fused_map.")}
    assert calibration  # the fused map's weight and statistics
    calibration["threshold"] = module.model.threshold.clone()
    calibration["map_threshold"] = module.model.map_threshold.clone()
    trainer.test(module, datamodule=demo_datamodule)  # anomalies included: they must change nothing
    state = module.model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in calibration.items())


def test_paper_map_run_reports_every_map_of_one_forward_pass(demo_datamodule, resnet18_backbone, tmp_path):
    module, trainer = _fit(demo_datamodule, resnet18_backbone, "aand", "auto", tmp_path)
    trainer.test(module, datamodule=demo_datamodule)
    assert module.output_map == "aand" and module.test_results == module.test_results_by_map["aand"]
    assert set(module.test_results_by_map) == {"aand", "gate", "fused"}
    assert module.test_results_by_map["fused"] != module.test_results_by_map["aand"]
    assert module.map_details()["fused_weight"] == "auto" and 0.0 <= module.map_details()["weight"] <= 0.25
    assert torch.equal(module.model.threshold, module.model.map_threshold)  # the paper's map: one threshold
