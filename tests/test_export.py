import importlib
import importlib.util
import json
import re

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

from aand_lightning.artifacts.checkpoint import load_model
from aand_lightning.artifacts.exported import (
    ExportError,
    Sidecar,
    deployed_model,
    read_sidecar,
    run_exported,
)
from aand_lightning.data.io import read_image
from aand_lightning.export import Difference, check_images, compare, describe, difference, export
from aand_lightning.models.anomaly_map import normalized
from aand_lightning.models.deployed import Deployed

OPENVINO = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
SUFFIX = {"onnx": ".onnx", "openvino": ".xml"}
# every format for the CNN checkpoints; the ViT variant's through ONNX (the same export code)
CHECKPOINTS = ("stage2_checkpoint", "fused_checkpoint")
EXPORTS = [
    *(pytest.param(c, "onnx", id=f"{c}-onnx") for c in (*CHECKPOINTS, "vit_checkpoint")),
    *(pytest.param(c, "openvino", marks=OPENVINO, id=f"{c}-openvino") for c in CHECKPOINTS),
]


def _printed_difference(stdout: str) -> float:
    return float(re.search(r"Max \|exported − PyTorch\|[^:]*: ([0-9.e+-]+)", stdout).group(1))


def _demo_images(demo_root, trained, count: int = 3) -> np.ndarray:
    """Raw test images of the demo data (good and defective), resized by the model's preprocessing."""
    paths = sorted(demo_root.glob("*/test/*/*.png"))[::5][:count]
    return np.stack([trained.preprocessing(read_image(path))[0] for path in paths])


@pytest.mark.parametrize(("checkpoint", "fmt"), EXPORTS)
def test_export_command_matches_pytorch_from_uint8(
    checkpoint, fmt, request, cli_in_process, demo_root, tmp_path
):
    """The command checks the export, prints the difference, and writes a sidecar; the exported file then
    gives PyTorch's four outputs on raw uint8 images (demo test images and noise), at a batch size it was
    not exported with. The thresholds are set between these images' values, so the normalised scores and
    the masks fall on both sides of them."""
    ckpt = request.getfixturevalue(checkpoint)
    trained = load_model(ckpt)
    images = np.concatenate([_demo_images(demo_root, trained), check_images((64, 64), (2,))[0]])
    with torch.no_grad():
        out = deployed_model(trained)(torch.from_numpy(images))  # score and map: thresholds play no part
    threshold = float(np.quantile(out.score.numpy(), 0.5) + 1e-3)
    map_threshold = float(np.quantile(out.anomaly_map.numpy(), 0.9))
    output = tmp_path / f"model{SUFFIX[fmt]}"
    args = (f"format={fmt}", f"output={output}", f"threshold={threshold}", f"map_threshold={map_threshold}")
    result = cli_in_process("export", f"ckpt={ckpt}", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _printed_difference(result.stdout) < 1e-4 and "mask pixels that differ: 0" in result.stdout

    sidecar = read_sidecar(output)
    assert sidecar == Sidecar(trained.preprocessing, pytest.approx(threshold), pytest.approx(map_threshold))
    description = json.loads(output.with_name(output.name + ".json").read_text())
    assert description["format"] == fmt
    assert description["input"] == {**description["input"], "name": "image", "dtype": "uint8",
                                    "shape": ["batch", 64, 64, 3]}  # fmt: skip
    assert list(description["outputs"]) == list(Deployed._fields)

    exported = run_exported(output, images)
    with torch.no_grad():
        reference = deployed_model(trained, threshold, map_threshold)(torch.from_numpy(images))
    assert exported.anomaly_map.shape == (5, 1, 64, 64) and exported.mask.dtype == np.bool_
    for name in ("score", "anomaly_map", "normalized_score"):
        np.testing.assert_allclose(getattr(exported, name), getattr(reference, name).numpy(), atol=1e-4)
    np.testing.assert_allclose(exported.normalized_score, normalized(reference.score, threshold), atol=1e-6)
    numpy_reference = Deployed(*(t.numpy() for t in reference))
    assert difference(numpy_reference, exported, map_threshold, 1e-4).mask_pixels == 0
    assert (exported.normalized_score < 0.5).any() and (exported.normalized_score > 0.5).any()
    assert 0 < exported.mask.sum() < exported.mask.size
    if fmt == "onnx":  # docs/deployment.md: onnxruntime and PIL alone, no aand_lightning
        path = sorted(demo_root.glob("*/test/*/*.png"))[0]
        image = Image.open(path).convert("RGB").resize((64, 64), Image.BICUBIC)
        session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        plain = session.run(None, {"image": np.asarray(image)[None]})
        ours = run_exported(output, trained.preprocessing(read_image(path))[0][None])
        for value, expected in zip(plain[:3], ours[:3], strict=True):
            np.testing.assert_allclose(value, expected, atol=1e-6)
        np.testing.assert_array_equal(plain[3], ours.mask)


def test_the_check_refuses_a_difference_above_the_tolerance(
    stage2_checkpoint, cli_in_process, monkeypatch, tmp_path
):
    """Above `tolerance` the command prints the difference, ends with one sentence (exit 2) and writes no
    sidecar. The export is stood in for by PyTorch's own outputs with the score off by 1e-3."""
    command = importlib.import_module("aand_lightning.export")
    deployed = deployed_model(load_model(stage2_checkpoint))

    def off_by_a_little(path, images):
        with torch.no_grad():
            out = Deployed(*(t.numpy() for t in deployed(torch.from_numpy(images))))
        return out._replace(score=out.score + 1e-3)

    monkeypatch.setattr(command, "export", lambda *args, **kwargs: None)
    monkeypatch.setattr(command, "run_exported", off_by_a_little)
    output = tmp_path / "model.onnx"
    result = cli_in_process("export", f"ckpt={stage2_checkpoint}", f"output={output}", cwd=tmp_path)
    assert result.returncode == 2 and _printed_difference(result.stdout) == pytest.approx(1e-3, rel=1e-3)
    assert "differs from PyTorch by 1.00e-03 (tolerance=0.0001" in result.stderr
    assert "Traceback" not in result.stderr and not output.with_name("model.onnx.json").exists()


def test_the_legacy_exporter_is_a_working_fallback(stage2_checkpoint, tmp_path):
    deployed = deployed_model(load_model(stage2_checkpoint))
    path = export(deployed, (64, 64), "onnx", tmp_path / "model.onnx", exporter="legacy")
    result = compare(deployed, path, check_images((64, 64), (2,))[0])
    assert result.largest < 1e-4 and result.mask_pixels == 0


def test_mask_pixels_differ_only_clear_of_the_threshold():
    """A flipped mask pixel counts where the map is farther than the tolerance from the map threshold."""
    amap = np.array([0.2, 0.5 + 1e-6, 0.9], np.float32).reshape(1, 1, 1, 3)
    reference = Deployed(np.ones(1), amap, np.ones(1), amap > 0.5)
    for flipped, counted in ((1, 0), (0, 1), (2, 1)):
        mask = reference.mask.copy()
        mask[..., flipped] = ~mask[..., flipped]
        result = difference(reference, reference._replace(mask=mask), 0.5, 1e-4)
        assert result == Difference(0.0, counted)
    shifted = reference._replace(score=reference.score + 2e-4)
    assert difference(reference, shifted, 0.5, 1e-4).largest == pytest.approx(2e-4)


def _without_threshold(stage2_checkpoint, tmp_path):
    payload = torch.load(stage2_checkpoint, weights_only=False)
    for key in ("model.threshold", "model.map_threshold"):
        payload["state_dict"][key] = torch.tensor(float("nan"))
    path = tmp_path / "uncalibrated.ckpt"
    torch.save(payload, path)
    return path


def test_a_checkpoint_without_threshold_needs_one(stage2_checkpoint, cli_in_process, tmp_path):
    ckpt = _without_threshold(stage2_checkpoint, tmp_path)
    result = cli_in_process("export", f"ckpt={ckpt}", cwd=tmp_path)
    assert (
        result.returncode == 2
        and "stores no threshold" in result.stderr
        and "threshold=<score>" in result.stderr
    )
    deployed = deployed_model(load_model(ckpt), threshold=0.25)
    assert float(deployed.model.threshold) == float(deployed.model.map_threshold) == 0.25
    with torch.no_grad():
        out = deployed(torch.from_numpy(check_images((64, 64), (2,))[0]))
    assert torch.equal(out.normalized_score, normalized(out.score, 0.25))


def test_the_sidecar_carries_the_checkpoints_preprocessing_and_both_thresholds(fused_checkpoint, tmp_path):
    trained = load_model(fused_checkpoint)
    deployed = deployed_model(trained)
    description = describe("onnx", trained.preprocessing, deployed, "checkpoint", 0.0)
    (tmp_path / "fused.onnx.json").write_text(json.dumps(description))
    sidecar = read_sidecar(tmp_path / "fused.onnx")
    stored = (float(trained.model.threshold), float(trained.model.map_threshold))
    assert sidecar == Sidecar(trained.preprocessing, *map(pytest.approx, stored))
    assert stored[0] != pytest.approx(stored[1])  # the fused map's masks have their own threshold


def test_failed_dynamo_export_names_the_fallback(stage2_checkpoint, monkeypatch, tmp_path):
    def fail(*args, dynamo=True, **kwargs):
        raise RuntimeError("unsupported operator\nmore detail")

    monkeypatch.setattr(torch.onnx, "export", fail)
    deployed = deployed_model(load_model(stage2_checkpoint))
    fallback = r"RuntimeError: unsupported operator\); pass format=onnx exporter=legacy"
    with pytest.raises(ExportError, match=fallback):
        export(deployed, (64, 64), "onnx", tmp_path / "model.onnx")


def test_an_output_without_the_formats_suffix_is_refused_before_exporting(
    stage2_checkpoint, cli_in_process, tmp_path
):
    result = cli_in_process(
        "export", f"ckpt={stage2_checkpoint}", f"output={tmp_path / 'model'}", cwd=tmp_path
    )
    assert (result.returncode, result.stderr.strip()) == (2, (
        f"Error: output={tmp_path / 'model'} does not end in .onnx, the suffix of format=onnx; pass "
        f"output={tmp_path / 'model.onnx'}."
    ))  # fmt: skip
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


def test_user_mistakes_are_one_sentence(tmp_path):
    with pytest.raises(ExportError, match="pass format=onnx or format=openvino"):
        export(None, (64, 64), "torchscript", tmp_path / "model.pt")
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(ExportError, match=r"pass a \.onnx or an OpenVINO \.xml file"):
        run_exported(tmp_path / "model.pt", np.zeros((1, 64, 64, 3), np.uint8))
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(ExportError, match=r"uint8 RGB images \(B, H, W, 3\), got float32"):
        run_exported(tmp_path / "model.onnx", np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(ExportError, match=r"No sidecar .*; export the model again"):
        read_sidecar(tmp_path / "model.onnx")
