"""`make bench-rehearsal`: a full-size rehearsal of `make benchmark PROTOCOL=paper` without the data.

No real dataset and no GPU may reach the machines this project is built on, so the paper protocol has
only run on tiny archives. This script generates one category of the size of MVTec AD's largest
(hazelnut: 391 train images, 40 good + 70 anomalous test images with masks, 1024x1024 PNG) and of
VisA's largest (pcb3: 905 normal train images, 101 normal + 100 anomalous test images, ~1500x1000 JPG,
masks as label ids, `split_csv/1cls.csv`), at their native sizes (decoding and resizing cost what they
cost on the real files), from the demo generator's pieces (data/demo.py: tinted photo crops, defects
with exact masks). Then it runs the real entry point, in a subprocess, with the paper recipe:

  python -m aand_lightning.train experiment=paper_mvtec|paper_visa trainer=cpu backbone.weights=none \
      synthesis.textures=procedural amplify.epochs=1 distill.epochs=2|1 amplifier_cache=null ...

i.e. WRN50, 256 px, batch 16, the stage-2 feature cache on (float32, budget: the default), the clean
protocol (the paper recipes' default: validation on a held-out tenth of train/good every epoch, so one
epoch is a complete protocol step; protocol=authors evaluates on test every 5 epochs and its config
check refuses fewer epochs). Only three things differ from the recipe, and none changes the compute:
random teacher weights (no network for ImageNet's), procedural textures (DTD is not reachable
offline) and the CPU trainer. MVTec runs two stage-2 epochs by default, so that one cached epoch
(the protocol's 119 later ones) is measured; VisA's cached epoch is taken per training image from it.

Measured per run: the memory of the process tree (from /proc every 0.5 s: RSS summed over the trainer
and its DataLoader workers and the trainer's own RSS; every 2 s PSS, which counts pages the workers
share with the trainer once: the real footprint), the CPU seconds of the tree and of the whole machine
(so that a run on a loaded machine still gives a quiet machine's time: CPU-s / cores), the seconds of
every epoch (training, validation, the checkpoint after it) and test pass of each stage (a Lightning
callback of this module, `StageClock`, added with `+callbacks.rehearsal_clock`), the feature cache's
size and when its decision was taken (the callback reads the cache before and after the first
stage-2 batch; the stage's log line says the same). From these the whole protocol (100 stage-1 + 120
stage-2 epochs) is extrapolated (`extrapolate`). One GPU's time is estimated (`gpu_estimate`) from
FLOP counts (torch's FlopCounterMode, as `make bench-speed`), the loader's CPU cost per item measured
here, and the checkpoint writes measured here: an estimate, not a measurement.

  python benchmarks/rehearsal.py                  # both datasets, full epochs, temp dir deleted after
  python benchmarks/rehearsal.py --datasets visa --limit-train-batches 10 --root /tmp/r --keep-data \
      --json /tmp/r/visa.json                     # capped steps: the training part scaled per image
  python benchmarks/rehearsal.py --render /tmp/r/mvtec.json /tmp/r/visa.json   # re-analyse, the table
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
PAPER_EPOCHS = {"amplify": 100, "distill": 120}


# --------------------------------------------------------------------------------------------------
# The data: one category of each dataset at its native size
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CategorySpec:
    dataset: str
    experiment: str
    category: str
    train: int
    test_good: int
    defects: dict[str, int]  # test defect → count
    width: int
    height: int
    image_suffix: str  # ".png" (MVTec AD) or ".JPG" (VisA)
    texture: str  # the demo photo the images are cropped from
    note: str

    @property
    def test_anomalous(self) -> int:
        return sum(self.defects.values())


SPECS = {
    "mvtec": CategorySpec(
        "mvtec",
        "paper_mvtec",
        "hazelnut",
        train=391,
        test_good=40,
        defects={"crack": 18, "cut": 17, "hole": 18, "print": 17},
        width=1024,
        height=1024,
        image_suffix=".png",
        texture="brick",
        note="MVTec AD's largest category by train count (hazelnut): 391 train, 40 good + 70 defective "
        "test images in 4 defect types, 1024x1024 RGB PNG, masks 0/255 PNG",
    ),
    "visa": CategorySpec(
        "visa",
        "paper_visa",
        "pcb3",
        train=905,
        test_good=101,
        defects={"anomaly": 100},
        width=1500,
        height=1000,
        image_suffix=".JPG",
        texture="gravel",
        note="VisA's largest category by train count (pcb3, split_csv/1cls.csv): 905 normal train, "
        "101 normal + 100 anomalous test images; VisA's photos are about 1.3k-1.56k x 1k px JPG, "
        "generated here at 1500x1000 (the upper end: decode and resize cost at least what they cost); "
        "masks are label ids (1), as VisA's",
    ),
}
# demo defect drawn for each MVTec defect name (VisA's anomalies draw all three in turn)
DEFECT_KIND = {"crack": "scratch", "cut": "scratch", "hole": "patch", "print": "stain"}
NOISE_SIGMA = 4.0  # sensor-like noise, so files compress like photos (a smooth upscaled crop would not)


def _job_rng(seed: int, *parts: str | int):
    import numpy as np

    return np.random.default_rng([seed, *(zlib.crc32(str(p).encode()) for p in parts)])


def _picture(spec: CategorySpec, rng, part: str):
    """A normal picture of the category's size: a demo crop of the texture photo, plus mild noise."""
    import numpy as np

    from aand_lightning.data.demo import _texture, normal_view

    texture = _texture(spec.texture)
    split_row = int(texture.shape[0] * 0.6)  # the demo's split: train crops from the top, test below
    source = texture[:split_row] if part == "train" else texture[split_row:]
    side = max(spec.width, spec.height)
    view = normal_view(source, rng, side)[: spec.height, : spec.width].astype(np.float32)
    view += rng.normal(0.0, NOISE_SIGMA, view.shape).astype(np.float32)
    return np.ascontiguousarray(np.clip(view, 0, 255).astype(np.uint8))


def _defective(spec: CategorySpec, rng, kind: str):
    """A defective picture and its exact mask: the demo defect drawn on a square window of the picture
    (the demo's makers draw on squares), redrawn until the mask survives the resize to 256 px."""
    import cv2
    import numpy as np

    from aand_lightning.data.demo import add_defect

    image = _picture(spec, rng, "test")
    side = min(spec.width, spec.height)
    left = int(rng.integers(0, spec.width - side + 1))
    window = np.ascontiguousarray(image[:, left : left + side])
    for _ in range(20):
        drawn, changed = add_defect(window, kind, rng)
        if cv2.resize(changed.astype(np.uint8), (256, 256), interpolation=cv2.INTER_NEAREST).any():
            break
    image[:, left : left + side] = drawn
    mask = np.zeros(image.shape[:2], bool)
    mask[:, left : left + side] = changed
    return image, mask


def _write_image(path: Path, pixels) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".jpg":
        Image.fromarray(pixels).save(path, quality=95)
    else:
        Image.fromarray(pixels).save(path)


def _make_file(job: tuple[str, str, str, int, str, str, str]) -> int:
    """One generated file (and its mask); returns the bytes written. Runs in a pool worker."""
    dataset, part, kind, index, image_path, mask_path, mask_value = job
    spec = SPECS[dataset]
    rng = _job_rng(0, dataset, part, kind, index)
    if kind == "good":
        _write_image(Path(image_path), _picture(spec, rng, part))
        return Path(image_path).stat().st_size
    defect = DEFECT_KIND.get(kind, ("scratch", "stain", "patch")[index % 3])
    image, mask = _defective(spec, rng, defect)
    _write_image(Path(image_path), image)
    _write_image(Path(mask_path), mask.astype("uint8") * int(mask_value))
    return Path(image_path).stat().st_size + Path(mask_path).stat().st_size


def _mvtec_jobs(spec: CategorySpec, root: Path) -> list[tuple]:
    folder = root / spec.category
    jobs = [("mvtec", "train", "good", i, str(folder / "train/good" / f"{i:03d}.png"), "", "0")
            for i in range(spec.train)]  # fmt: skip
    jobs += [("mvtec", "test", "good", i, str(folder / "test/good" / f"{i:03d}.png"), "", "0")
             for i in range(spec.test_good)]  # fmt: skip
    for defect, count in spec.defects.items():
        jobs += [
            ("mvtec", "test", defect, i, str(folder / "test" / defect / f"{i:03d}.png"),
             str(folder / "ground_truth" / defect / f"{i:03d}_mask.png"), "255")
            for i in range(count)
        ]  # fmt: skip
    return jobs


def _visa_jobs(spec: CategorySpec, root: Path) -> tuple[list[tuple], list[list[str]]]:
    """The files of a VisA category and its rows of split_csv/1cls.csv (paths relative to root)."""
    base = Path(spec.category) / "Data"
    jobs, rows = [], []
    for index in range(spec.train + spec.test_good):
        relative = base / "Images/Normal" / f"{index:04d}.JPG"
        split = "train" if index < spec.train else "test"
        jobs.append(("visa", split, "good", index, str(root / relative), "", "0"))
        rows.append([spec.category, split, "normal", str(relative), ""])
    for index in range(spec.test_anomalous):
        image, mask = (
            base / "Images/Anomaly" / f"{index:03d}.JPG",
            base / "Masks/Anomaly" / f"{index:03d}.png",
        )
        jobs.append(("visa", "test", "anomaly", index, str(root / image), str(root / mask), "1"))
        rows.append([spec.category, "test", "anomaly", str(image), str(mask)])
    return jobs, rows


def generate(dataset: str, root: Path, workers: int = 2) -> dict[str, Any]:
    """Write the category of `dataset` under `root` (the dataset.root); returns what was written."""
    spec = SPECS[dataset]
    start = time.perf_counter()
    if dataset == "mvtec":
        jobs = _mvtec_jobs(spec, root)
    else:
        import csv

        jobs, rows = _visa_jobs(spec, root)
        (root / "split_csv").mkdir(parents=True, exist_ok=True)
        with (root / "split_csv" / "1cls.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["object", "split", "label", "image", "mask"])
            writer.writerows(rows)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        written = sum(pool.map(_make_file, jobs, chunksize=8))
    return {
        "category": spec.category, "files": len(jobs), "bytes": written,
        "seconds": time.perf_counter() - start, "size": f"{spec.width}x{spec.height}",
        "train": spec.train, "test_good": spec.test_good, "test_anomalous": spec.test_anomalous,
    }  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Inside the trainer: the clock of every stage (a Lightning callback)
# --------------------------------------------------------------------------------------------------


def _proc_mb(pid: int | str, file: str, field: str) -> float:
    """The kB `field` of /proc/<pid>/<file> in MB; 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/{file}") as lines:
            for line in lines:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _rss_mb(pid: int | str = "self") -> float:
    return _proc_mb(pid, "status", "VmRSS:")


def _mem_available_mb() -> float:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class StageClock(Callback):
    """Writes one JSON line per event of a stage to `path` (wall-clock time, the stage, the trainer's
    RSS): fit, every train epoch (its batches and images), every validation and test pass, and the
    feature cache's state before and after the first stage-2 batch."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.images = 0
        self.batches = 0

    def _write(self, pl_module, event: str, **extra: Any) -> None:
        record = {"t": time.time(), "stage": getattr(pl_module, "stage_name", "?"), "event": event,
                  "rss_mb": _rss_mb(), "mem_available_mb": _mem_available_mb(), **extra}  # fmt: skip
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    @staticmethod
    def _cache(pl_module) -> dict[str, Any] | None:
        cache = getattr(pl_module, "feature_cache", None)
        if cache is None:
            return None
        store = cache.store
        return {"off": bool(cache.off), "budget_bytes": cache.budget, "store": store is not None,
                "store_bytes": store.nbytes() if store is not None else None,
                "ids": len(cache.skip_image), "dtype": cache.settings.dtype}  # fmt: skip

    def on_fit_start(self, trainer, pl_module) -> None:
        self._write(pl_module, "fit_start")

    def on_fit_end(self, trainer, pl_module) -> None:
        self._write(pl_module, "fit_end")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.images = self.batches = 0
        self._write(pl_module, "train_epoch_start", epoch=trainer.current_epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self._write(
                pl_module, "first_batch_start", epoch=trainer.current_epoch, cache=self._cache(pl_module)
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        self.images += len(batch.image)
        if batch_idx == 0:
            self._write(
                pl_module, "first_batch_end", epoch=trainer.current_epoch, cache=self._cache(pl_module)
            )

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._write(pl_module, "validation_start", epoch=trainer.current_epoch,
                        train_batches=self.batches, train_images=self.images)  # fmt: skip

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._write(
                pl_module, "validation_end", epoch=trainer.current_epoch, cache=self._cache(pl_module)
            )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._write(pl_module, "train_epoch_end", epoch=trainer.current_epoch,
                    train_batches=self.batches, train_images=self.images)  # fmt: skip

    def on_test_start(self, trainer, pl_module) -> None:
        self._write(pl_module, "test_start")

    def on_test_end(self, trainer, pl_module) -> None:
        self._write(pl_module, "test_end")


# --------------------------------------------------------------------------------------------------
# Outside the trainer: memory of the process tree, the run, its timeline
# --------------------------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return tree


def _tree(pid: int) -> list[int]:
    children, found, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of `pid` (a reaped worker's time moves into its parent's c-fields)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return sum(int(v) for v in fields[11:15]) / TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores; /proc/stat)."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / TICKS


def _pss_mb(pid: int) -> float:
    return _proc_mb(pid, "smaps_rollup", "Pss:")


@dataclass
class MemorySampler:
    """Polls the process tree of `pid` every `interval` s (RSS) and every `pss_every`-th poll (PSS)."""

    pid: int
    interval: float = 0.5
    pss_every: int = 4
    samples: list[dict[str, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        poll = 0
        while not self._stop.is_set():
            pids = _tree(self.pid)
            sample = {"t": time.time(), "tree_rss_mb": sum(_rss_mb(p) for p in pids),
                      "main_rss_mb": _rss_mb(self.pid), "processes": len(pids),
                      "mem_available_mb": _mem_available_mb(), "cpu_s": sum(_cpu_seconds(p) for p in pids),
                      "machine_busy_s": _machine_busy_seconds()}  # fmt: skip
            if poll % self.pss_every == 0:
                sample["tree_pss_mb"] = sum(_pss_mb(p) for p in pids)
            self.samples.append(sample)
            poll += 1
            self._stop.wait(self.interval)


def _env() -> dict[str, str]:
    """This environment with benchmarks/ on the path (the trainer imports `rehearsal.StageClock`)."""
    path = os.pathsep.join(filter(None, [str(BENCHMARKS), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def train_overrides(
    spec: CategorySpec, data_root: Path, run_dir: Path, args: argparse.Namespace
) -> list[str]:
    limit = [f"+trainer.limit_train_batches={args.limit_train_batches}"] if args.limit_train_batches else []
    return [
        f"experiment={spec.experiment}", "trainer=cpu", "backbone.weights=none",
        "synthesis.textures=procedural", f"dataset.root={data_root}", f"dataset.category={spec.category}",
        "dataset.download=false", f"amplify.epochs={args.amplify_epochs}",
        f"distill.epochs={args.distill_epochs}", "amplifier_cache=null", f"hydra.run.dir={run_dir}",
        "trainer.enable_progress_bar=false", "+callbacks.rehearsal_clock._target_=rehearsal.StageClock",
        f"+callbacks.rehearsal_clock.path={run_dir / 'clock.jsonl'}", *limit, *args.overrides,
    ]  # fmt: skip


def run_training(spec: CategorySpec, data_root: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The real entry point in a subprocess, its tree's memory polled; returns the raw record."""
    run_dir = work / f"run-{spec.dataset}"
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = train_overrides(spec, data_root, run_dir, args)
    command = [sys.executable, "-m", "aand_lightning.train", *overrides]
    env = {**_env(), "AAND_CACHE_DIR": str(work / "cache")}
    log_path = run_dir / "train.stdout.log"
    print(f"[rehearsal] {spec.dataset}: {' '.join(command[1:])}", flush=True)
    load_start = _load()
    start = time.time()
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = MemorySampler(process.pid).start()
        code = process.wait()
        sampler.stop()
    end = time.time()
    clock = [json.loads(line) for line in (run_dir / "clock.jsonl").read_text().splitlines()] if (
        run_dir / "clock.jsonl").exists() else []  # fmt: skip
    metrics = {}
    for stage in ("amplify", "distill"):
        path = run_dir / stage / "metrics.json"
        if path.exists():
            metrics[stage] = json.loads(path.read_text())
    cache_lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines()
                   if "feature cache" in line.lower()]  # fmt: skip
    return {
        "dataset": spec.dataset, "category": spec.category, "command": " ".join(command[1:]),
        "returncode": code, "start": start, "end": end, "wall_seconds": end - start,
        "load_at_start": load_start, "load_at_end": _load(), "clock": clock, "metrics": metrics,
        "memory_samples": sampler.samples, "cache_log_lines": cache_lines, "run_dir": str(run_dir),
        "log_tail": log_path.read_text(errors="replace").splitlines()[-40:],
    }  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Host loader cost per image (what bounds a GPU), FLOPs per image
# --------------------------------------------------------------------------------------------------


def loader_seconds(spec: CategorySpec, data_root: Path, count: int) -> dict[str, float]:
    """CPU seconds per item on one core (and wall seconds, `<mode>_wall`) for what a DataLoader worker
    does: stage 1's synthetic training item (decode the native file, resize, foreground, synthesis)
    and stage 2's normal item (decode, resize), on the first `count` train images (the foreground
    cache warm from the run)."""
    import torch
    from hydra.utils import instantiate

    from aand_lightning.config.compose import hydra_job

    torch.set_num_threads(1)
    args = argparse.Namespace(amplify_epochs=1, distill_epochs=1, limit_train_batches=None, overrides=[])
    with tempfile.TemporaryDirectory() as scratch:
        overrides = [
            o
            for o in train_overrides(spec, data_root, Path(scratch), args)
            if not o.startswith("+callbacks.rehearsal_clock")
        ]
        with hydra_job("train", overrides) as (cfg, _):
            datamodule = instantiate(cfg.datamodule)
            datamodule.setup()
            samples = datamodule.splits.train[:count]
            result = {}
            for mode in ("synthetic", "normal"):
                dataset = datamodule.dataset(samples, mode)
                dataset[0]  # warm-up (imports, first foreground)
                start, cpu = time.perf_counter(), time.process_time()
                for index in range(len(dataset)):
                    dataset[index]
                result[f"{mode}_wall"] = (time.perf_counter() - start) / len(dataset)
                result[mode] = (time.process_time() - cpu) / len(dataset)  # CPU time: robust to load
    return result


def flops_per_image() -> dict[str, float]:
    """FLOPs per image at 256 px (FlopCounterMode: convolutions and matmuls, as `make bench-speed`),
    batch 2: stage 1's training step, stage 1's evaluation forward (teacher + RAA), stage 2's
    training step uncached and cached, and AAND's inference."""
    import torch
    from systems import Stage1Step, System
    from torch.utils.flop_counter import FlopCounterMode

    from aand_lightning.stages.feature_cache import FeatureCacheSettings, TeacherFeatureCache

    device, batch = torch.device("cpu"), 2
    images = torch.randn(batch, 3, 256, 256)
    mask = torch.zeros(batch, 1, 256, 256)
    mask[:, :, 64:128, 64:128] = 1

    def count(fn) -> float:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return counter.get_total_flops() / batch

    out: dict[str, float] = {}
    step = Stage1Step(device)
    out["stage1_train_step"] = count(lambda: step(images, mask))
    with torch.no_grad():
        out["stage1_eval_forward"] = count(lambda: step.teacher(images))
    uncached = System("ours_aand", device, 256)
    out["stage2_train_step_uncached"] = count(lambda: uncached.train_step(images))
    cache = TeacherFeatureCache(FeatureCacheSettings(), torch.zeros(batch, dtype=torch.bool))
    cached = System("ours_aand", device, 256, cache=cache)
    cached.train_step(images, [0, 1])  # fills the cache
    out["stage2_train_step_cached"] = count(lambda: cached.train_step(images, [0, 1]))
    out["inference"] = count(lambda: uncached.infer(images))
    return out


def _pointers(module) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in module.parameters()}


def device_memory_parts(batch: int = 16) -> dict[str, float]:
    """Bytes a training step keeps on its device besides the feature cache, counted on the CPU: the
    parameters (teacher with RAA, student), the trained ones' gradients and Adam's two moments, and
    the tensors autograd saves for the backward pass in one step of each stage (counted at batch 2,
    scaled to `batch`). A GPU run needs about this plus the cache plus the allocator's slack."""
    import torch
    from systems import Stage1Step, System

    from aand_lightning.stages.feature_cache import FeatureCacheSettings, TeacherFeatureCache

    device, small = torch.device("cpu"), 2
    images = torch.randn(small, 3, 256, 256)
    mask = torch.zeros(small, 1, 256, 256)
    mask[:, :, 64:128, 64:128] = 1

    def saved(fn, params: set[int]) -> float:
        seen: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in params:  # weights saved for the backward are counted apart
                seen[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return sum(seen.values()) / small * batch

    def nbytes(params) -> int:
        return sum(p.numel() * p.element_size() for p in params)

    step = Stage1Step(device)
    cache = TeacherFeatureCache(FeatureCacheSettings(), torch.zeros(small, dtype=torch.bool))
    system = System("ours_aand", device, 256, cache=cache)
    system.train_step(images, [0, 1])  # fills the cache: the next steps are stage 2's later epochs
    raa = nbytes(step.teacher.raa.parameters())
    student = nbytes(system.model.student.parameters())
    return {
        "teacher_with_raa_params": nbytes(step.teacher.parameters()),
        "raa_params_grads_adam": 4 * raa,  # weights, gradients, two moments
        "student_params_grads_adam": 4 * student,
        "stage1_saved_activations": saved(lambda: step(images, mask), _pointers(step.teacher)),
        "stage2_saved_activations_cached": saved(
            lambda: system.train_step(images, [0, 1]), _pointers(system.model)
        ),
        "batch": batch,
    }


# --------------------------------------------------------------------------------------------------
# Analysis: per stage, the epochs, the test pass, memory; the extrapolation
# --------------------------------------------------------------------------------------------------


def _events(clock: list[dict], stage: str, event: str) -> list[dict]:
    return [e for e in clock if e["stage"] == stage and e["event"] == event]


def _at(samples: list[dict], key: str, t: float) -> float:
    """`key` of the last sample at or before `t` (the first sample if none)."""
    before = [s for s in samples if s["t"] <= t]
    return (before[-1] if before else samples[0])[key]


def stage_summary(run: dict[str, Any], stage: str, sampler_peak) -> dict[str, Any]:
    """Seconds of each epoch (start to the next epoch's start or the fit's end: training, validation,
    the checkpoints), of training alone and validation alone, of the test pass; memory in the stage."""
    clock, samples = run["clock"], run["memory_samples"]

    def cpu_between(start: float, end: float) -> dict[str, float]:
        """CPU seconds of the run's process tree and of the whole machine in [start, end] (0.5 s grid):
        what the run would need of a quiet machine, and how much of it others took."""
        if not samples:
            return {}
        ours = _at(samples, "cpu_s", end) - _at(samples, "cpu_s", start)
        machine = _at(samples, "machine_busy_s", end) - _at(samples, "machine_busy_s", start)
        return {"cpu_seconds": ours, "others_cpu_seconds": max(machine - ours, 0.0)}

    starts = _events(clock, stage, "train_epoch_start")
    fit_start, fit_end = _events(clock, stage, "fit_start"), _events(clock, stage, "fit_end")
    test_start, test_end = _events(clock, stage, "test_start"), _events(clock, stage, "test_end")
    if not starts or not fit_end:
        return {"complete": False}
    boundaries = [e["t"] for e in starts] + [fit_end[0]["t"]]
    val_starts, val_ends = _events(clock, stage, "validation_start"), _events(clock, stage, "validation_end")
    ends = _events(clock, stage, "train_epoch_end")
    epochs = []
    for index, start in enumerate(starts):
        epoch = {"epoch": start["epoch"], "seconds": boundaries[index + 1] - start["t"],
                 **cpu_between(start["t"], boundaries[index + 1])}  # fmt: skip
        if index < len(val_starts):
            epoch["train_seconds"] = val_starts[index]["t"] - start["t"]
            epoch["train_cpu_seconds"] = cpu_between(start["t"], val_starts[index]["t"]).get("cpu_seconds")
            epoch["validation_seconds"] = val_ends[index]["t"] - val_starts[index]["t"]
            validation_cpu = cpu_between(val_starts[index]["t"], val_ends[index]["t"])
            epoch["validation_cpu_seconds"] = validation_cpu.get("cpu_seconds")
            epoch["train_images"] = val_starts[index]["train_images"]
        elif index < len(ends):
            epoch["train_seconds"] = ends[index]["t"] - start["t"]
            epoch["train_images"] = ends[index]["train_images"]
        if index < len(ends):  # after this callback's epoch end: last.ckpt is written (every epoch)
            epoch["checkpoint_seconds"] = boundaries[index + 1] - ends[index]["t"]
        epochs.append(epoch)
    first = _events(clock, stage, "first_batch_end")
    performance = run["metrics"].get(stage, {}).get("performance", {})
    stage_start = fit_start[0]["t"]
    stage_end = test_end[0]["t"] if test_end else fit_end[0]["t"]
    summary = {
        "complete": True,
        "epochs": epochs,
        "fit_seconds": fit_end[0]["t"] - fit_start[0]["t"],
        "fit_seconds_metrics_json": performance.get("fit_seconds"),
        "after_fit_seconds": (test_start[0]["t"] if test_start else fit_end[0]["t"]) - fit_end[0]["t"],
        "test_seconds": test_end[0]["t"] - test_start[0]["t"] if test_start and test_end else None,
        "test_cpu": cpu_between(test_start[0]["t"], test_end[0]["t"]) if test_start and test_end else None,
        "first_batch_seconds": first[0]["t"] - starts[0]["t"] if first else None,
        "peak_tree_rss_mb": sampler_peak("tree_rss_mb", stage_start, stage_end),
        "peak_main_rss_mb": sampler_peak("main_rss_mb", stage_start, stage_end),
        "peak_tree_pss_mb": sampler_peak("tree_pss_mb", stage_start, stage_end),
        "min_mem_available_mb": -sampler_peak("neg_available", stage_start, stage_end),
        "ru_maxrss_mb": performance.get("peak_memory_mb", {}).get("host_rss"),
        "inference_images_per_second": performance.get("inference_images_per_second"),
        "start": stage_start,
        "end": stage_end,
    }  # fmt: skip
    if stage == "distill":
        before = _events(clock, stage, "first_batch_start")
        after = first
        summary["cache_before_first_batch"] = before[0]["cache"] if before else None
        summary["cache_after_first_batch"] = after[0]["cache"] if after else None
        summary["cache_decision_seconds_after_fit_start"] = (
            after[0]["t"] - fit_start[0]["t"] if after else None
        )
    return summary


def held_out(spec: CategorySpec, fraction: float = 0.1) -> int:
    """Validation images of the clean protocol (datamodule.split_validation's count)."""
    return min(spec.train - 1, max(1, round(fraction * spec.train)))


def full_train_images(spec: CategorySpec, batch: int = 16) -> int:
    """Training images of a whole epoch: the batches drop_last keeps."""
    return (spec.train - held_out(spec)) // batch * batch


def full_epoch(epoch: dict[str, Any], full: int) -> dict[str, Any]:
    """An epoch whose steps were capped (`--limit-train-batches`), brought to `full` training images:
    its training part scaled per image, the rest (validation, calibration, checkpoint) as measured."""
    seen = epoch.get("train_images") or full
    if seen >= full:
        return epoch
    factor = full / seen
    out = dict(epoch, scaled_from_images=seen, train_images=full)
    out["seconds"] = epoch["seconds"] + epoch["train_seconds"] * (factor - 1)
    out["cpu_seconds"] = epoch["cpu_seconds"] + epoch["train_cpu_seconds"] * (factor - 1)
    out["train_seconds"] = epoch["train_seconds"] * factor
    out["train_cpu_seconds"] = epoch["train_cpu_seconds"] * factor
    return out


def analyse(run: dict[str, Any], spec: CategorySpec) -> dict[str, Any]:
    samples = run["memory_samples"]
    for s in samples:
        s["neg_available"] = -s["mem_available_mb"]

    def peak(key, start=0.0, end=float("inf")):
        values = [s[key] for s in samples if key in s and start <= s["t"] <= end]
        return max(values, default=0.0)

    stages = {stage: stage_summary(run, stage, peak) for stage in ("amplify", "distill")}
    for stage in stages.values():  # a capped run's epochs at full size; measured ones stay as they are
        if stage.get("complete"):
            stage["measured_epochs"] = stage["epochs"]
            stage["epochs"] = [full_epoch(e, full_train_images(spec)) for e in stage["epochs"]]
    first_fit = min((s["start"] for s in stages.values() if s.get("complete")), default=run["end"])
    return {
        "setup_seconds": first_fit - run["start"],  # interpreter, config, listing and decoding every file
        "between_stages_seconds": (stages["distill"]["start"] - stages["amplify"]["end"])
        if stages["amplify"].get("complete") and stages["distill"].get("complete") else None,
        "stages": stages,
        "peak_tree_rss_mb": peak("tree_rss_mb"),
        "peak_main_rss_mb": peak("main_rss_mb"),
        "peak_tree_pss_mb": peak("tree_pss_mb"),
        "max_processes": peak("processes"),
    }  # fmt: skip


def extrapolate(
    analysis: dict[str, Any], cached_per_image: dict[str, float] | None, train_images: int,
    key: str = "seconds", cores: int = 1,
) -> dict[str, Any]:  # fmt: skip
    """The clean protocol's whole run on this machine (one AAND job of the category), in seconds:

      setup + 100 x E1 + A1 + T1 + between + E2_first + 119 x E2_later + A2 + T2

    E1: a stage-1 epoch (training, the validation that runs every epoch, the checkpoint); A1/A2: what
    runs between a stage's fit and its test; T1/T2: the test passes; E2_first: stage 2's first epoch
    (it fills the feature cache, and calibrates the fused map's gate weight once per fit); E2_later: a
    later epoch, measured where the run had one; else, with the cache on, the other run's later epoch
    per training image (`cached_per_image`: a cached epoch decodes nothing, so the native size does
    not matter) x `train_images`; with the cache off, epoch 1's training and validation (no
    calibration). `key="seconds"`: wall time as measured (under the machine's load);
    `key="cpu_seconds"`: the run's CPU seconds over `cores`, the wall time of a quiet machine whose
    cores the run keeps busy (epochs and test passes; setup and the gaps between stages stay wall)."""
    s1, s2 = analysis["stages"]["amplify"], analysis["stages"]["distill"]
    scale = 1.0 if key == "seconds" else 1.0 / cores
    train_key = "train_seconds" if key == "seconds" else "train_cpu_seconds"

    def test(stage: dict[str, Any]) -> float:
        if key == "seconds":
            return stage["test_seconds"] or 0.0
        return (stage["test_cpu"] or {}).get("cpu_seconds", 0.0) * scale

    e1 = s1["epochs"][0][key] * scale
    first = s2["epochs"][0]
    e2_first = first[key] * scale
    measured_later = [e[key] * scale for e in s2["epochs"][1:]]
    cache_on = bool((s2.get("cache_after_first_batch") or {}).get("store"))
    if measured_later:
        e2_later, source = sum(measured_later) / len(measured_later), "measured"
    elif cache_on and cached_per_image is not None:
        e2_later = cached_per_image[key] * scale * train_images
        source = f"{cached_per_image[key] * scale:.3f} s per training image (the other run's cached epoch)"
    else:
        validation_key = "validation_seconds" if key == "seconds" else "validation_cpu_seconds"
        e2_later = (first[train_key] + first[validation_key]) * scale
        source = "epoch 1's training and validation" + (
            " (no cached epoch measured: an upper bound)" if cache_on else " (the cache is off)"
        )
    n1, n2 = PAPER_EPOCHS["amplify"], PAPER_EPOCHS["distill"]
    parts = {
        "setup": analysis["setup_seconds"], "stage1_epochs": n1 * e1,
        "stage1_after_fit_and_test": s1["after_fit_seconds"] + test(s1),
        "between_stages": analysis["between_stages_seconds"] or 0.0,
        "stage2_first_epoch": e2_first, "stage2_later_epochs": (n2 - 1) * e2_later,
        "stage2_after_fit_and_test": s2["after_fit_seconds"] + test(s2),
    }  # fmt: skip
    return {"key": key, "e1": e1, "e2_first": e2_first, "e2_later": e2_later, "e2_later_source": source,
            "parts": parts, "total_seconds": sum(parts.values())}  # fmt: skip


def gpu_estimate(
    spec: CategorySpec, analysis: dict[str, Any], flops: dict[str, float], loader: dict[str, float],
    tflops: float, workers: int,
) -> dict[str, Any]:  # fmt: skip
    """Seconds per epoch on one GPU sustaining `tflops` TFLOP/s, each epoch bounded below by the host:
    `workers` DataLoader workers (the recipe's num_workers) at this machine's measured cost per item,
    plus the epoch's checkpoint write as measured here (last.ckpt every epoch; serial to the GPU work)."""
    s1, s2 = analysis["stages"]["amplify"], analysis["stages"]["distill"]
    ckpt1 = s1["epochs"][0].get("checkpoint_seconds", 0.0)
    ckpt2 = s2["epochs"][-1].get("checkpoint_seconds", 0.0)
    n_train1 = n_train2 = full_train_images(spec)
    n_val = held_out(spec)
    n_test = spec.test_good + spec.test_anomalous
    draws = 8 * n_val  # distill.gate_draws synthetic anomalies per validation image, once per fit
    rate = tflops * 1e12

    def bound(compute: float, host: float, checkpoint: float = 0.0) -> dict[str, float]:
        return {"compute_s": compute, "host_s": host, "checkpoint_s": checkpoint,
                "seconds": max(compute, host) + checkpoint}  # fmt: skip

    e1 = bound((n_train1 * flops["stage1_train_step"] + n_val * flops["stage1_eval_forward"]) / rate,
               (n_train1 * loader["synthetic"] + n_val * loader["synthetic"]) / workers, ckpt1)  # fmt: skip
    e2_first = bound(
        (n_train2 * flops["stage2_train_step_uncached"] + n_val * flops["inference"]
         + draws * flops["stage1_eval_forward"]) / rate,
        ((n_train2 + n_val) * loader["normal"] + draws * loader["synthetic"]) / workers, ckpt2,
    )  # fmt: skip
    e2_later = bound(
        (n_train2 * flops["stage2_train_step_cached"] + n_val * flops["inference"]) / rate, 0.0, ckpt2
    )
    test = bound(n_test * flops["inference"] / rate, n_test * loader["normal"] / workers)
    total = 100 * e1["seconds"] + e2_first["seconds"] + 119 * e2_later["seconds"] + 2 * test["seconds"]
    return {"tflops": tflops, "workers": workers, "stage1_epoch": e1, "stage2_first_epoch": e2_first,
            "stage2_later_epoch": e2_later, "test_pass": test, "total_seconds": total}  # fmt: skip


# --------------------------------------------------------------------------------------------------


def _in_subprocess(what: str, *arguments: str) -> dict[str, float]:
    """`flops_per_image()` or `loader_seconds(...)` in a fresh process: a large parent would hand the
    trainer's process its high-water mark (ru_maxrss survives fork and exec), and metrics.json's
    peak RSS would be the parent's."""
    env = _env()
    if what == "loader":
        env["AAND_CACHE_DIR"] = arguments[3]
    out = subprocess.run([sys.executable, __file__, "--measure", what, *arguments[:3]], cwd=ROOT, env=env,
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--measure":  # the parts run by _in_subprocess
        if sys.argv[2] == "flops":
            print(json.dumps(flops_per_image()))
        elif sys.argv[2] == "memory":
            print(json.dumps(device_memory_parts()))
        else:
            dataset, data_root, count = sys.argv[3:6]
            print(json.dumps(loader_seconds(SPECS[dataset], Path(data_root), int(count))))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", choices=sorted(SPECS), default=["mvtec", "visa"])
    parser.add_argument(
        "--root", type=Path, help="work folder (data, runs); default: a temp dir, deleted after"
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the generated data and runs")
    parser.add_argument("--amplify-epochs", type=int, default=1)
    parser.add_argument(
        "--distill-epochs",
        type=int,
        default=2,
        help="stage-2 epochs: 2 also measures a cached epoch (the protocol's 119 later epochs)",
    )
    parser.add_argument(
        "--distill-epochs-for",
        nargs="*",
        default=["mvtec"],
        help="datasets that run --distill-epochs, the others run 1 and take the cached epoch per image "
        "from these (default: mvtec; none given: all)",
    )
    parser.add_argument("--limit-train-batches", type=int, help="cap the steps per epoch (then extrapolate)")
    parser.add_argument("--loader-images", type=int, default=48, help="images timed for the loader cost")
    parser.add_argument(
        "--gpu-tflops",
        type=float,
        nargs="+",
        default=[30.0, 75.0],
        help="sustained TFLOP/s assumed for the GPU estimate",
    )
    parser.add_argument("--json", type=Path, help="write the raw record here")
    parser.add_argument(
        "--render", type=Path, nargs="+", help="only re-analyse saved records, print the table"
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    if args.render:
        render(args.render, args.gpu_tflops, args.json)
        return

    work = args.root or Path(tempfile.mkdtemp(prefix="aand-rehearsal-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"date": dt.date.today().isoformat(), "work": str(work), "runs": {}}
    print(f"[rehearsal] work folder {work}; load {_load()}", flush=True)
    report["flops_per_image"] = _in_subprocess("flops")
    report["device_memory_parts"] = _in_subprocess("memory")
    print(f"[rehearsal] FLOPs per image: {report['flops_per_image']}", flush=True)
    report["machine"] = machine()
    try:
        for dataset in args.datasets:
            spec = SPECS[dataset]
            data_root = work / f"data-{dataset}"
            if not (data_root / ".complete").exists():
                made = generate(dataset, data_root)
                (data_root / ".complete").write_text(json.dumps(made))
            made = json.loads((data_root / ".complete").read_text())
            print(f"[rehearsal] {dataset}: generated {made}", flush=True)
            epochs = (
                args.distill_epochs
                if (not args.distill_epochs_for or dataset in args.distill_epochs_for)
                else 1
            )
            run_args = argparse.Namespace(**{**vars(args), "distill_epochs": epochs})
            run = run_training(spec, data_root, work, run_args)
            entry = {"spec": asdict(spec), "generated": made, "run": run}
            if run["returncode"] == 0:
                entry["load_during_run"] = [run["load_at_start"], run["load_at_end"]]
                loader_load = _load()
                entry["loader_seconds_per_item"] = _in_subprocess(
                    "loader", dataset, str(data_root), str(args.loader_images), str(work / "cache")
                )
                entry["loader_load"] = loader_load
            report["runs"][dataset] = entry
            print(
                f"[rehearsal] {dataset}: rc={run['returncode']} wall {run['wall_seconds']:.0f} s", flush=True
            )
            if args.json:  # after every run: a later crash keeps what was measured
                _save(args.json, report)
        finish(report, args.gpu_tflops)
    finally:
        if args.json:
            _save(args.json, report)
        if not args.keep_data:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(report), flush=True)


def machine() -> dict[str, Any]:
    import platform

    import torch

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())  # fmt: skip
    return {"cpu": model, "cores": os.cpu_count(), "mem_total_gb": _mem_total_gb(),
            "torch": torch.__version__, "python": platform.python_version()}  # fmt: skip


def _mem_total_gb() -> float:
    with open("/proc/meminfo") as meminfo:
        return int(next(line for line in meminfo if line.startswith("MemTotal:")).split()[1]) / 1024**2


def finish(report: dict[str, Any], tflops: list[float]) -> None:
    """(Re)analyse every finished run from its record: the stages, a cached stage-2 epoch per training
    image (from the run that measured one), the extrapolations, the GPU estimates."""
    cores = report.get("machine", {}).get("cores") or os.cpu_count() or 1
    cached_per_image = None
    for entry in report["runs"].values():
        if entry["run"]["returncode"] != 0:
            continue
        entry["analysis"] = analyse(entry["run"], SPECS[entry["run"]["dataset"]])
        epochs2 = entry["analysis"]["stages"]["distill"]["epochs"]
        if len(epochs2) > 1 and cached_per_image is None:
            cached_per_image = {  # a later (cached) epoch per training image
                key: sum(e[key] for e in epochs2[1:]) / (len(epochs2) - 1) / epochs2[1]["train_images"]
                for key in ("seconds", "cpu_seconds")
            }
    for dataset, entry in report["runs"].items():
        if "analysis" not in entry:
            continue
        images = full_train_images(SPECS[dataset])
        entry["extrapolation"] = extrapolate(entry["analysis"], cached_per_image, images)
        entry["extrapolation_quiet"] = extrapolate(
            entry["analysis"], cached_per_image, images, "cpu_seconds", cores
        )
        entry["gpu"] = [
            gpu_estimate(SPECS[dataset], entry["analysis"], report["flops_per_image"],
                         entry["loader_seconds_per_item"], t, 2)
            for t in tflops
        ]  # fmt: skip
    report["cached_epoch_per_train_image"] = cached_per_image
    report["gpu_tflops"] = tflops


def _gb(mb: float | None) -> str:
    return "—" if not mb else f"{mb / 1024:.1f}"


def _gpu_cell(estimates: list[dict[str, Any]], part: str) -> str:
    """Seconds at each assumed rate, and what bounds them: the GPU's FLOPs, the loader workers on the
    host, or the checkpoint written after the epoch."""
    cells = []
    for estimate in estimates:
        value = estimate[part]
        bounds = {
            "GPU": value["compute_s"],
            "host loader": value["host_s"],
            "checkpoint": value["checkpoint_s"],
        }
        cells.append(f"{value['seconds']:.0f} s ({max(bounds, key=bounds.get)})")
    return " / ".join(cells)


def markdown(report: dict[str, Any]) -> str:
    """The results table: per dataset, stage 1's epoch, stage 2's first (cache-filling) and later epochs,
    the whole protocol extrapolated (as measured, and for a quiet machine), the GPU estimates."""
    rates = " / ".join(f"{t:g}" for t in report.get("gpu_tflops", []))
    lines = [
        "| dataset / category | stage | images per epoch (train + val) | s/epoch here (CPU-s ÷ "
        f"{report.get('machine', {}).get('cores', '?')}) | peak memory GiB: tree PSS / trainer RSS | "
        f"feature cache | test pass s (images) | one GPU at {rates} TFLOP/s (estimate) |",
        "|" + "---|" * 8,
    ]
    for dataset, entry in report["runs"].items():
        spec = SPECS[dataset]
        name = f"{'MVTec AD' if dataset == 'mvtec' else 'VisA'} / {spec.category}"
        if "analysis" not in entry:
            lines.append(f"| {name} | failed (rc {entry['run']['returncode']}) | | | | | | |")
            continue
        analysis, ext, quiet = entry["analysis"], entry["extrapolation"], entry["extrapolation_quiet"]
        s1, s2 = analysis["stages"]["amplify"], analysis["stages"]["distill"]
        cores = report.get("machine", {}).get("cores", 1)
        n_val = held_out(spec)
        n_test = spec.test_good + spec.test_anomalous
        cache = s2.get("cache_after_first_batch") or {}
        if cache.get("store"):
            size, budget = cache["store_bytes"] / 1e9, cache["budget_bytes"] / 1e9
            cache_cell = f"on: {size:.2f} GB ({cache['dtype']}, budget {budget:.1f} GB)"
        else:
            cache_cell = f"off (budget {(cache.get('budget_bytes') or 0) / 1e9:.1f} GB)"
        gpu = entry["gpu"]

        def epoch_cell(epoch: dict[str, Any], cores: int = cores) -> str:
            capped = f", from {epoch['scaled_from_images']} images" if "scaled_from_images" in epoch else ""
            return f"{epoch['seconds']:.0f} ({epoch['cpu_seconds'] / cores:.0f}){capped}"

        written = ""
        measured = s2["measured_epochs"][0]
        if cache.get("store") and measured.get("train_images", 0) < full_train_images(spec):
            rows = measured["train_images"] + n_val  # a capped epoch stores only the ids it saw
            share = cache["store_bytes"] * rows / cache["ids"] / 1e9
            written = f"; {share:.2f} GB of it written ({rows} of {cache['ids']} ids: steps capped)"
            cache_cell += written
        e1 = s1["epochs"][0]
        lines.append(
            f"| {name} | 1: one epoch | {e1.get('train_images')} + {n_val} | {epoch_cell(e1)} | "
            f"{_gb(s1['peak_tree_pss_mb'])} / {_gb(s1['peak_main_rss_mb'])} | — | "
            f"{s1['test_seconds']:.0f} ({n_test}) | {_gpu_cell(gpu, 'stage1_epoch')} |"
        )
        first = s2["epochs"][0]
        lines.append(
            f"| {name} | 2: epoch 1 (fills the cache) | {first.get('train_images')} + {n_val} | "
            f"{epoch_cell(first)} | {_gb(s2['peak_tree_pss_mb'])} / {_gb(s2['peak_main_rss_mb'])} | "
            f"{cache_cell} | {s2['test_seconds']:.0f} ({n_test}) | {_gpu_cell(gpu, 'stage2_first_epoch')} |"
        )
        later = s2["epochs"][1:]
        if later:
            mean = {k: sum(e[k] for e in later) / len(later) for k in ("seconds", "cpu_seconds")}
            later_cell = epoch_cell(mean)
        else:
            later_cell = f"≈ {ext['e2_later']:.0f} ({quiet['e2_later']:.0f}): {ext['e2_later_source']}"
        lines.append(
            f"| {name} | 2: a later epoch (cached) | {first.get('train_images')} + {n_val} | {later_cell} | "
            f"| | | {_gpu_cell(gpu, 'stage2_later_epoch')} |"
        )
        gpu_total = " / ".join(f"{g['total_seconds'] / 3600:.2f} h" for g in gpu)
        lines.append(
            f"| {name} | **whole protocol, 100 + 120 epochs** | | **{ext['total_seconds'] / 3600:.1f} h** "
            f"({quiet['total_seconds'] / 3600:.1f} h) | {_gb(analysis['peak_tree_pss_mb'])} / "
            f"{_gb(analysis['peak_main_rss_mb'])} | | | {gpu_total} |"
        )
    return "\n".join(lines)


def render(paths: list[Path], tflops: list[float], out: Path | None) -> None:
    """Re-analyse saved records (`--json` of earlier calls; the runs of later files are added to the
    first's) and print the table."""
    report = json.loads(paths[0].read_text())
    for path in paths[1:]:
        report["runs"].update(json.loads(path.read_text())["runs"])
    report.setdefault("machine", machine())
    if "device_memory_parts" not in report:
        report["device_memory_parts"] = _in_subprocess("memory")
    finish(report, tflops)
    if out:
        _save(out, report)
    print(markdown(report))


def _save(path: Path, report: dict[str, Any]) -> None:
    slim = json.loads(json.dumps(report, default=str))
    for entry in slim.get("runs", {}).values():  # the timeline, every 2 s, is enough to plot
        if "memory_samples_every_s" in entry.get("run", {}):
            continue  # already thinned
        samples = entry.get("run", {}).get("memory_samples", [])
        entry["run"]["memory_samples"] = samples[::4]
        entry["run"]["memory_samples_every_s"] = 2.0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(slim, indent=1))


if __name__ == "__main__":
    main()
