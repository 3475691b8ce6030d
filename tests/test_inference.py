import math
import os
import re
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from aand_lightning import Inferencer
from aand_lightning.artifacts.checkpoint import load_model
from aand_lightning.data.batch import Item, collate
from aand_lightning.errors import UserError
from aand_lightning.inference import PredictError, Prediction, TorchBackend
from aand_lightning.models.anomaly_map import normalized
from aand_lightning.models.deployed import DeployedModel
from aand_lightning.models.losses import HardKnowledgeDistillationLoss
from aand_lightning.stages import NormalityDistillation

README = Path(__file__).resolve().parents[1] / "README.md"


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB picture with a bright blob (not noise: resizing it keeps its content)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) for c in range(3)], -1) * 60 + 120
    blob = 100 * np.exp(-(((y - 0.3) ** 2 + (x - 0.6) ** 2) / 0.01))[..., None]
    return np.clip(base + blob + rng.normal(0, 3, (height, width, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def inferencer(stage2_checkpoint) -> Inferencer:
    return Inferencer.from_checkpoint(stage2_checkpoint)


def test_every_input_kind_gives_the_same_prediction(inferencer, tmp_path):
    """A file, a folder, a list of paths, a numpy array, a PIL image, a uint8 CxHxW tensor and a float
    BxCxHxW tensor in [0, 1] are one image read seven ways: one score, one map at its own size."""
    image = _image(50, 90)
    Image.fromarray(image).save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    Image.fromarray(image).save(tmp_path / "sub" / "b.png")
    chw = torch.from_numpy(image).permute(2, 0, 1)
    kinds = {
        "file": str(tmp_path / "a.png"),
        "folder": tmp_path,  # recursive: a.png and sub/b.png
        "list": [tmp_path / "a.png", str(tmp_path / "sub" / "b.png")],
        "numpy": image,
        "pil": Image.fromarray(image),
        "uint8 tensor": chw,
        "float tensor": (chw.float() / 255)[None].repeat(2, 1, 1, 1),
    }
    results = {kind: inferencer.predict(value) for kind, value in kinds.items()}
    counts = {kind: len(predictions) for kind, predictions in results.items()}
    assert counts == {
        "file": 1,
        "folder": 2,
        "list": 2,
        "numpy": 1,
        "pil": 1,
        "uint8 tensor": 1,
        "float tensor": 2,
    }
    assert [p.path.name for p in results["folder"]] == ["a.png", "b.png"]
    assert results["numpy"][0].path is None
    reference = results["file"][0]
    for prediction in (p for predictions in results.values() for p in predictions):
        assert isinstance(prediction, Prediction)
        assert prediction.score == pytest.approx(reference.score, abs=1e-5)  # batches differ in rounding
        np.testing.assert_array_equal(prediction.image, image)
        np.testing.assert_allclose(prediction.anomaly_map, reference.anomaly_map, atol=1e-5)
        assert prediction.anomaly_map.shape == prediction.mask.shape == (50, 90)
        assert prediction.anomaly_map.dtype == np.float32 and prediction.mask.dtype == bool


def test_a_prediction_holds_the_models_answers_at_the_inputs_size(stage2_checkpoint, inferencer):
    """Score and normalised score are the model's at its size; the map comes back by bilinear
    interpolation, the mask by nearest neighbour (so, enlarged, it is empty exactly when the image is
    normal); the decision is score > threshold."""
    trained = load_model(stage2_checkpoint)
    model, preprocessing = trained.model, trained.preprocessing
    threshold = float(model.threshold)
    image = _image(96, 144, seed=1)
    resized, tensor = preprocessing(image)
    with torch.no_grad():
        out = model(tensor[None])
    (prediction,) = inferencer.predict(image)
    assert prediction.score == pytest.approx(float(out.score[0]), abs=1e-6)
    assert prediction.is_anomalous == (prediction.score > threshold)
    assert prediction.normalized_score == pytest.approx(float(normalized(out.score, model.threshold)[0]))
    expected_map = F.interpolate(out.map, (96, 144), mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(prediction.anomaly_map, expected_map, atol=1e-6)
    small_mask = (out.map > model.map_threshold).float()
    expected_mask = F.interpolate(small_mask, (96, 144), mode="nearest-exact")[0, 0].numpy() > 0.5
    np.testing.assert_array_equal(prediction.mask, expected_mask)
    # thresholds chosen so that this image is anomalous, then normal: the mask follows the decision
    for chosen in (prediction.score * 0.9, prediction.score * 1.1):
        at = Inferencer.from_checkpoint(stage2_checkpoint, threshold=chosen, map_threshold=chosen)
        (p,) = at.predict(image)
        assert p.is_anomalous == bool(p.mask.any()) == (chosen < p.score)
        assert p.normalized_score == pytest.approx(min(p.score / (2 * chosen), 1.0))
    # at the model's size, the map is the model's own
    (same,) = inferencer.predict(resized)
    with torch.no_grad():
        own = model(preprocessing(resized)[1][None]).map[0, 0].numpy()
    np.testing.assert_allclose(same.anomaly_map, own, atol=1e-6)


def test_unreadable_files_are_skipped_with_a_warning(inferencer, tmp_path):
    Image.fromarray(_image(64, 64)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="broken.png"):
        predictions = inferencer.predict([tmp_path / "broken.png", tmp_path / "good.png"])
    assert [p.path.name for p in predictions] == ["good.png"]


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.randn(3, 32, 32), "values outside"),  # a normalised image: ambiguous
        (torch.zeros(32, 32, 3, dtype=torch.uint8), "channels first"),
        (torch.zeros(3, 8, 8, dtype=torch.int64), "uint8 or float"),
        (np.zeros((32, 32, 3), dtype=np.float32), "uint8 HxWx3"),
        (np.zeros((32, 32), dtype=np.uint8), "uint8 HxWx3"),
        (3, "Cannot predict on a int"),
        ("missing.png", "does not exist"),
    ],
)
def test_ambiguous_or_wrong_input_is_one_sentence(inferencer, images, message):
    with pytest.raises(PredictError, match=message) as error:
        inferencer.predict(images)
    assert "\n" not in str(error.value)


def test_thresholds_are_the_stored_ones_or_those_given(stage2_checkpoint):
    """As `aand-export` puts them in the graph: stored, or given (the map's defaulting to the score's); a
    model with none is refused, or gives raw outputs only."""
    trained = load_model(stage2_checkpoint)
    stored = Inferencer.from_checkpoint(trained)
    assert (stored.threshold, stored.map_threshold) == (float(trained.model.threshold),) * 2
    trained.model.threshold.fill_(float("nan"))
    trained.model.map_threshold.fill_(float("nan"))
    with pytest.raises(UserError, match="threshold=") as error:
        Inferencer.from_checkpoint(trained)
    assert "\n" not in str(error.value)
    image = _image(64, 64)
    deployed = DeployedModel(trained.model, trained.preprocessing.mean, trained.preprocessing.std)
    raw = Inferencer(TorchBackend(deployed), trained.preprocessing, math.nan, math.nan)
    with pytest.raises(PredictError, match="threshold=<number>"):
        raw.predict(image)
    ((path, pixels, out),) = raw.outputs(image)
    assert path is None and pixels is image and np.isfinite(out.score).all()
    one = Inferencer.from_checkpoint(trained, threshold=0.1)
    assert (one.threshold, one.map_threshold) == pytest.approx((0.1, 0.1))
    (prediction,) = Inferencer.from_checkpoint(trained, threshold=0.1, map_threshold=0.2).predict(image)
    assert prediction.normalized_score == pytest.approx(min(prediction.score / 0.2, 1.0))
    assert prediction.is_anomalous == (prediction.score > 0.1)


def test_trainer_predict_gives_the_models_output(stage2_checkpoint, inferencer):
    """`NormalityDistillation.predict_step`: `Trainer.predict` over a loader of batches gives the
    model's typed output, with the scores the Inferencer gives for the same images."""
    trained = load_model(stage2_checkpoint)
    images = [_image(64, 64, seed) for seed in range(3)]
    items = [
        Item(trained.preprocessing(i)[1], torch.zeros(1, 64, 64), 0, "good", f"{n}.png")
        for n, i in enumerate(images)
    ]
    module = NormalityDistillation(trained.model, HardKnowledgeDistillationLoss(), partial(torch.optim.Adam))
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    loader = torch.utils.data.DataLoader(items, batch_size=2, collate_fn=collate)
    outputs = trainer.predict(module, loader)
    assert [len(out.score) for out in outputs] == [2, 1]
    assert outputs[0].map.shape == (2, 1, 64, 64)
    scores = torch.cat([out.score for out in outputs]).tolist()
    assert scores == pytest.approx([p.score for p in inferencer.predict(images)], abs=1e-6)


@pytest.fixture(scope="module")
def exported(stage2_checkpoint, tmp_path_factory) -> Path:
    """The stage-2 checkpoint exported to ONNX (with its sidecar) by the export command's config and run."""
    from hydra import compose, initialize_config_dir

    from aand_lightning.config import config_dir
    from aand_lightning.export import _export

    output = tmp_path_factory.mktemp("exported") / "model.onnx"
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("export", overrides=[f"ckpt={stage2_checkpoint}", f"output={output}"])
    return _export(cfg)


def test_the_exported_model_gives_the_checkpoints_predictions(stage2_checkpoint, exported):
    """For the same images, the checkpoint and its ONNX export give the same scores within 1e-4, the same
    decisions and maps at the input's size."""
    path = exported
    images = [_image(50, 90, seed) for seed in range(3)]
    from_checkpoint = Inferencer.from_checkpoint(stage2_checkpoint).predict(images)
    exported = Inferencer.from_exported(path, batch_size=2).predict(images)
    assert len(exported) == len(from_checkpoint) == 3
    for ours, theirs in zip(from_checkpoint, exported, strict=True):
        assert abs(ours.score - theirs.score) < 1e-4
        assert abs(ours.normalized_score - theirs.normalized_score) < 1e-4
        assert ours.is_anomalous == theirs.is_anomalous
        np.testing.assert_allclose(ours.anomaly_map, theirs.anomaly_map, atol=1e-4)


def _python_blocks(section: str) -> list[str]:
    """The ```python blocks of the README section titled `section`."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start : end if end > 0 else None], re.S)


def test_readme_use_from_python_runs(stage2_checkpoint, exported, demo_root, tmp_path, monkeypatch, capsys):
    """The README's "Use from Python" snippets, as written there, run in a folder that holds what they
    name: a run's checkpoint, its export, a folder of new images and the demo data (the training call)."""
    blocks = _python_blocks("Use from Python")
    assert blocks, "README.md has no ```python block under '## Use from Python'"
    checkpoint = tmp_path / "outputs" / "run" / "distill" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    os.symlink(stage2_checkpoint, checkpoint)
    for source in (exported, exported.with_name(exported.name + ".json")):
        os.symlink(source, checkpoint.with_name(source.name.replace("model", "last")))
    (tmp_path / "new_images").mkdir()
    for index in range(3):
        Image.fromarray(_image(80, 120, index)).save(tmp_path / "new_images" / f"{index:03d}.png")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "aand_demo").symlink_to(demo_root, target_is_directory=True)
    monkeypatch.delenv("AAND_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert capsys.readouterr().out
    assert (tmp_path / "outputs" / "smoke" / "distill" / "metrics.json").is_file()  # the training call's run
