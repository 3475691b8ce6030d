"""One torch Dataset for every split: same loading, same batch fields, optional synthetic anomalies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from aand_lightning.data.io import read_image, read_mask
from aand_lightning.data.records import Sample
from aand_lightning.data.synthesis.foreground import ForegroundCache, ForegroundRule
from aand_lightning.data.synthesis.synthesizer import AnomalySynthesizer
from aand_lightning.data.transforms import normalize, resize

Mode = Literal["normal", "synthetic", "test"]


class AnomalyDataset(Dataset):
    """Items are dicts: image (3,H,W), mask (1,H,W), label, defect, path (+ foreground when synthetic).

    mode "normal": the files as they are (stage 2, validation); "test": with ground-truth masks;
    "synthetic": a DRAEM-style anomaly is pasted inside the foreground (stage 1). Synthetic randomness
    comes from torch's per-worker RNG (different every epoch, reproducible under a seed) unless
    `fixed_seed` is set, which makes every item the same in every epoch (a stable validation set).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        mode: Mode = "normal",
        synthesizer: AnomalySynthesizer | None = None,
        foreground_rule: ForegroundRule | None = None,
        foreground_cache: ForegroundCache | None = None,
        fixed_seed: int | None = None,
    ) -> None:
        if mode == "synthetic" and synthesizer is None:
            raise ValueError("Synthetic-anomaly data needs a synthesizer (the `synthesis` config group).")
        self.samples = list(samples)
        self.resize = resize(image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.mode = mode
        self.synthesizer = synthesizer
        self.foreground_rule = foreground_rule or ForegroundRule()
        self.foreground_cache = foreground_cache or ForegroundCache(None)
        self.fixed_seed = fixed_seed

    def __len__(self) -> int:
        return len(self.samples)

    def _rng(self, index: int) -> np.random.Generator:
        if self.fixed_seed is not None:
            return np.random.default_rng((self.fixed_seed, index))
        return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = read_image(sample.image)
        if self.mode == "test" and sample.mask is not None:
            mask = read_mask(sample.mask, size=image.shape[:2])
        else:
            mask = np.zeros(image.shape[:2], dtype=bool)
        out = self.resize(image=image, mask=mask.astype(np.uint8))
        image, mask = out["image"], out["mask"].astype(np.float32)
        item = {"label": sample.label, "defect": sample.defect, "path": str(sample.image)}
        pixels = image.astype(np.float32) / 255.0
        if self.mode == "synthetic":
            foreground = self.foreground_cache.get(sample.image, image, self.foreground_rule)
            pixels, mask = self.synthesizer(pixels, foreground, self._rng(index))
            item["foreground"] = torch.from_numpy(foreground.astype(np.float32))[None]
            item["label"] = int(mask.any())
        item["image"] = normalize(pixels, self.mean, self.std)
        item["mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
        return item
