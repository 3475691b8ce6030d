"""Stage 2's frozen teacher computed once per image: its features kept by sample id.

The teacher (backbone + RAA) is frozen with BatchNorm in eval mode, and a stage-2 training or
validation item is its file resized and normalised, so every epoch would recompute the same
features. Such items carry a sample id (data/datasets.py). The first time a batch holds an id, its
features are computed and stored on the training device; afterwards they are read back, and the
cache flags the id in `skip_image`, the flags the datamodule hands its loaders (shared memory, so
loader workers see them), which then stop decoding that image. The first epoch therefore costs what
an uncached one does, and each DDP rank stores only the items it sees.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from aand_lightning.errors import UserError
from aand_lightning.models.teacher import TeacherFeatures

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# What the cache calls for features: `models.teacher.Teacher`, or any callable that maps images alike.
TeacherFn = Callable[[torch.Tensor], TeacherFeatures]
# `distill.feature_cache.max_gb=null`: this share of the memory free on the training device.
DEFAULT_FRACTION = 0.5


class FeatureCacheError(UserError):
    """A cache setting is invalid, or the cache would hand stage 2 other features than the teacher
    gives it uncached."""


@dataclass(frozen=True)
class FeatureCacheSettings:
    """`distill.feature_cache` in the config, checked where it is built. `max_gb=None`:
    `DEFAULT_FRACTION` of the memory free on the training device when the store is sized (on the
    host: of MemAvailable, split between the processes of this machine)."""

    enabled: bool = True
    dtype: str = "float32"
    max_gb: float | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise FeatureCacheError(
                f"distill.feature_cache.dtype={self.dtype} is not valid; pass one of {', '.join(DTYPES)}."
            )
        number = isinstance(self.max_gb, (int, float)) and not isinstance(self.max_gb, bool)
        if self.max_gb is not None and not (number and self.max_gb >= 0):
            raise FeatureCacheError(
                f"distill.feature_cache.max_gb={self.max_gb} is not valid; pass a number of GB >= 0, or "
                "null for half the free memory of the training device."
            )


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
    """The stored teacher features of every sample id: per level a (N, C, H, W) tensor, and the flags.

    `stored` is the datamodule's shared `skip_image` tensor, read here through a numpy view so that
    the bookkeeping of a training step runs no torch op (nothing that would wait for an accelerator).
    """

    def __init__(self, stored: torch.Tensor, like: TeacherFeatures, dtype: torch.dtype) -> None:
        self.stored = stored.numpy()
        self.count = len(like.amplified)
        self.levels = [_allocate(len(stored), t, dtype) for t in _kept(like)]
        self.dtypes = [t.dtype for t in _kept(like)]
        self.probe: Probe | None = None  # the independence check still to make (independence_check)

    @staticmethod
    def item_bytes(like: TeacherFeatures, dtype: torch.dtype) -> int:
        return sum(t[0].numel() for t in _kept(like)) * torch.empty((), dtype=dtype).element_size()

    def nbytes(self) -> int:
        return sum(level.numel() * level.element_size() for level in self.levels)

    def missing(self, ids: np.ndarray) -> np.ndarray:
        """Positions in the batch whose id has nothing stored yet."""
        return np.flatnonzero(~self.stored[ids])

    def write(self, ids: np.ndarray, out: TeacherFeatures) -> None:
        rows = torch.from_numpy(ids).to(self.levels[0].device)
        for level, tensor in zip(self.levels, _kept(out), strict=True):
            level.index_copy_(0, rows, tensor.to(level.dtype))
        self.stored[ids] = True

    def read(self, ids: np.ndarray) -> TeacherFeatures:
        """The stored features of these ids, in the dtypes and memory format the teacher returned."""
        rows = torch.from_numpy(ids).to(self.levels[0].device)
        tensors = [
            level.index_select(0, rows).to(dtype).contiguous(memory_format=_memory_format(level))
            for level, dtype in zip(self.levels, self.dtypes, strict=True)
        ]
        return _from_kept(tensors, self.count)


def _kept(out: TeacherFeatures) -> list[torch.Tensor]:
    """What stage 2 reads of the teacher's output: the amplified levels, then the gates (if any)."""
    return [*out.amplified, *(out.gates or [])]


def _from_kept(tensors: list[torch.Tensor], count: int) -> TeacherFeatures:
    """`_kept`'s inverse: the first `count` tensors are the amplified levels, the rest the gates."""
    return TeacherFeatures(features=[], amplified=tensors[:count], gates=tensors[count:] or None)


def _memory_format(tensor: torch.Tensor) -> torch.memory_format:
    """channels_last when `tensor` is laid out NHWC (under performance.channels_last), else NCHW."""
    nhwc = tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if nhwc and not tensor.is_contiguous() else torch.contiguous_format


def _allocate(size: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Room for `size` items shaped like one row of `like`, in its memory format."""
    shape = (size, *like.shape[1:])
    return torch.empty(shape, dtype=dtype, device=like.device, memory_format=_memory_format(like))


class TeacherFeatureCache:
    """What stage 2 calls instead of the teacher: stored features where it has them, the teacher elsewhere.

    One store for every sample id (`skip_image`: one flag per id), sized when its first batch arrives,
    within a memory budget; if they do not fit, the teacher serves every batch, with one log line
    saying why. Items without an id (their content changes every epoch) always go to the teacher.
    `TeacherFeatures.features` (the unamplified levels) is not kept: stage 2 reads the amplified
    features (and the gates), so cached outputs carry an empty list there.
    """

    def __init__(
        self, settings: FeatureCacheSettings, skip_image: torch.Tensor, processes_per_host: int = 1
    ) -> None:
        self.settings = settings
        self.dtype = DTYPES[settings.dtype]
        self.skip_image = skip_image
        self.processes_per_host = processes_per_host
        self.budget: int | None = None if settings.max_gb is None else round(settings.max_gb * 1e9)
        self.store: FeatureStore | None = None
        self.off = not settings.enabled or len(skip_image) == 0
        self.checks: list[IndependenceCheck] = []  # made in a step, read by `verify` (no step waits)
        skip_image.zero_()  # a fresh cache: nothing stored, every image decoded

    def verify(self) -> None:
        """Raise FeatureCacheError if a check made since the last call found the teacher mixing images.
        Called at the end of an epoch: reading the result waits for the device, which no step may."""
        checks, self.checks = self.checks, []
        for check in checks:
            check.verify()

    def __call__(
        self, teacher: TeacherFn, images: torch.Tensor, ids: Sequence[int] | None
    ) -> TeacherFeatures:
        """The teacher's features for `images`, the items with sample ids `ids` (None: not reusable)."""
        if self.off or ids is None:
            return _no_grad(teacher, images)
        index = np.asarray(ids, dtype=np.int64)
        store = self.store
        if store is not None and not len(store.missing(index)):
            return store.read(index)
        out = _no_grad(teacher, images)  # the whole batch, as uncached (see the module docstring)
        if store is None:
            store = self._open(out)
            if store is None:
                return out
            store.probe = Probe(int(index[0]), images[0].clone(), len(index))
        elif store.probe is not None and store.probe.batch_size == len(index):
            stored = store.read(np.array([store.probe.sample_id]))
            self.checks.append(independence_check(teacher, images, store.probe, stored, self.dtype))
            store.probe = None
        positions = store.missing(index)
        store.write(index[positions], _rows(out, positions))
        return store.read(index)  # read back even when all new: every epoch sees the same stored values

    def _open(self, like: TeacherFeatures) -> FeatureStore | None:
        """Size the store on the first batch, or decide (and say once) that the cache stays off."""
        device = like.amplified[0].device
        if self.budget is None:
            share = DEFAULT_FRACTION / (self.processes_per_host if device.type == "cpu" else 1)
            self.budget = int(free_bytes(device) * share)
        count = len(self.skip_image)
        needed = count * FeatureStore.item_bytes(like, self.dtype)
        if needed > self.budget:
            log.info(
                "Stage-2 feature cache off: the %d train and validation images need %s (%s), over the %s "
                "budget (distill.feature_cache.max_gb; default %g of the free %s memory); their teacher "
                "features are recomputed.", count, _size(needed), self.settings.dtype, _size(self.budget),
                DEFAULT_FRACTION, device.type,
            )  # fmt: skip
            self.off = True
            return None
        self.store = FeatureStore(self.skip_image, like, self.dtype)
        log.info("Stage-2 feature cache on for %d train and validation images: %s (%s) on %s.", count,
                 _size(needed), self.settings.dtype, device)  # fmt: skip
        return self.store


def _size(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e8 else f"{count / 1e6:.1f} MB"


def _rows(out: TeacherFeatures, positions: np.ndarray) -> TeacherFeatures:
    """The stored part of `out`: the batch rows at `positions`."""
    if len(positions) == len(out.amplified[0]):
        return out
    rows = torch.from_numpy(positions).to(out.amplified[0].device)
    return _from_kept([t.index_select(0, rows) for t in _kept(out)], len(out.amplified))


@dataclass
class Probe:
    """A store's first item, kept until the next batch of new images of the same size checks it."""

    sample_id: int
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
    teacher: TeacherFn, images: torch.Tensor, probe: Probe, stored: TeacherFeatures, dtype: torch.dtype
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


def _no_grad(teacher: TeacherFn, images: torch.Tensor) -> TeacherFeatures:
    with torch.no_grad():
        return teacher(images)
