"""`make bench-speed`: aand_lightning against anomalib's Reverse Distillation, and against the hardware.

Same images, same backbone (wide_resnet50_2, random weights: timing only), same size, same batches,
same threads, one process; the systems take turns inside every repeat (or epoch), so drift in machine
load hits all of them alike. The Markdown leads with the ratios measured in the run; a JSON file
beside it holds the numbers. Sections (`--sections`, default all):

- epochs (benchmarks/epochs.py): whole stage-2 epochs read from disk, AAND and RD mode with the
  feature cache, AAND without it, anomalib's RD; epoch 1 and the later ones; the whole AAND training
  (both stages, paper schedule) extrapolated against anomalib's; what a stage-1 cache could save; the
  cache's memory per dataset category.
- steps: one training step and one inference call of each system (median, min–max), the fast paths
  (channels_last, bf16 autocast, torch.compile) with their numerical difference to float32 eager,
  smoothing, the loaders, FLOPs against the limit, the top ops of one inference.
- memory: peak memory of each system's step, each in a fresh subprocess.
- inference (benchmarks/inference.py): exported models, ours (RD mode and AAND, by
  `aand_lightning.export`) against anomalib's RD exported by anomalib, in onnxruntime and OpenVINO.
- aupro (benchmarks/inference.py): our AUPRO against anomalib's on 100 maps, values and time.
- vit: the authors' ViT variant (CLIP ViT-B/16 teacher, ViT decoder student) against the WRN50 path,
  alternating: stage-1 and stage-2 training steps and inference, as ViT / WRN50 ratios.

The limit (benchmarks/peak.py) is always measured: the best float32 rate over several matmul sizes
and convolution shapes, and on a CPU the theoretical peak lscpu gives.

anomalib is optional: run with a Python that has it (`benchmarks/anomalib_env.sh` builds one next
to ours); without it its rows say so.

  python benchmarks/speed.py --device cpu --batch-sizes 8 16 --repeats 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import importlib.metadata as md
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from epochs import epochs_section
from inference import aupro_section, inference_section
from peak import Peak, describe, machine_peak
from systems import (
    ROOT,
    SYSTEMS,
    Stage1Step,
    System,
    alternate,
    measure,
    timed,
)
from torch.utils.flop_counter import FlopCounterMode

from aand_lightning.data.synthesis.synthesizer import AnomalySynthesizer


def stage1_images_per_second(device: torch.device, batch: int, size: int, repeats: int) -> dict[str, float]:
    """Stage 1 = synthesis (host, per image) + RAA training step (forced gates) on the batch."""
    rng = np.random.default_rng(0)
    pictures = rng.random((batch, size, size, 3), dtype=np.float32)
    foreground = np.ones((size, size), bool)
    synthesizer = AnomalySynthesizer()
    synth = [
        timed(lambda: [synthesizer(p, foreground, rng) for p in pictures], torch.device("cpu"))
        for _ in range(repeats)
    ]
    images = torch.randn(batch, 3, size, size, device=device)
    mask = torch.zeros(batch, 1, size, size, device=device)
    mask[:, :, size // 4 : size // 2, size // 4 : size // 2] = 1
    stage1_step = Stage1Step(device)

    def step() -> None:
        stage1_step(images, mask)

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


def top_ops(system: System, images: torch.Tensor, k: int = 8) -> list[tuple[str, float]]:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if images.is_cuda else [])
    with profile(activities=activities) as prof:
        system.infer(images)

    def own_time(event) -> float:  # where the work runs: device kernels on an accelerator
        return event.self_device_time_total if images.is_cuda else event.self_cpu_time_total

    events = sorted(prof.key_averages(), key=own_time, reverse=True)[:k]
    total = sum(own_time(e) for e in prof.key_averages())
    return [(e.key, 100 * own_time(e) / total) for e in events]


FAST_PATHS = {  # name: (channels_last, bf16 autocast)
    "fp32 eager": (False, False),
    "channels_last": (True, False),
    "bf16 autocast": (False, True),
    "bf16 + channels_last": (True, True),
}


def fast_paths(device: torch.device, images: torch.Tensor, repeats: int, compile_too: bool) -> list[tuple]:
    """Full AAND (stage-2 training step, inference) on each fast path, the paths alternating.

    Rows: (name, train times or None, inference times, max |map − fp32 eager map|).
    """
    size = images.shape[-1]
    trainable = {name: System("ours_aand", device, size, *flags) for name, flags in FAST_PATHS.items()}
    inferable = dict(trainable)
    if compile_too:
        compiled = System("ours_aand", device, size)
        compiled.model.teacher.compile()
        compiled.model.student.compile()
        inferable["torch.compile (inference)"] = compiled
    for system in inferable.values():  # identical weights: the map differences are numerics only
        system.model.load_state_dict(trainable["fp32 eager"].model.state_dict())
    maps = {name: system.infer(images)[0] for name, system in inferable.items()}  # before any training
    train = measure(trainable, images, repeats, "train", device)
    infer = measure(inferable, images, repeats, "infer", device)
    reference = maps["fp32 eager"]
    return [
        (name, train.get(name), infer[name], (maps[name].float() - reference).abs().max().item())
        for name in inferable
    ]


def smoothing_seconds(device: torch.device, batch: int, size: int, repeats: int) -> dict[str, float]:
    """Gaussian σ=4 smoothing of a batch of maps: our separable conv on the device vs scipy on the host
    (including the copy there and back, as a host-side implementation needs)."""
    from scipy.ndimage import gaussian_filter

    from aand_lightning.models.anomaly_map import gaussian_blur, gaussian_kernel1d

    maps = torch.rand(batch, 1, size, size, device=device)
    kernel = gaussian_kernel1d(4.0).to(device)

    def host() -> torch.Tensor:
        smoothed = [gaussian_filter(m, sigma=4.0) for m in maps[:, 0].cpu().numpy()]
        return torch.from_numpy(np.stack(smoothed))[:, None].to(device)

    ours, theirs = gaussian_blur(maps, kernel), host()
    times = {"device": [], "host": []}
    for _ in range(repeats):
        times["device"].append(timed(lambda: gaussian_blur(maps, kernel), device))
        times["host"].append(timed(host, device))
    result = {name: statistics.median(values) for name, values in times.items()}
    result["max_abs_diff"] = (ours - theirs).abs().max().item()
    return result


def loader_throughput(batch: int, size: int, batches: int = 10) -> list[tuple[str, int, float]]:
    """Images/s of the real train loaders alone (files → decoded, resized, normalised batches).

    Uses the generated demo data written at `size` px; stage 1 includes the anomaly synthesis.
    Rows: (stage, num_workers, images/s).
    """
    import tempfile

    from aand_lightning.data.datamodule import AnomalyDataModule
    from aand_lightning.data.demo import DemoDataset
    from aand_lightning.data.preprocessing import Preprocessing

    rows = []
    with tempfile.TemporaryDirectory() as root:
        source = DemoDataset(root, "brick", image_size=size)
        for mode in ("synthetic", "normal"):
            for workers in sorted({0, 2, min(8, os.cpu_count() or 1)}):
                datamodule = AnomalyDataModule(
                    source, Preprocessing(size), batch, num_workers=workers, val_fraction=0.0,
                    synthesizer=AnomalySynthesizer(), foreground_rules={"default": {"kind": "whole"}},
                )  # fmt: skip
                datamodule.setup()
                dataset = datamodule.dataset(datamodule.splits.train, mode)
                loader = datamodule.loader(dataset, batch, train=True)
                stream = itertools.chain.from_iterable(itertools.repeat(loader))  # epoch after epoch
                next(stream)  # the first batch pays for starting the workers
                start = time.perf_counter()
                count = sum(len(b) for b in itertools.islice(stream, batches))
                stage = "stage 1 (synthesis)" if mode == "synthetic" else "stage 2 (normal images)"
                rows.append((stage, workers, count / (time.perf_counter() - start)))
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


SECTIONS = ("epochs", "steps", "memory", "inference", "aupro", "vit")


def steps_section(args, device: torch.device, peak: Peak, headline: list[str]) -> list[str]:
    """Per batch: one training step and one inference call of each system, the fast paths, smoothing,
    the loaders; then FLOPs against the limit and the top ops."""
    systems = {name: System(name, device, args.size) for name in SYSTEMS}
    systems = {n: s for n, s in systems.items() if s.available}
    lines: list[str] = []
    medians: dict[int, dict[str, dict[str, float]]] = {}  # batch → kind → system → seconds
    for batch in args.batch_sizes:
        images = torch.randn(batch, 3, args.size, args.size, device=device)
        train = measure(systems, images, args.repeats, "train", device)
        infer = measure(systems, images, args.repeats, "infer", device)
        medians[batch] = {kind: {name: statistics.median(times[name]) for name in systems}
                          for kind, times in (("train", train), ("infer", infer))}  # fmt: skip
        lines += [
            f"## One step, batch {batch}",
            "",
            f"Median of {args.repeats} timed calls after two warm-up rounds, (min–max).",
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
            headline.append(
                f"- Batch {batch}, one uncached training step: ours RD / anomalib RD **{ratio:.2f}**."
            )
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
            f"### Fast paths, full AAND, batch {batch}",
            "",
            "| path | stage-2 train img/s | inference img/s | max abs map diff vs fp32 eager |",
            "|---|---|---|---|",
        ]
        for name, train_s, infer_s, diff in fast_paths(device, images, args.repeats, not args.no_compile):
            train_ips = f"{batch / statistics.median(train_s):.2f}" if train_s else "–"
            lines.append(f"| {name} | {train_ips} | {batch / statistics.median(infer_s):.2f} | {diff:.2e} |")
        smooth = smoothing_seconds(device, batch, args.size, max(args.repeats, 5))
        lines += [
            "",
            f"Gaussian smoothing (σ=4) of {batch} maps: separable conv on the {device.type} "
            f"{1000 * smooth['device']:.1f} ms, scipy.ndimage on the host (copies included) "
            f"{1000 * smooth['host']:.1f} ms; max abs difference {smooth['max_abs_diff']:.1e}.",
            "",
            f"### Loader alone, batch {batch} (generated {args.size} px images read from disk, host)",
            "",
            "| stage | workers | images/s |",
            "|---|---|---|",
        ]
        lines += [f"| {st} | {w} | {ips:.1f} |" for st, w, ips in loader_throughput(batch, args.size)]
        lines += [""]
    one = torch.randn(1, 3, args.size, args.size, device=device)
    batch = args.batch_sizes[0]
    lines += [
        "## FLOPs of one step against the limit", "",
        "FLOPs counted per image (torch FlopCounterMode: convolutions and matmuls, direct-convolution "
        f"counts); achieved = FLOPs × {batch} / the batch-{batch} median above, as a share of the "
        "measured limit.", "",
        "| system | inference GFLOP | train step GFLOP | inference achieved / limit "
        "| training achieved / limit |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    counts = {name: flops(system, one) for name, system in systems.items()}
    for name, count in counts.items():
        achieved = {kind: count[key] * batch / medians[batch][kind][name]
                    for kind, key in (("infer", "inference"), ("train", "train"))}  # fmt: skip
        lines.append(
            f"| {name} | {count['inference'] / 1e9:.1f} | {count['train'] / 1e9:.1f} | "
            f"{peak.share(achieved['infer'])} | {peak.share(achieved['train'])} |"
        )
    floor = counts["ours_aand"]["inference"] / counts["ours_rd"]["inference"]
    lines.append(
        f"\nAAND / RD inference FLOPs (ours): {floor:.2f}, the floor of the time ratio when RAA runs at "
        "the same rate as the rest (target ≤ 1.15)."
    )
    where = "device kernel time" if device.type == "cuda" else "self CPU time"
    lines += ["", f"Top ops of one AAND inference, batch {batch} ({where}):", ""]
    images = torch.randn(batch, 3, args.size, args.size, device=device)
    lines += [f"- {op}: {share:.1f} %" for op, share in top_ops(systems["ours_aand"], images)]
    return [*lines, ""]


def vit_section(args, device: torch.device, headline: list[str], report: dict) -> list[str]:
    """The ViT variant's training steps and inference next to the WRN50 path's, alternating in one run."""
    systems = {name: System(name, device, args.size) for name in ("ours_aand", "ours_aand_vit")}
    stage1 = {"ours_aand": Stage1Step(device), "ours_aand_vit": Stage1Step(device, vit=True)}
    lines = [
        "## The authors' ViT variant against the WRN50 path",
        "",
        "CLIP ViT-B/16 teacher (taps 4/8/12) + ViT decoder student against WideResNet50-2 + RD's student, "
        f"both AAND, random weights, {args.size} px; median of {args.repeats} alternating calls (min–max). "
        "Stage 1: the ViT on its predicted gates, WRN50 on forced gates (each recipe's).",
        "",
        "| batch | system | stage-1 train img/s | stage-2 train img/s | inference img/s |",
        "|---|---|---|---|---|",
    ]
    report["vit"] = {}
    for batch in args.batch_sizes:
        images = torch.randn(batch, 3, args.size, args.size, device=device)
        mask = (torch.rand(batch, 1, args.size, args.size, device=device) > 0.9).float()
        calls = {n: functools.partial(step, images, mask) for n, step in stage1.items()}
        s1 = alternate(calls, args.repeats, device)
        train = measure(systems, images, args.repeats, "train", device)
        infer = measure(systems, images, args.repeats, "infer", device)
        rates = {name: {kind: batch / statistics.median(times[name])
                        for kind, times in (("stage1", s1), ("stage2", train), ("infer", infer))}
                 for name in systems}  # fmt: skip
        for name in systems:
            r = rates[name]
            lines.append(f"| {batch} | {name} | {r['stage1']:.2f} ({_stat(s1[name])}) | {r['stage2']:.2f} "
                         f"({_stat(train[name])}) | {r['infer']:.2f} ({_stat(infer[name])}) |")  # fmt: skip
        ratio = {k: rates["ours_aand_vit"][k] / rates["ours_aand"][k] for k in ("stage1", "stage2", "infer")}
        report["vit"][batch] = {"img_per_s": rates, "vit_over_wrn50": ratio}
        headline.append(
            f"- Batch {batch}, ViT variant / WRN50 path, images per second: stage-1 step "
            f"**{ratio['stage1']:.2f}**, stage-2 step **{ratio['stage2']:.2f}**, "
            f"inference **{ratio['infer']:.2f}**."
        )
    return [*lines, "", "Ratios > 1: the ViT variant is faster.", ""]


def memory_section(args, names: list[str]) -> list[str]:
    lines = [f"## Peak memory of one step (batch {args.batch_sizes[0]}, fresh process each)", "",
             "| system | train step MB | inference MB |", "|---|---|---|"]  # fmt: skip
    for name in names:
        train_mb = peak_memory(name, "train", args.batch_sizes[0], args.size, args.device)
        infer_mb = peak_memory(name, "infer", args.batch_sizes[0], args.size, args.device)
        lines.append(f"| {name} | {train_mb:.0f} | {infer_mb:.0f} |")
    lines.append("\nCPU figures are the whole process's peak RSS (Python, torch and the model included).")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="what to measure (default: all); the limit is always measured")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=3, help="stage-2 epochs per system (first + later)")
    parser.add_argument("--epoch-images", type=int, default=32, help="images per stage-2 epoch (≤ 40)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile fast path")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", help="file name stem (default <date>-speed-<device>)")
    parser.add_argument("--probe", nargs=2, metavar=("SYSTEM", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.probe:
        probe(*args.probe, device, args.batch_sizes[0], args.size)
        return
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    load = os.getloadavg()[0]
    header = [
        f"# Speed benchmark {dt.date.today()} (`benchmarks/speed.py`)",
        "",
        f"Device {device} ({hardware}), threads {args.threads}, {args.size} px, wide_resnet50_2 with random "
        f"weights; load average at start {load:.2f}. Versions: torch {torch.__version__}, "
        f"aand-lightning {_version('aand-lightning')}, anomalib {_version('anomalib')}. "
        f"Sections: {', '.join(args.sections)}.",
        "",
    ]
    if not System("anomalib_rd", device, args.size).available:
        header += ["anomalib is not importable in this Python: its rows are missing.", ""]
    peak = machine_peak(device, args.threads)
    headline: list[str] = []
    report: dict = {"device": str(device), "hardware": hardware, "threads": args.threads, "size": args.size,
                    "load_average_at_start": load, "limit_gflops": peak.measured / 1e9,
                    "theoretical_gflops": peak.theoretical and peak.theoretical / 1e9}  # fmt: skip
    body = ["## The limit", "", *describe(peak), ""]
    if "epochs" in args.sections:
        body += epochs_section(args, device, peak, headline, report)
    if "steps" in args.sections:
        body += steps_section(args, device, peak, headline)
    if "memory" in args.sections:
        body += memory_section(args, [n for n in SYSTEMS if System(n, device, args.size).available])
    if "inference" in args.sections:
        body += inference_section(args, headline, report)
    if "aupro" in args.sections:
        body += aupro_section(args, headline, report)
    if "vit" in args.sections:
        body += vit_section(args, device, headline, report)
    body.append(
        f"Peak RSS of this whole run: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB."
    )
    lines = [*header, "## Headline: ratios measured in this run", "", *headline, "", *body]
    args.output.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"{dt.date.today()}-speed-{device.type}"
    (args.output / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (args.output / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(lines))
    print(f"written to {args.output / stem}.md and .json")


if __name__ == "__main__":
    main()
