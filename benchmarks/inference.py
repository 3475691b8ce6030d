"""bench-speed's `inference` and `aupro` sections: exported models and the AUPRO metric against anomalib's.

inference: our RD mode and AAND exported by `aand_lightning.export` (uint8 RGB in; normalisation,
map, score, normalised score and mask in the graph) next to anomalib's ReverseDistillation exported
by its own `to_onnx` / `to_openvino` (float RGB in; its pre- and post-processing in the graph). Same
backbone (wide_resnet50_2, random weights: timing only), size, batches and threads; each format runs
in its runtime on the CPU whatever `--device` says (onnxruntime; OpenVINO compiled at the batch's
shape, float32), the systems taking turns inside every repeat.

aupro: our `aupro` and anomalib's AUPRO metric on the same generated maps and masks
(benchmarks/aupro_speed.py's test set), timed in turns; their values must agree.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from aupro_speed import make_test_set
from systems import System, alternate

from aand_lightning.artifacts.exported import runtime
from aand_lightning.export import check_images, compare, export
from aand_lightning.metrics.aupro import aupro, label_regions
from aand_lightning.models.deployed import DeployedModel

OURS = {"ours_rd": "ours, RD mode", "ours_aand": "ours, AAND"}
RUNTIMES = {"onnx": "ONNX (onnxruntime)", "openvino": "OpenVINO IR (CPU plugin)"}
AUPRO_AGREEMENT = 1e-4  # |ours − anomalib's|: the two are exact computations of the same curve


def _ours(name: str, size: int, fmt: str, root: Path) -> tuple[Path, float, float]:
    """Export our system `name` with `aand_lightning.export` → (file, export seconds, max difference to
    PyTorch on random uint8 images). The random-weight model has no thresholds: 1.0 is set for both."""
    model = System(name, torch.device("cpu"), size).model.eval()
    model.threshold.fill_(1.0)
    model.map_threshold.fill_(1.0)
    deployed = DeployedModel(model, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    start = time.perf_counter()
    path = export(deployed, (size, size), fmt, root / f"{name}{'.onnx' if fmt == 'onnx' else '.xml'}")
    seconds = time.perf_counter() - start
    return path, seconds, compare(deployed, path, check_images((size, size), (1,))[0]).largest


def _anomalib(size: int, fmt: str, root: Path) -> tuple[Path, float]:
    """anomalib's ReverseDistillation (random weights) exported by its own exporter (opset 18, as ours:
    anomalib's default 14 cannot be reached from the dynamo exporter's 18) → (file, export seconds)."""
    from anomalib.models import ReverseDistillation

    torch.manual_seed(0)
    pre_processor = ReverseDistillation.configure_pre_processor(image_size=(size, size))
    model = ReverseDistillation(
        pre_trained=False, pre_processor=pre_processor, evaluator=False, visualizer=False
    ).eval()
    start = time.perf_counter()
    if fmt == "onnx":
        path = model.to_onnx(root / "anomalib", input_size=(size, size), opset_version=18)
    else:
        path = model.to_openvino(
            root / "anomalib", input_size=(size, size), onnx_kwargs={"opset_version": 18}
        )
    return Path(path), time.perf_counter() - start


def inference_section(args, headline: list[str], report: dict) -> list[str]:
    """Per format: export time, max difference to PyTorch (ours) and images/s of each exported model per
    batch size, with the time ratios against anomalib's exported RD."""
    lines = [
        "## Exported models: ours against anomalib's exported RD", "",
        f"wide_resnet50_2 with random weights, {args.size} px, {args.threads} threads, median of "
        f"{args.repeats} calls after two warm-up rounds, the systems alternating. Ours take uint8 "
        "(B, H, W, 3) and return score, map, normalised score and mask; anomalib's take float (B, 3, H, W) "
        "in [0, 1] and return its score, label, map and mask (its pre- and post-processing in the graph). "
        "Ratios are time per image, ours / anomalib's (below 1: ours is faster).", "",
    ]  # fmt: skip
    report["exported"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, title in RUNTIMES.items():
            root = Path(tmp) / fmt
            files: dict[str, Path] = {}
            notes: list[str] = []
            for name in OURS:
                files[name], seconds, diff = _ours(name, args.size, fmt, root)
                notes.append(
                    f"{OURS[name]}: exported in {seconds:.0f} s, max |exported − PyTorch| {diff:.1e}"
                )
            try:
                files["anomalib_rd"], seconds = _anomalib(args.size, fmt, root)
                notes.append(f"anomalib RD: exported by anomalib in {seconds:.0f} s")
            except Exception as error:  # missing anomalib, or its exporter failing: said, not hidden
                notes.append(f"anomalib RD: not exported here ({type(error).__name__}: {error})")
            lines += _format_lines(fmt, title, files, notes, args, headline, report)
            runtime.cache_clear()  # one format's loaded models at a time
    return lines


def _format_lines(fmt, title, files, notes, args, headline, report) -> list[str]:
    lines = [f"### {title}", "", *[f"- {note}" for note in notes], ""]
    lines += ["| batch | " + " | ".join(_label(name) for name in files) + " | ours RD / anomalib "
              "| ours AAND / anomalib | AAND / RD (ours) |",
              "|---" * (len(files) + 4) + "|"]  # fmt: skip
    for batch in args.batch_sizes:
        calls = {name: _call(path, name, batch, args) for name, path in files.items()}
        times = alternate(calls, args.repeats, torch.device("cpu"))
        median = {name: statistics.median(values) for name, values in times.items()}
        ratio = {
            key: median[a] / median[b] if a in median and b in median else None
            for key, (a, b) in {"rd": ("ours_rd", "anomalib_rd"), "aand": ("ours_aand", "anomalib_rd"),
                                "aand_rd": ("ours_aand", "ours_rd")}.items()
        }  # fmt: skip
        cells = [f"{batch / median[name]:.2f} img/s" for name in files]
        cells += ["–" if value is None else f"**{value:.2f}**" for value in ratio.values()]
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
        report["exported"][f"{fmt}_batch{batch}"] = {"seconds": median, "ratios": ratio}
        if ratio["rd"] is not None:
            headline.append(
                f"- Exported, {title}, batch {batch}: time per image ours RD / anomalib RD "
                f"**{ratio['rd']:.2f}**, ours AAND / anomalib RD **{ratio['aand']:.2f}**."
            )
    return [*lines, ""]


def _label(name: str) -> str:
    return OURS.get(name, "anomalib RD")


def _call(path: Path, name: str, batch: int, args) -> Callable[[], object]:
    """One run of the exported file on a batch of its own input type."""
    run = runtime(str(path), path.stat().st_mtime_ns, args.threads)
    if name.startswith("ours"):
        images = check_images((args.size, args.size), (batch,))[0]
    else:
        images = np.random.default_rng(0).random((batch, 3, args.size, args.size), dtype=np.float32)
    return lambda: run(images)


def aupro_section(args, headline: list[str], report: dict) -> list[str]:
    """Our AUPRO next to anomalib's on 100 generated 256x256 maps: values and times, one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        maps, masks = make_test_set(100, 256)
        regions = int(label_regions(masks).max())
        calls: dict[str, Callable[[], float]] = {"ours": lambda: aupro(maps, masks)}
        try:
            from anomalib.metrics.aupro import _AUPRO  # the metric itself; AUPRO wraps it for batches
        except ImportError as error:
            theirs_note = f"anomalib's AUPRO is not importable here ({error})"
        else:
            theirs_note = ""

            def theirs() -> float:
                metric = _AUPRO(fpr_limit=0.3)
                metric.update(maps, masks.int())
                return float(metric.compute())

            calls["anomalib"] = theirs
        values = {name: call() for name, call in calls.items()}
        times = alternate(calls, args.repeats, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    median = {name: statistics.median(t) for name, t in times.items()}
    lines = [
        "## AUPRO: ours against anomalib's", "",
        f"100 maps of 256x256 with {regions} regions (benchmarks/aupro_speed.py's test set), FPR limit "
        f"0.3, 1 thread, median of {args.repeats} after two warm-up rounds, alternating.", "",
        "| metric | AUPRO | time |", "|---|---|---|",
        *[f"| {name} | {values[name]:.6f} | {median[name]:.3f} s |" for name in calls],
    ]  # fmt: skip
    report["aupro"] = {"values": values, "seconds": median}
    if theirs_note:
        return [*lines, "", theirs_note + ".", ""]
    gap = abs(values["ours"] - values["anomalib"])
    agree = "agree" if gap <= AUPRO_AGREEMENT else f"DISAGREE (above {AUPRO_AGREEMENT:g})"
    ratio = median["ours"] / median["anomalib"]
    lines += [
        "",
        f"|ours − anomalib's| = {gap:.1e}: the values {agree}. Time ours / anomalib's: **{ratio:.2f}**.",
    ]
    headline.append(f"- AUPRO, 100 maps: ours / anomalib's time **{ratio:.2f}**; values {agree} ({gap:.1e}).")
    return [*lines, ""]
