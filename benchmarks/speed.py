"""`make bench-speed`: aand_lightning against anomalib's Reverse Distillation, and against the hardware.

Same random images, same backbone (wide_resnet50_2, random weights: timing only), same size, same
batches, same threads, one process; the systems alternate inside every repeat, so drift in machine
load hits all of them alike. Reports median and spread (min–max) per measurement, FLOPs against the
attainable float32 matmul rate, the top ops of one inference, the fast paths (channels_last, bf16
autocast, torch.compile) with their numerical difference to float32 eager, and peak memory of each
system measured in a fresh subprocess.

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
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from aand_lightning.config import config_dir
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


@functools.cache
def _train_config() -> DictConfig:
    return OmegaConf.load(config_dir() / "train.yaml")


def configured_optimizer(stage: str, params) -> torch.optim.Optimizer:
    """The optimizer conf/train.yaml gives a stage (Adam, fused)."""
    return instantiate(_train_config()[stage].optimizer)(params)


class System:
    """A model with a training step and an inference call on normalised images."""

    def __init__(
        self, name: str, device: torch.device, size: int, channels_last: bool = False, bf16: bool = False
    ) -> None:
        self.name = name
        self.available = True
        self.channels_last, self.bf16 = channels_last, bf16
        self.device = device
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
        if name.startswith("ours"):
            self.optimizer = configured_optimizer("distill", params)
        else:  # anomalib's ReverseDistillation.configure_optimizers
            self.optimizer = torch.optim.Adam(params, lr=0.005, betas=(0.5, 0.99))
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def _autocast(self) -> torch.autocast:
        """bf16 autocast around forward and loss, as trainer.precision=bf16-mixed does."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def train_step(self, images: torch.Tensor) -> None:
        self.model.train()
        with self._autocast():
            if self.name.startswith("ours"):
                out = self.model(self._inputs(images), with_map=False)
                loss = self.loss(out.teacher.amplified, out.student)
            else:
                encoder, decoder = self.model(self._inputs(images))
                loss = self.loss(encoder, decoder)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @torch.no_grad()
    def infer(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        with self._autocast():
            out = self.model(self._inputs(images))
        if self.name.startswith("ours"):
            return out.maps, out.scores
        return out.anomaly_map, out.pred_score


def measure(
    systems: dict[str, System], images: torch.Tensor, repeats: int, kind: str, device
) -> dict[str, list[float]]:
    """Seconds per call; two warm-up rounds, then the systems alternate within every repeat."""
    call = {"train": lambda s: s.train_step(images), "infer": lambda s: s.infer(images)}[kind]
    for _ in range(2):  # the first timed round after a single warm-up still ran slow for every system
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
    optimizer = configured_optimizer("amplify", teacher.raa.parameters())
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


def attainable_flops(
    device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5
) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n**3 / best


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

    rows = []
    with tempfile.TemporaryDirectory() as root:
        source = DemoDataset(root, "brick", image_size=size)
        for mode in ("synthetic", "normal"):
            for workers in sorted({0, 2, min(8, os.cpu_count() or 1)}):
                datamodule = AnomalyDataModule(
                    source, size, batch, num_workers=workers, val_fraction=0.0,
                    synthesizer=AnomalySynthesizer(), foreground_rules={"default": {"kind": "whole"}},
                )  # fmt: skip
                datamodule.setup()
                dataset = datamodule.dataset(datamodule.splits.train, mode)
                loader = datamodule.loader(dataset, batch, train=True)
                stream = itertools.chain.from_iterable(itertools.repeat(loader))  # epoch after epoch
                next(stream)  # the first batch pays for starting the workers
                start = time.perf_counter()
                count = sum(len(b["image"]) for b in itertools.islice(stream, batches))
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--repeats", type=int, default=5)
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
        f"Median of {args.repeats} timed calls after two warm-up rounds, (min–max).",
        "",
    ]
    if "anomalib_rd" not in systems:
        lines += ["anomalib is not importable in this Python: its rows are missing.", ""]
    medians: dict[int, dict[str, dict[str, float]]] = {}  # batch → kind → system → seconds
    for batch in args.batch_sizes:
        images = torch.randn(batch, 3, args.size, args.size, device=device)
        train = measure(systems, images, args.repeats, "train", device)
        infer = measure(systems, images, args.repeats, "infer", device)
        medians[batch] = {kind: {name: statistics.median(times[name]) for name in systems}
                          for kind, times in (("train", train), ("infer", infer))}  # fmt: skip
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
        ]
        lines += [
            f"### Loader alone, batch {batch} (generated {args.size} px images read from disk, host)",
            "",
            "| stage | workers | images/s |",
            "|---|---|---|",
        ]
        lines += [f"| {st} | {w} | {ips:.1f} |" for st, w, ips in loader_throughput(batch, args.size)]
        lines += [""]
    one = torch.randn(1, 3, args.size, args.size, device=device)
    peak, n, batch = attainable_flops(device), 2048, args.batch_sizes[0]
    lines += [
        "## FLOPs and the limit", "",
        f"Attainable matmul ({n}×{n}): float32 {peak / 1e9:.1f} GFLOP/s, bfloat16 "
        f"{attainable_flops(device, torch.bfloat16) / 1e9:.1f} GFLOP/s. FLOPs counted per image "
        f"(torch FlopCounterMode: convolutions and matmuls); achieved = FLOPs × {batch} / the batch-{batch} "
        "median above.", "",
        "| system | inference GFLOP | train step GFLOP | inference achieved / attainable "
        "| training achieved / attainable |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    counts = {name: flops(system, one) for name, system in systems.items()}
    for name, count in counts.items():
        achieved = {kind: count[key] * batch / medians[batch][kind][name] / peak
                    for kind, key in (("infer", "inference"), ("train", "train"))}  # fmt: skip
        lines.append(
            f"| {name} | {count['inference'] / 1e9:.1f} | {count['train'] / 1e9:.1f} | "
            f"{100 * achieved['infer']:.0f} % | {100 * achieved['train']:.0f} % |"
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
