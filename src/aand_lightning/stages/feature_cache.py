"""Stage 2's frozen amplified teacher computed once per image: its output kept by dataset index.

The teacher (backbone + RAA) is frozen with BatchNorm in eval mode, and a stage-2 training or
validation item is its file resized and normalised, so every epoch would recompute the same
features. The first time a batch holds an item, its features are computed and stored on the training
device; afterwards they are read back, and the loader stops decoding that item's image (the dataset's
`skip_image` flags live in shared memory, so loader workers see them). The first epoch therefore
costs what an uncached one does, and each DDP rank stores only the items it sees.

Stored features are bit for bit what the uncached run computes because the teacher always sees whole
batches, as it does without the cache: float kernels may round an image's features by the size of
the batch it is in (lite0's do for a batch of one), so features of a sub-batch of only the new
items differ in the last bits, and training amplifies that into other metrics. A
batch that mixes stored items with new ones therefore goes through the teacher whole (the stored
items' rows are placeholder images whose output is dropped). This holds only for a teacher that maps
each image on its own; the first epoch checks that (`independence_check`).
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from aand_lightning.errors import UserError
from aand_lightning.models.amplified_teacher import TeacherOutput

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
Teacher = Callable[[torch.Tensor], TeacherOutput]


class FeatureCacheError(UserError):
    """The cache would hand stage 2 other features than the teacher gives it uncached."""


@dataclass(frozen=True)
class FeatureCacheSettings:
    """`distill.feature_cache` in the config. `max_gb=None`: `default_fraction` of the memory free on
    the training device when the first cache is sized (on the host: of MemAvailable, split between the
    processes of this machine)."""

    enabled: bool = True
    dtype: str = "float32"
    max_gb: float | None = None
    default_fraction: float = 0.5


def free_bytes(device: torch.device) -> int:
    """Memory free for new tensors on `device` (host RAM that Linux can hand out for the CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class FeatureStore:
    """The stored teacher output of one dataset: per level a (N, C, H, W) tensor, and the flags.

    `stored` is the dataset's shared `skip_image` tensor, read here through a numpy view so that the
    bookkeeping of a training step runs no torch op (nothing that would wait for an accelerator).
    """

    def __init__(self, stored: torch.Tensor, like: TeacherOutput, dtype: torch.dtype) -> None:
        self.stored = stored.numpy()
        self.count = len(like.amplified)
        self.levels = [_allocate(len(stored), t, dtype) for t in _kept(like)]
        self.dtypes = [t.dtype for t in _kept(like)]
        self.probe: Probe | None = None  # the independence check still to make (independence_check)

    @staticmethod
    def item_bytes(like: TeacherOutput, dtype: torch.dtype) -> int:
        return sum(t[0].numel() for t in _kept(like)) * torch.empty((), dtype=dtype).element_size()

    def nbytes(self) -> int:
        return sum(level.numel() * level.element_size() for level in self.levels)

    def missing(self, indices: np.ndarray) -> np.ndarray:
        """Positions in the batch whose index has nothing stored yet."""
        return np.flatnonzero(~self.stored[indices])

    def write(self, indices: np.ndarray, out: TeacherOutput) -> None:
        rows = torch.from_numpy(indices).to(self.levels[0].device)
        for level, tensor in zip(self.levels, _kept(out), strict=True):
            level.index_copy_(0, rows, tensor.to(level.dtype))
        self.stored[indices] = True

    def read(self, indices: np.ndarray) -> TeacherOutput:
        """The stored output for these indices, in the dtypes and memory format the teacher returned."""
        rows = torch.from_numpy(indices).to(self.levels[0].device)
        tensors = [
            level.index_select(0, rows).to(dtype).contiguous(memory_format=_memory_format(level))
            for level, dtype in zip(self.levels, self.dtypes, strict=True)
        ]
        return _from_kept(tensors, self.count)


def _kept(out: TeacherOutput) -> list[torch.Tensor]:
    """What stage 2 reads of the teacher's output: the amplified levels, then the gates (if any)."""
    return [*out.amplified, *(out.gates or [])]


def _from_kept(tensors: list[torch.Tensor], count: int) -> TeacherOutput:
    """`_kept`'s inverse: the first `count` tensors are the amplified levels, the rest the gates."""
    return TeacherOutput(features=[], amplified=tensors[:count], gates=tensors[count:] or None)


def _memory_format(tensor: torch.Tensor) -> torch.memory_format:
    """channels_last when `tensor` is laid out NHWC (under performance.channels_last), else NCHW."""
    nhwc = tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if nhwc and not tensor.is_contiguous() else torch.contiguous_format


def _allocate(size: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Room for `size` items shaped like one row of `like`, in its memory format."""
    shape = (size, *like.shape[1:])
    return torch.empty(shape, dtype=dtype, device=like.device, memory_format=_memory_format(like))


class TeacherFeatureCache:
    """What stage 2 calls instead of the teacher: stored output where it is kept, the teacher elsewhere.

    One store per dataset (the train split, the validation split), sized when its first batch arrives,
    under one memory budget; a dataset that does not fit, or whose items are not the same every epoch
    (a random transform, synthetic anomalies), is served by the teacher, with one log line saying why.

    `TeacherOutput.features` (the unamplified levels) is not kept: stage 2 reads the amplified
    features (and the gates), so cached outputs carry an empty list there.
    """

    def __init__(self, settings: FeatureCacheSettings, processes_per_host: int = 1) -> None:
        if settings.dtype not in DTYPES:
            raise ValueError(f"feature_cache.dtype={settings.dtype!r}: pass one of {', '.join(DTYPES)}.")
        self.settings = settings
        self.dtype = DTYPES[settings.dtype]
        self.processes_per_host = processes_per_host
        self.budget: int | None = None if settings.max_gb is None else int(settings.max_gb * 1e9)
        self.stores: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # dataset → store or None
        self.checks: list[IndependenceCheck] = []  # made in a step, read by `verify` (no step waits)

    def verify(self) -> None:
        """Raise FeatureCacheError if a check made since the last call found the teacher mixing images.
        Called at the end of an epoch: reading the result waits for the device, which no step may."""
        checks, self.checks = self.checks, []
        for check in checks:
            check.verify()

    def __call__(
        self, teacher: Teacher, images: torch.Tensor, dataset: object, indices: Sequence[int] | None
    ) -> TeacherOutput:
        """The teacher's output for `images`, the items `indices` of `dataset` (None: not from one)."""
        if not self.settings.enabled or indices is None or self.stores.get(dataset, True) is None:
            return _no_grad(teacher, images)
        index = np.asarray(indices, dtype=np.int64)
        store = self.stores.get(dataset)
        if store is not None and not len(store.missing(index)):
            return store.read(index)
        out = _no_grad(teacher, images)  # the whole batch, as uncached (see the module docstring)
        if store is None:
            store = self._open(dataset, out)
            if store is None:
                return out
            store.probe = Probe(int(index[0]), images[0].clone(), len(index))
        elif store.probe is not None and store.probe.batch_size == len(index):
            stored = store.read(np.array([store.probe.index]))
            self.checks.append(independence_check(teacher, images, store.probe, stored, self.dtype))
            store.probe = None
        positions = store.missing(index)
        store.write(index[positions], _rows(out, positions))
        return store.read(index)  # read back even when all new: every epoch sees the same stored values

    def _open(self, dataset: object, like: TeacherOutput) -> FeatureStore | None:
        """Size the store of `dataset` on its first batch, or decide (and say once) that it stays off."""
        reason = self._refusal(dataset, like)
        if reason is not None:
            log.info("Stage-2 feature cache off for %s: %s; its teacher features are recomputed.",
                     _name(dataset), reason)  # fmt: skip
            self.stores[dataset] = None
            return None
        store = FeatureStore(dataset.skip_image, like, self.dtype)
        self.budget -= store.nbytes()
        log.info("Stage-2 feature cache on for %s: %s (%s) on %s.", _name(dataset), _size(store.nbytes()),
                 self.settings.dtype, like.amplified[0].device)  # fmt: skip
        self.stores[dataset] = store
        return store

    def _refusal(self, dataset: object, like: TeacherOutput) -> str | None:
        if not getattr(dataset, "reusable", False) or not hasattr(dataset, "skip_image"):
            return "its items are not the same every epoch (a random transform or synthetic anomalies)"
        device = like.amplified[0].device
        if self.budget is None:
            share = self.settings.default_fraction / (self.processes_per_host if device.type == "cpu" else 1)
            self.budget = int(free_bytes(device) * share)
        needed = len(dataset) * FeatureStore.item_bytes(like, self.dtype)
        if needed > self.budget:
            return (f"they need {_size(needed)} ({self.settings.dtype}), over the "
                    f"{_size(self.budget)} left of the budget (distill.feature_cache.max_gb; default "
                    f"{self.settings.default_fraction:g} of the free {device.type} memory)")  # fmt: skip
        return None


def _name(dataset: object) -> str:
    return f"the {len(dataset)} images of a {getattr(dataset, 'mode', type(dataset).__name__)} dataset"


def _size(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e8 else f"{count / 1e6:.1f} MB"


def _rows(out: TeacherOutput, positions: np.ndarray) -> TeacherOutput:
    """The stored part of `out`: the batch rows at `positions`."""
    if len(positions) == len(out.amplified[0]):
        return out
    rows = torch.from_numpy(positions).to(out.amplified[0].device)
    return _from_kept([t.index_select(0, rows) for t in _kept(out)], len(out.amplified))


@dataclass
class Probe:
    """A store's first item, kept until the next batch of new images of the same size checks it."""

    index: int
    image: torch.Tensor
    batch_size: int


# Relative difference an item's features may show between two batches before it is more than rounding:
# kernels may reduce in another order (float32: ~1e-6 relative), while a teacher that mixes images
# (BatchNorm on batch statistics, dropout, stochastic depth) moves them by whole percents.
_INDEPENDENCE_TOLERANCE = {torch.bfloat16: 5e-2, torch.float16: 2e-2}
_FULL_PRECISION_TOLERANCE = 1e-3


@dataclass
class IndependenceCheck:
    """The largest relative difference of a probe's features between two batches (a device scalar)
    and the rounding allowed for it."""

    difference: torch.Tensor
    tolerance: float

    def verify(self) -> None:
        difference = float(self.difference)
        if difference > self.tolerance:
            raise FeatureCacheError(
                "The stage-2 feature cache cannot stand for this teacher: its output for an image changes "
                f"with the other images of the batch (by {difference:.1%} of its largest value; BatchNorm "
                "on batch statistics, dropout or stochastic depth do that), so pass "
                "distill.feature_cache.enabled=false."
            )


def independence_check(
    teacher: Teacher, images: torch.Tensor, probe: Probe, stored: TeacherOutput, dtype: torch.dtype
) -> IndependenceCheck:
    """Whether the teacher's output for an image depends on the other images of its batch.

    The uncached run puts each image in another batch every epoch; stored features stand for all of
    those calls only when they agree. So the probe's image is sent again as the uncached path would
    send it in a later epoch: at another position of a batch of other images (`images`, a later batch
    of the same size), and its `stored` output is compared with that fresh call (`dtype`: the cache's).
    """
    batch = images.clone()
    batch[-1] = probe.image
    fresh = _no_grad(teacher, batch)
    differences = []
    for kept, new in zip(_kept(stored), _kept(fresh), strict=True):
        a, b = kept[0].float(), new[-1].float()
        scale = a.abs().max()
        differences.append((a - b).abs().max() / torch.where(scale > 0, scale, torch.ones_like(scale)))
    dtypes = [dtype, *(t.dtype for t in _kept(fresh))]
    tolerance = max(_INDEPENDENCE_TOLERANCE.get(t, _FULL_PRECISION_TOLERANCE) for t in dtypes)
    return IndependenceCheck(torch.stack(differences).max(), tolerance)


def _no_grad(teacher: Teacher, images: torch.Tensor) -> TeacherOutput:
    with torch.no_grad():
        return teacher(images)
