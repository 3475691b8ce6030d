"""`make bench-speed`: aand_lightning against anomalib's Reverse Distillation, and against the hardware.

Same random images, same backbone (wide_resnet50_2, random weights: timing only), same size, same
batches, same threads, one process; the systems alternate inside every repeat, so drift in machine
load hits all of them alike. Reports median and spread (min–max) per measurement, FLOPs against the
attainable float32 matmul rate, the top ops of one inference, the fast paths (channels_last, bf16
autocast, torch.compile) with their numerical difference to float32 eager, and peak memory of each
system measured in a fresh subprocess.

anomalib is optional: run with a Python that has it (`benchmarks/anomalib_env.sh` builds one next
to ours); without it its rows say so.

  python benchmarks/speed.py --device cpu --batch-sizes 8 16 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from aand_lightning.data.synthesis.synthesizer import AnomalySynthesizer
from aand_lightning.models.build import build_aand, build_amplified_teacher
from aand_lightning.models.losses import (
    AmplificationLoss,
    CosineDistillationLoss,
    HardKnowledgeDistillationLoss,
)

ROOT = Path(__file__).resolve().parents[1]
WRN50 = {
    "name": "wide_resnet50_2",
    "weights": "none",
    "student": {
        "block": "bottleneck",
        "fusion_blocks": 3,
        "decoder_layers": [3, 4, 6],
        "width_per_group": 128,
    },
}
# ours_rd_w64: our RD with anomalib's 64-wide bottleneck (RD's own is 128-wide), to compare equal FLOPs
SYSTEMS = ("ours_rd", "ours_rd_w64", "ours_aand", "anomalib_rd")
WRN50_W64 = {**WRN50, "student": {**WRN50["student"], "fusion_width_per_group": 64}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


class System:
    """A model with a training step and an inference call on normalised images."""

    def __init__(self, name: str, device: torch.device, size: int) -> None:
        self.name = name
        self.available = True
        torch.manual_seed(0)
        if name.startswith("ours"):
            raa = {"enabled": name == "ours_aand"}
            backbone = WRN50_W64 if name == "ours_rd_w64" else WRN50
            self.model = build_aand(backbone, raa, {"sigma": 4.0}).to(device)
            self.loss = HardKnowledgeDistillationLoss() if raa["enabled"] else CosineDistillationLoss()
            params = self.model.student.parameters()
        else:
            try:
                from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
                from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
                from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel
            except ImportError:
                self.available = False
                return
            self.model = ReverseDistillationModel(
                backbone="wide_resnet50_2", input_size=(size, size), layers=["layer1", "layer2", "layer3"],
                anomaly_map_mode=AnomalyMapGenerationMode.ADD, pre_trained=False,
            ).to(device)  # fmt: skip
            self.loss = ReverseDistillationLoss()
            params = [p for n, p in self.model.named_parameters() if not n.startswith("encoder")]
        self.optimizer = torch.optim.Adam(params, lr=0.005, betas=(0.5, 0.999))

    def train_step(self, images: torch.Tensor) -> None:
        self.model.train()
        if self.name.startswith("ours"):
            out = self.model(images, with_map=False)
            loss = self.loss(out.teacher.amplified, out.student)
        else:
            encoder, decoder = self.model(images)
            loss = self.loss(encoder, decoder)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @torch.no_grad()
    def infer(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        if self.name.startswith("ours"):
            out = self.model(images)
            return out.maps, out.scores
        out = self.model(images)
        return out.anomaly_map, out.pred_score


def measure(
    systems: dict[str, System], images: torch.Tensor, repeats: int, kind: str, device
) -> dict[str, list[float]]:
    """Seconds per call; one warm-up each, then the systems alternate within every repeat."""
    call = {"train": lambda s: s.train_step(images), "infer": lambda s: s.infer(images)}[kind]
    for system in systems.values():
        call(system)
    times: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(repeats):
        for name, system in systems.items():
            times[name].append(timed(lambda s=system: call(s), device))
    return times


def stage1_images_per_second(device: torch.device, batch: int, size: int, repeats: int) -> dict[str, float]:
    """Stage 1 = synthesis (host, per image) + RAA training step (teacher forcing) on the batch."""
    rng = np.random.default_rng(0)
    pictures = rng.random((batch, size, size, 3), dtype=np.float32)
    foreground = np.ones((size, size), bool)
    synthesizer = AnomalySynthesizer()
    synth = [
        timed(lambda: [synthesizer(p, foreground, rng) for p in pictures], torch.device("cpu"))
        for _ in range(repeats)
    ]
    teacher = build_amplified_teacher(WRN50, {"enabled": True}).to(device)
    loss_fn = AmplificationLoss()
    optimizer = torch.optim.Adam(teacher.raa.parameters(), lr=0.005, betas=(0.5, 0.999))
    images = torch.randn(batch, 3, size, size, device=device)
    mask = torch.zeros(batch, 1, size, size, device=device)
    mask[:, :, size // 4 : size // 2, size // 4 : size // 2] = 1

    def step() -> None:
        with torch.no_grad():
            features = teacher.teacher(images)
        out = teacher.amplify(features, loss_fn.level_targets(mask, features))
        loss = loss_fn(out.features, out.amplified, out.gates, mask)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    steps = [timed(step, device) for _ in range(repeats)]
    s, t = statistics.median(synth), statistics.median(steps)
    return {"synthesis_img_s": batch / s, "step_img_s": batch / t, "serial_img_s": batch / (s + t),
            "overlapped_img_s": batch / max(s / 2, t)}  # fmt: skip


def flops(system: System, images: torch.Tensor) -> dict[str, float]:
    counter = FlopCounterMode(display=False)
    with counter:
        system.infer(images)
    inference = counter.get_total_flops()
    counter = FlopCounterMode(display=False)
    with counter:
        system.train_step(images)
    return {"inference": inference, "train": counter.get_total_flops()}


def attainable_flops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n**3 / best


def top_ops(system: System, images: torch.Tensor, k: int = 8) -> list[tuple[str, float]]:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if images.is_cuda else [])
    with profile(activities=activities) as prof:
        system.infer(images)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:k]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    return [(e.key, 100 * e.self_cpu_time_total / total) for e in events]


def fast_paths(device: torch.device, images: torch.Tensor, repeats: int, compile_too: bool) -> list[tuple]:
    """AAND inference with each fast path: (name, median s, spread, max |map − fp32 eager|)."""
    base = System("ours_aand", device, images.shape[-1])
    reference, _ = base.infer(images)
    rows = []
    variants: dict[str, Callable[[], torch.Tensor]] = {"fp32 eager": lambda: base.infer(images)[0]}
    last = images.contiguous(memory_format=torch.channels_last)
    cl = System("ours_aand", device, images.shape[-1])
    cl.model.to(memory_format=torch.channels_last)
    variants["channels_last"] = lambda: cl.infer(last)[0]

    def bf16() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return base.infer(images)[0]

    variants["bf16 autocast"] = bf16
    if compile_too:
        compiled = System("ours_aand", device, images.shape[-1])
        compiled.model.teacher.compile()
        compiled.model.student.compile()
        variants["torch.compile"] = lambda: compiled.infer(images)[0]
    for name, fn in variants.items():
        result = fn()  # warm-up (and compilation)
        seconds = [timed(fn, device) for _ in range(repeats)]
        diff = (result.float() - reference).abs().max().item()
        rows.append((name, statistics.median(seconds), min(seconds), max(seconds), diff))
    return rows


def peak_memory(system: str, kind: str, batch: int, size: int, device: str) -> float:
    """Peak RSS (MB), or peak CUDA allocation, of one warm-up + one call, in a fresh process."""
    command = [sys.executable, __file__, "--probe", system, kind, "--device", device,
               "--batch-sizes", str(batch), "--size", str(size)]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def probe(system_name: str, kind: str, device: torch.device, batch: int, size: int) -> None:
    """The --probe mode: build one system, run it twice, print its peak memory in MB."""
    system = System(system_name, device, size)
    images = torch.randn(batch, 3, size, size, device=device)
    for _ in range(2):
        system.train_step(images) if kind == "train" else system.infer(images)
    if device.type == "cuda":
        print(torch.cuda.max_memory_allocated(device) / 2**20)
    else:  # VmHWM: this process's own peak (ru_maxrss would include the parent's, inherited at fork)
        status = Path("/proc/self/status").read_text().splitlines()
        print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024)


def _stat(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s ({min(values):.3f}–{max(values):.3f})"


def _version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile fast path")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--probe", nargs=2, metavar=("SYSTEM", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.probe:
        probe(*args.probe, device, args.batch_sizes[0], args.size)
        return
    systems = {name: System(name, device, args.size) for name in SYSTEMS}
    systems = {n: s for n, s in systems.items() if s.available}
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    lines = [
        f"# Speed benchmark {dt.date.today()} (`benchmarks/speed.py`)",
        "",
        f"Device {device} ({hardware}), threads {args.threads}, {args.size} px, wide_resnet50_2 with random "
        f"weights; load average at start {os.getloadavg()[0]:.2f}. Versions: torch {torch.__version__}, "
        f"aand-lightning {_version('aand-lightning')}, anomalib {_version('anomalib')}. "
        f"Median of {args.repeats} timed calls after one warm-up, (min–max).",
        "",
    ]
    if "anomalib_rd" not in systems:
        lines += ["anomalib is not importable in this Python: its rows are missing.", ""]
    for batch in args.batch_sizes:
        images = torch.randn(batch, 3, args.size, args.size, device=device)
        train = measure(systems, images, args.repeats, "train", device)
        infer = measure(systems, images, args.repeats, "infer", device)
        lines += [
            f"## Batch {batch}",
            "",
            "| system | stage-2 train step | inference call | inference img/s |",
            "|---|---|---|---|",
        ]
        for name in systems:
            ips = batch / statistics.median(infer[name])
            lines.append(f"| {name} | {_stat(train[name])} | {_stat(infer[name])} | {ips:.1f} |")
        if "anomalib_rd" in systems:
            ratio = statistics.median(train["ours_rd"]) / statistics.median(train["anomalib_rd"])
            lines.append(f"\nTrain step ours RD / anomalib RD: **{ratio:.2f}** (target ≤ 1.0).")
            ratio = statistics.median(train["ours_rd_w64"]) / statistics.median(train["anomalib_rd"])
            lines.append(
                f"Train step ours RD with anomalib's 64-wide bottleneck / anomalib RD: **{ratio:.2f}**."
            )
            ratio = statistics.median(infer["ours_rd"]) / statistics.median(infer["anomalib_rd"])
            lines.append(f"Inference ours RD / anomalib RD: **{ratio:.2f}**.")
        ratio = statistics.median(infer["ours_aand"]) / statistics.median(infer["ours_rd"])
        lines += [f"AAND inference / RD inference (ours): **{ratio:.2f}** (target ≤ 1.15).", ""]
        s1 = stage1_images_per_second(device, batch, args.size, args.repeats)
        lines += [
            f"Stage 1 (AAND): synthesis {s1['synthesis_img_s']:.1f} img/s on one host thread, RAA train step "
            f"{s1['step_img_s']:.1f} img/s; serial {s1['serial_img_s']:.1f} img/s, with synthesis overlapped "
            f"in 2 loader workers {s1['overlapped_img_s']:.1f} img/s.",
            "",
        ]
    one = torch.randn(1, 3, args.size, args.size, device=device)
    peak = attainable_flops(device)
    lines += [
        "## FLOPs and the limit (batch 1)", "", f"Attainable float32 matmul: {peak / 1e9:.1f} GFLOP/s.", "",
        "| system | inference GFLOP | train step GFLOP | inference achieved / attainable |",
        "|---|---|---|---|",
    ]  # fmt: skip
    for name, system in systems.items():
        counts = flops(system, one)
        seconds = statistics.median(timed(lambda s=system: s.infer(one), device) for _ in range(args.repeats))
        lines.append(
            f"| {name} | {counts['inference'] / 1e9:.1f} | {counts['train'] / 1e9:.1f} | "
            f"{100 * counts['inference'] / seconds / peak:.0f} % |"
        )
    lines += ["", "Top ops of one AAND inference (self CPU time):", ""]
    lines += [f"- {op}: {share:.1f} %" for op, share in top_ops(systems["ours_aand"], one)]
    images = torch.randn(args.batch_sizes[0], 3, args.size, args.size, device=device)
    lines += [
        "", f"## Fast paths (AAND inference, batch {args.batch_sizes[0]})", "",
        "| path | median s | min–max | max abs map diff vs fp32 eager |", "|---|---|---|---|",
    ]  # fmt: skip
    for name, median, low, high, diff in fast_paths(device, images, args.repeats, not args.no_compile):
        lines.append(f"| {name} | {median:.3f} | {low:.3f}–{high:.3f} | {diff:.2e} |")
    if not args.no_memory:
        lines += ["", f"## Peak memory (batch {args.batch_sizes[0]}, fresh process each)", "",
                  "| system | train step MB | inference MB |", "|---|---|---|"]  # fmt: skip
        for name in systems:
            train_mb = peak_memory(name, "train", args.batch_sizes[0], args.size, args.device)
            infer_mb = peak_memory(name, "infer", args.batch_sizes[0], args.size, args.device)
            lines.append(f"| {name} | {train_mb:.0f} | {infer_mb:.0f} |")
        lines.append("\nCPU figures are the whole process's peak RSS (Python, torch and the model included).")
    lines.append(
        f"\nPeak RSS of this whole run: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB."
    )
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"{dt.date.today()}-speed-{device.type}.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
