import numpy as np
import torch

from aand_lightning.config import config_file
from aand_lightning.data.preprocessing import Preprocessing
from aand_lightning.models.anomaly_map import normalized
from aand_lightning.models.build import build_aand
from aand_lightning.models.deployed import Deployed, DeployedModel

BACKBONE = {**config_file("backbone/resnet18.yaml"), "weights": "none"}
RAA, ANOMALY_MAP = config_file("raa/default.yaml"), config_file("train.yaml")["anomaly_map"]
PREPROCESSING = Preprocessing((64, 64), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def _deployed() -> DeployedModel:
    torch.manual_seed(0)
    model = build_aand(BACKBONE, {**RAA, "num_prototypes": 4}, ANOMALY_MAP).train()
    return DeployedModel(model, PREPROCESSING.mean, PREPROCESSING.std)


def test_uint8_images_give_what_the_model_gives_on_the_datasets_input():
    """The graph's normalisation is the datasets' (`Preprocessing.normalize`), and it runs in eval mode."""
    deployed = _deployed()
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    inputs = torch.stack([PREPROCESSING.normalize(image.astype(np.float32) / 255.0) for image in images])
    with torch.no_grad():
        out = deployed(torch.from_numpy(images))
        reference = deployed.model(inputs)
    assert not deployed.training and not deployed.model.training
    assert isinstance(out, Deployed) and out.score.shape == (2,) and out.anomaly_map.shape == (2, 1, 64, 64)
    torch.testing.assert_close(out.score, reference.score, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.anomaly_map, reference.map, atol=1e-6, rtol=0)


def test_normalised_score_and_mask_follow_the_models_thresholds():
    deployed = _deployed()
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8))
    with torch.no_grad():
        scores = deployed(images).score
        deployed.model.threshold.fill_(float(scores.median()))
        deployed.model.map_threshold.fill_(float(scores.min()) * 0.9)
        out = deployed(images)
    assert torch.equal(out.normalized_score, normalized(out.score, deployed.model.threshold))
    assert out.normalized_score[out.score.argmax()] > 0.5 > out.normalized_score[out.score.argmin()]
    assert out.mask.dtype == torch.bool and torch.equal(
        out.mask, out.anomaly_map > deployed.model.map_threshold
    )
    assert 0 < out.mask.sum() < out.mask.numel()
