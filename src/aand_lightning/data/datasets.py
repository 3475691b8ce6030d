"""One torch Dataset for every split: same loading, same batch fields, optional synthetic anomalies."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from aand_lightning.data.batch import Item
from aand_lightning.data.io import read_image, read_mask
from aand_lightning.data.preprocessing import Preprocessing
from aand_lightning.data.records import Sample
from aand_lightning.data.synthesis.foreground import ForegroundCache, ForegroundRule
from aand_lightning.data.synthesis.synthesizer import AnomalySynthesizer
from aand_lightning.data.transforms import Transform, apply_seeded, is_identity

Mode = Literal["normal", "synthetic", "test"]


class EpochSampler(DistributedSampler):
    """Seeded per-epoch shuffle that also hands the epoch to the dataset: yields (epoch, index).

    A DistributedSampler, so Lightning leaves it alone and calls `set_epoch`; the order and the
    synthetic anomalies of every epoch depend only on the seed, so a resumed run sees the same data.
    """

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, index) for index in super().__iter__())


class AnomalyDataset(Dataset):
    """Items are `Item`s (data/batch.py): image, mask, label, defect, path, sample id, and the foreground
    when synthetic; loaders collate them into `Batch`es.

    mode "normal": the files as they are (stage 2, validation); "test": with ground-truth masks (all
    zero, and `mask_known` False, for an anomalous image without a mask file);
    "synthetic": a DRAEM-style anomaly is pasted inside the foreground (stage 1). The anomaly of an
    item is a pure function of (seed, epoch, index): indexed with `(epoch, index)` (see EpochSampler)
    it changes every epoch yet is identical after resuming a run; a plain index means epoch 0 (a
    stable validation set). `augment` (albumentations, the training images' `augment` config) changes
    the resized image, its masks and foreground before any synthesis, seeded the same way.

    In "normal" mode without `augment` an item is its file resized and normalised and nothing else,
    the same every epoch: such items carry a `sample_id` (`first_id` + index), by which what was
    computed from them may be reused. `skip_image` (one flag per sample id, in shared memory so
    loader workers see it) marks the ids whose image is no longer needed (stage 2's feature cache
    holds their teacher features): they come without reading the file, with a zero image of the
    same shape.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        preprocessing: Preprocessing,
        mode: Mode = "normal",
        synthesizer: AnomalySynthesizer | None = None,
        foreground_rule: ForegroundRule | None = None,
        foreground_cache: ForegroundCache | None = None,
        seed: int = 0,
        first_id: int = 0,
        skip_image: torch.Tensor | None = None,
        augment: Transform | None = None,
    ) -> None:
        if mode == "synthetic" and synthesizer is None:
            raise ValueError("Synthetic-anomaly data needs a synthesizer (the `synthesis` config group).")
        self.samples = list(samples)
        self.preprocessing = preprocessing
        self.mode = mode
        self.synthesizer = synthesizer
        self.foreground_rule = foreground_rule or ForegroundRule()
        self.foreground_cache = foreground_cache or ForegroundCache(None)
        self.seed = seed
        self.first_id = first_id
        self.skip_image = skip_image
        self.augment = None if is_identity(augment) else augment

    @property
    def reusable(self) -> bool:
        """Whether an item is the same every epoch and needs nothing but its image (no random
        transform, no synthetic anomaly, no mask file), so what was computed from it may be reused."""
        return self.mode == "normal" and self.augment is None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> Item:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        sample = self.samples[index]
        sample_id = self.first_id + index if self.reusable else None
        if sample_id is not None and self.skip_image is not None and self.skip_image[sample_id]:
            height, width = self.preprocessing.image_size
            image, mask = torch.zeros(3, height, width), torch.zeros(1, height, width)
            return Item(image, mask, sample.label, sample.defect, str(sample.image), sample_id)
        image = read_image(sample.image)
        if self.mode == "test" and sample.mask is not None:
            mask = read_mask(sample.mask, size=image.shape[:2])
        else:
            mask = np.zeros(image.shape[:2], dtype=bool)
        foreground = (  # from the native image, before resizing, as the authors compute it
            self.foreground_cache.get(
                sample.image, image, self.foreground_rule, self.preprocessing.image_size
            )
            if self.mode == "synthetic"
            else None
        )
        out = self.preprocessing.resize(image=image, mask=mask.astype(np.uint8))
        image, mask = out["image"], out["mask"]
        rng = np.random.default_rng((self.seed, epoch, index))
        if self.augment is not None:
            image, mask, foreground = self._augmented(image, mask, foreground, rng)
        mask = mask.astype(np.float32)
        pixels = image.astype(np.float32) / 255.0
        label, foreground_tensor = sample.label, None
        if foreground is not None:
            pixels, mask = self.synthesizer(pixels, foreground, rng)
            foreground_tensor = torch.from_numpy(foreground.astype(np.float32))[None]
            label = int(mask.any())
        return Item(
            image=self.preprocessing.normalize(pixels),
            mask=torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None],
            label=label,
            defect=sample.defect,
            path=str(sample.image),
            sample_id=sample_id,
            foreground=foreground_tensor,
            mask_known=sample.mask_known,
        )

    def _augmented(
        self, image: np.ndarray, mask: np.ndarray, foreground: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The resized uint8 image, its uint8 mask and bool foreground (if any), augmented together."""
        masks = [mask] if foreground is None else [mask, foreground.astype(np.uint8)]
        out = apply_seeded(self.augment, rng, ("augment", "training image"), image, masks=masks)
        masks = out["masks"]
        return out["image"], masks[0], None if foreground is None else masks[1].astype(bool)
