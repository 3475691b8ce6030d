"""Stage-2 epochs with and without the feature cache, against anomalib's RD, and the whole training.

Every system trains on the same generated images read from disk through the project's own loader
(one process, no workers: decoding and resizing count), one epoch each in turn, so load drift hits
all of them alike. Epoch 1 fills the cache; the later epochs read it. Validation is left out for
every system. Also measured: what the same idea could save in stage 1 (backbone features of the fixed
validation images, and of the images that get no synthetic anomaly in an epoch).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch
from systems import RAA, WRN50, Stage1Step, System, _train_config, alternate, sync
from torch.utils.flop_counter import FlopCounterMode

from aand_lightning.data.datamodule import AnomalyDataModule
from aand_lightning.data.demo import DemoDataset
from aand_lightning.data.preprocessing import Preprocessing
from aand_lightning.data.synthesis.synthesizer import AnomalySynthesizer
from aand_lightning.models.build import build_teacher
from aand_lightning.stages.feature_cache import FeatureCacheSettings, FeatureStore, TeacherFeatureCache

# name: (system, cached, bf16 autocast). The bf16 pair shows trainer.precision=bf16-mixed on both sides.
EPOCH_SYSTEMS = {
    "aand_cached": ("ours_aand", True, False),
    "aand_uncached": ("ours_aand", False, False),
    "rd_cached": ("ours_rd", True, False),
    "rd_w64_cached": ("ours_rd_w64", True, False),
    "anomalib_rd": ("anomalib_rd", False, False),
    "aand_cached_bf16": ("ours_aand", True, True),
    "anomalib_rd_bf16": ("anomalib_rd", False, True),
}
# What each system's epochs are compared with: the same precision on anomalib's side.
REFERENCE = {
    name: "anomalib_rd_bf16" if bf16 else "anomalib_rd" for name, (_, _, bf16) in EPOCH_SYSTEMS.items()
}
# Normal training images per category (train/good), from the datasets' own listings: the stage-2 cache
# holds these (train + the validation share held out from them).
CATEGORY_IMAGES = {
    "MVTec AD": {"largest (hazelnut)": 391, "median": 240, "smallest (toothbrush)": 60},
    "VisA": {"largest (pcb3)": 905, "median": 900, "smallest (cashew)": 450},
    "MVTec 3D-AD": {"largest (peach)": 361, "median": 265, "smallest (cookie)": 210},
}


@dataclass
class EpochResult:
    seconds: dict[str, list[float]]  # system → epoch times (epoch 1 first)
    flops_per_image: dict[str, float]
    cache_bytes: dict[str, int]
    peak_cuda_bytes: dict[str, int] = field(default_factory=dict)  # above what was resident at the start

    def first(self, name: str) -> float:
        return self.seconds[name][0]

    def later(self, name: str) -> float:
        """Mean of the epochs after the first (anomalib and uncached systems: every epoch alike)."""
        return statistics.mean(self.seconds[name][1:])


def _datamodule(source: DemoDataset, size: int, batch: int, synthetic: bool = False) -> AnomalyDataModule:
    """Loaders as training builds them: seeded shuffle, no workers (loading is timed with the steps)."""
    return AnomalyDataModule(
        source, Preprocessing(size), batch, num_workers=0, val_fraction=0.0, drop_last=False,
        synthesizer=AnomalySynthesizer() if synthetic else None,
        foreground_rules={"default": {"kind": "whole"}},
    )  # fmt: skip


def _epoch(system: System, loader, epoch: int, device: torch.device) -> float:
    loader.sampler.set_epoch(epoch)
    sync(device)
    start = time.perf_counter()
    for batch in loader:
        system.train_step(batch.image.to(device), batch.sample_id.tolist())
    sync(device)
    return time.perf_counter() - start


def _step_flops(system: System, images: torch.Tensor, ids: list[int]) -> float:
    """FLOPs of one training step on `images`, the items `ids` (for a cached system: every one stored)."""
    counter = FlopCounterMode(display=False)
    with counter:
        system.train_step(images, ids)
    return counter.get_total_flops() / len(images)


def stage2_epochs(
    device: torch.device, source: DemoDataset, count: int, batch: int, epochs: int, warmup: int = 2
) -> EpochResult:
    """`epochs` epochs of every system over the first `count` training images of `source`."""
    size = source.image_size
    datamodule = _datamodule(source, size, batch)
    samples = source.splits().train[:count]
    systems, loaders = {}, {}
    for name, (system_name, cached, bf16) in EPOCH_SYSTEMS.items():
        # each cache has its own flags (sample ids 0..count-1), shared with its own loader's dataset
        skip_image = torch.zeros(len(samples), dtype=torch.bool) if cached else None
        cache = TeacherFeatureCache(FeatureCacheSettings(), skip_image) if cached else None
        system = System(system_name, device, size, bf16=bf16, cache=cache)
        if not system.available:
            continue
        systems[name] = system
        dataset = datamodule.dataset(samples, "normal", skip_image=skip_image)
        loaders[name] = datamodule.loader(dataset, batch, train=True)
    warm = torch.randn(batch, 3, size, size, device=device)
    for _ in range(warmup):  # first calls pay for kernel selection; no sample ids: the caches stay empty
        for system in systems.values():
            system.train_step(warm)
    seconds: dict[str, list[float]] = {name: [] for name in systems}
    peaks: dict[str, int] = {}
    for epoch in range(epochs):
        for name, system in systems.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                resident = torch.cuda.memory_allocated(device)  # every system's model and cache
            seconds[name].append(_epoch(system, loaders[name], epoch, device))
            print(f"batch {batch}, {name}, epoch {epoch + 1}: {seconds[name][-1]:.1f} s", file=sys.stderr)
            if device.type == "cuda":
                working = torch.cuda.max_memory_allocated(device) - resident
                peaks[name] = max(peaks.get(name, 0), working)
    one = next(iter(loaders["aand_cached"]))
    images, ids = one.image[:1].to(device), one.sample_id[:1].tolist()
    flops = {name: _step_flops(s, images, ids) for name, s in systems.items()}
    cache_bytes = {
        name: s.cache.store.nbytes() if s.cache.store is not None else 0
        for name, s in systems.items()
        if s.cache is not None
    }
    return EpochResult(seconds, flops, cache_bytes, peaks)


@dataclass
class Stage1:
    epoch_seconds: float  # one training epoch: synthesis (in the loader) + RAA steps
    backbone_seconds: float  # per image: frozen backbone forward
    validation_seconds: float  # per image: backbone + RAA forward (what stage-1 validation runs)
    step_seconds: float  # per image: the training step alone


def stage1(device: torch.device, source: DemoDataset, count: int, batch: int, repeats: int) -> Stage1:
    """One stage-1 training epoch on the same images, and its parts per image (alternating)."""
    datamodule = _datamodule(source, source.image_size, batch, synthetic=True)
    samples = source.splits().train[:count]
    loader = datamodule.loader(datamodule.dataset(samples, "synthetic"), batch, train=True)
    step = Stage1Step(device)
    teacher = step.teacher

    first = next(iter(loader))
    images, mask, foreground = first.image.to(device), first.mask.to(device), first.foreground.to(device)
    parts = {
        "backbone": lambda: torch.no_grad()(teacher.encoder)(images),
        "validation": lambda: torch.no_grad()(teacher)(images),
        "step": lambda: step(images, mask, foreground),
    }
    times = alternate(parts, repeats, device)
    loader.sampler.set_epoch(1)
    sync(device)
    start = time.perf_counter()
    for batch in loader:
        step(batch.image.to(device), batch.mask.to(device), batch.foreground.to(device))
    sync(device)
    per_image = {name: statistics.median(t) / len(images) for name, t in times.items()}
    return Stage1(
        time.perf_counter() - start, per_image["backbone"], per_image["validation"], per_image["step"]
    )


def whole_training(
    result: EpochResult, s1: Stage1, stage1_epochs: int, stage2_epochs: int
) -> dict[str, float]:
    """Seconds of both AAND stages (cached and uncached stage 2) and of anomalib's RD for the same
    number of stage-2 epochs, extrapolated from the measured epochs (validation left out)."""
    stage1_total = stage1_epochs * s1.epoch_seconds

    def stage2(name: str) -> float:  # the same formula for every system: epoch 1, then the later ones
        return result.first(name) + (stage2_epochs - 1) * result.later(name)

    totals = {"stage1": stage1_total}
    for name in ("aand_cached", "aand_uncached", "aand_cached_bf16"):
        if name in result.seconds:
            totals[name] = stage1_total + stage2(name)
    for name in ("anomalib_rd", "anomalib_rd_bf16"):
        if name in result.seconds:
            totals[name] = stage2(name)
    return totals


def stage1_cache_potential(s1: Stage1, images: int, val_fraction: float, clean_probability: float) -> dict:
    """The most a stage-1 backbone cache could save, as shares of a stage-1 epoch (training + validation).

    Validation: the backbone forward of every validation image. Training: that of the images drawn
    clean (no synthetic anomaly) in an epoch, assuming each was already stored from an earlier epoch.
    """
    val_images = val_fraction * images
    epoch = s1.epoch_seconds + val_images * s1.validation_seconds
    return {
        "validation_share": val_images * s1.backbone_seconds / epoch,
        "clean_train_share": clean_probability * images * s1.backbone_seconds / epoch,
    }


def cache_size_table(item_bytes: int) -> list[str]:
    """GB the stage-2 cache takes per category, from image counts and the float32 bytes per image."""
    lines = ["| dataset | category | images | float32 GB | bf16/fp16 GB |", "|---|---|---|---|---|"]
    for dataset, categories in CATEGORY_IMAGES.items():
        for which, count in categories.items():
            full, half = count * item_bytes / 1e9, count * item_bytes / 2e9
            lines.append(f"| {dataset} | {which} | {count} | {full:.2f} | {half:.2f} |")
    return lines


def item_bytes(device: torch.device, size: int) -> int:
    """float32 bytes of one image's cached AAND teacher output (amplified levels + gates)."""
    teacher = build_teacher(WRN50, RAA).to(device).eval()
    with torch.no_grad():
        out = teacher(torch.zeros(1, 3, size, size, device=device))
    return FeatureStore.item_bytes(out, torch.float32)


def epochs_section(args, device: torch.device, peak, headline: list[str], report: dict) -> list[str]:
    """Markdown for every batch size (and the JSON fields): stage-2 epochs, whole training, stage 1."""
    config = _train_config()
    plan = Schedule(config.amplify.epochs, config.distill.epochs, AnomalySynthesizer().clean_probability)
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as root:
        source = DemoDataset(root, "brick", image_size=args.size)
        for batch in args.batch_sizes:
            result = stage2_epochs(device, source, args.epoch_images, batch, args.epochs)
            s1 = stage1(device, source, args.epoch_images, batch, args.repeats)
            lines += _epoch_lines(result, s1, batch, args, peak, headline, report, plan)
    item = item_bytes(device, args.size)
    lines += [
        f"## Memory of the stage-2 feature cache ({args.size} px, wide_resnet50_2, AAND)", "",
        f"Per image {item / 1e6:.2f} MB in float32 (amplified levels and gates, measured). Per process "
        "(each DDP rank holds its own), train + validation images of one category:", "",
        *cache_size_table(item), "",
    ]  # fmt: skip
    report["cache_item_mb"] = item / 1e6
    report["cache_gb_by_category"] = {
        f"{dataset} {which}": count * item / 1e9
        for dataset, categories in CATEGORY_IMAGES.items()
        for which, count in categories.items()
    }
    return lines


@dataclass
class Schedule:
    """The paper schedule from conf/train.yaml, and the stage-1 shares a backbone cache could serve."""

    stage1_epochs: int
    stage2_epochs: int
    clean_probability: float
    val_fraction: float = 0.1  # protocol=clean's held-out share


def _epoch_lines(
    result: EpochResult, s1: Stage1, batch: int, args, peak, headline: list[str], report: dict, plan: Schedule
) -> list[str]:
    stage1_epochs, stage2_epochs_count = plan.stage1_epochs, plan.stage2_epochs
    clean, val_fraction = plan.clean_probability, plan.val_fraction
    names = list(result.seconds)
    anomalib = "anomalib_rd" in result.seconds
    lines = [
        f"## Stage-2 epochs, batch {batch}", "",
        f"{args.epoch_images} generated {args.size} px images read from disk by the project's loader (no "
        f"workers), {args.epochs} epochs per system, the systems taking turns epoch by epoch; validation "
        "left out. Epoch 1 fills the caches; 'later' is the mean of the epochs after it. Ratios compare like "
        "with like: epoch 1 with anomalib RD's epoch 1, later with its later epochs, bf16 with its bf16. "
        "The limit is a float32 one, so bf16 rows give no share of it.", "",
        "| system | epoch 1 s | later epochs s | epoch 1 / anomalib | later / anomalib | train GFLOP/img "
        "| later achieved / limit |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    by_batch: dict = {"epoch_seconds": result.seconds, "train_gflop_per_image": {}}
    for name in names:
        first, later = result.first(name), result.later(name)
        gflop = result.flops_per_image[name] / 1e9
        achieved = result.flops_per_image[name] * args.epoch_images / later
        ref = REFERENCE[name]
        ratios = ["–", "–"]
        if anomalib:
            ratios = [f"{first / result.first(ref):.2f}", f"{later / result.later(ref):.2f}"]
        share = "– (bf16)" if EPOCH_SYSTEMS[name][2] else peak.share(achieved)
        lines.append(f"| {name} | {first:.1f} | {later:.1f} | {ratios[0]} | {ratios[1]} | {gflop:.1f} | "
                     f"{share} |")  # fmt: skip
        by_batch["train_gflop_per_image"][name] = gflop
    if result.peak_cuda_bytes:
        working = ", ".join(f"{n} {b / 1e9:.2f} GB" for n, b in result.peak_cuda_bytes.items())
        lines.append(f"\nCUDA peak during an epoch, above what was allocated at its start: {working}.")
    if result.cache_bytes:
        stored = ", ".join(f"{n} {b / 1e9:.3f} GB" for n, b in result.cache_bytes.items())
        lines.append(f"\nFeature caches of these {args.epoch_images} images: {stored}.")
    totals = whole_training(result, s1, stage1_epochs, stage2_epochs_count)
    potential = stage1_cache_potential(s1, args.epoch_images, val_fraction, clean)
    by_batch.update(
        whole_training_seconds=totals, stage1=vars(s1), stage1_cache_potential=potential,
        cache_bytes=result.cache_bytes, peak_cuda_bytes=result.peak_cuda_bytes,
    )  # fmt: skip
    if anomalib:
        ratio = {name: result.later(name) / result.later(REFERENCE[name]) for name in names}
        total_ratio = totals["aand_cached"] / totals["anomalib_rd"]
        uncached_total = totals["aand_uncached"] / totals["anomalib_rd"]
        bf16_total = totals["aand_cached_bf16"] / totals["anomalib_rd_bf16"]
        by_batch["later_epoch_ratio_over_anomalib_rd"] = ratio
        by_batch["aand_total_train_ratio_over_anomalib_rd"] = total_ratio
        headline += [
            f"- Batch {batch}, stage-2 epoch (after the first) / anomalib RD's: AAND cached "
            f"**{ratio['aand_cached']:.2f}** (target ≤ 0.70), RD mode cached **{ratio['rd_cached']:.2f}** "
            f"(RD's 128-wide bottleneck; target ≤ 0.70), RD mode cached with anomalib's 64-wide bottleneck "
            f"**{ratio['rd_w64_cached']:.2f}**, AAND uncached {ratio['aand_uncached']:.2f}; both in bf16 "
            f"autocast, AAND cached **{ratio['aand_cached_bf16']:.2f}**. Float32 FLOPs per training image: "
            f"AAND cached {result.flops_per_image['aand_cached'] / 1e9:.1f} G, anomalib RD "
            f"{result.flops_per_image['anomalib_rd'] / 1e9:.1f} G.",
            f"- Batch {batch}, whole AAND training ({stage1_epochs} stage-1 + {stage2_epochs_count} stage-2 "
            f"epochs) / anomalib RD's {stage2_epochs_count} epochs: **{total_ratio:.2f}** with the cache, "
            f"{uncached_total:.2f} without; both in bf16 autocast {bf16_total:.2f}.",
        ]
        lines += [
            "",
            f"Whole training, extrapolated from these epochs ({args.epoch_images} images, validation left "
            "out): "
            f"AAND = {stage1_epochs} stage-1 epochs × {s1.epoch_seconds:.1f} s + stage 2 (epoch 1, then "
            f"{stage2_epochs_count - 1} later epochs) = {totals['aand_cached']:.0f} s with the cache, "
            f"{totals['aand_uncached']:.0f} s without; anomalib RD {stage2_epochs_count} epochs = "
            f"{totals['anomalib_rd']:.0f} s (epoch 1, then the later ones). Ratio **{total_ratio:.2f}** "
            f"(uncached "
            f"{uncached_total:.2f}; bf16 autocast on both sides {bf16_total:.2f}, stage 1 in float32).",
        ]
    lines += [
        "",
        f"Stage 1, per image: frozen backbone forward {s1.backbone_seconds:.3f} s, backbone + RAA forward "
        f"(validation) {s1.validation_seconds:.3f} s, training step {s1.step_seconds:.3f} s. The most a "
        f"backbone cache could save of a stage-1 epoch (training + {val_fraction:g} validation share): "
        f"{100 * potential['validation_share']:.1f} % on validation images, "
        f"{100 * potential['clean_train_share']:.1f} % on the {clean:g} share of training images drawn "
        "clean.",
        "",
    ]
    report.setdefault("by_batch", {})[str(batch)] = by_batch
    if batch == args.batch_sizes[0] and anomalib:
        report["batch"] = batch
        report["stage2_epoch_ratio_aand_cached_over_anomalib_rd"] = ratio["aand_cached"]
        report["stage2_epoch_ratio_aand_uncached_over_anomalib_rd"] = ratio["aand_uncached"]
        report["stage2_epoch_ratio_rd_cached_over_anomalib_rd"] = ratio["rd_cached"]
        report["stage2_epoch_ratio_rd_w64_cached_over_anomalib_rd"] = ratio["rd_w64_cached"]
        report["stage2_epoch_ratio_aand_cached_bf16_over_anomalib_rd_bf16"] = ratio["aand_cached_bf16"]
        report["flops_ratio_aand_cached_over_anomalib_rd"] = (
            result.flops_per_image["aand_cached"] / result.flops_per_image["anomalib_rd"]
        )
        report["aand_total_train_ratio_over_anomalib_rd"] = total_ratio
    report["cache_peak_memory_gb"] = max(
        report.get("cache_peak_memory_gb", 0.0), max(result.cache_bytes.values(), default=0) / 1e9
    )
    return lines
