"""One LightningDataModule for every dataset: readers differ only in how they list files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from aand_lightning.data.batch import collate
from aand_lightning.data.datasets import AnomalyDataset, EpochSampler, Mode
from aand_lightning.data.io import check_samples
from aand_lightning.data.preprocessing import Preprocessing
from aand_lightning.data.records import DatasetError, Sample, SampleSource, Splits
from aand_lightning.data.synthesis.foreground import ForegroundCache, select_rule
from aand_lightning.data.synthesis.synthesizer import AnomalySynthesizer
from aand_lightning.data.transforms import Transform

NormalSplit = Literal["train", "val"]


def split_validation(train: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out a seeded random `fraction` of the normal training images for validation."""
    if fraction <= 0 or len(train) < 2:
        return train, []
    count = min(len(train) - 1, max(1, round(fraction * len(train))))
    held = set(np.random.default_rng(seed).permutation(len(train))[:count].tolist())
    return [s for i, s in enumerate(train) if i not in held], [s for i, s in enumerate(train) if i in held]


class AnomalyDataModule(L.LightningDataModule):
    """Normal train images (with synthetic anomalies for stage 1), normal validation images, the test set.

    Validation is a held-out fraction of train/good, never the test set, unless `validate_on_test`
    is set to reproduce the authors' protocol (which selects on the test set; label your results).
    `synthetic_train` (set by the entry point for stage 1) puts synthetic anomalies into the train and
    validation images. `augment` (albumentations) changes the normal training images of both stages,
    before synthesis, and no other image. Calibration gets its images here too, by name:
    `normal_images` and `synthetic_anomalies` of a split. The train and validation items of the
    loaders carry sample ids (train first, then validation) and skip decoding the ids flagged in
    `skip_image`.
    """

    def __init__(
        self,
        source: SampleSource,
        preprocessing: Preprocessing,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        val_fraction: float = 0.1,
        drop_last: bool = True,
        validate_on_test: bool = False,
        synthesizer: AnomalySynthesizer | None = None,
        augment: Transform | None = None,
        foreground_rules: Mapping | None = None,
        cache_dir: str | Path | None = None,
        on_corrupt: str = "error",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.source = source
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.drop_last = drop_last
        self.validate_on_test = validate_on_test
        self.synthesizer = synthesizer
        self.augment = augment
        self.foreground_rule = select_rule(foreground_rules or {}, source.category)
        self.foreground_cache = ForegroundCache(cache_dir)
        self.on_corrupt = on_corrupt
        self.seed = seed
        self.synthetic_train = False
        self.splits: Splits | None = None
        self.val_samples: list[Sample] = []
        self.skip_image = torch.zeros(0, dtype=torch.bool)

    @property
    def has_test(self) -> bool:
        """Whether there is a test split (a folder dataset may have training images only)."""
        self.setup()
        return bool(self.splits.test)

    @property
    def all_samples(self) -> list[Sample]:
        """Every sample of every split (train, validation, test): what the data source consists of."""
        self.setup()
        return [*self.splits.train, *self.val_samples, *self.splits.test]

    @property
    def category(self) -> str:
        return self.source.category

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        listed = self.source.splits()
        train = check_samples(listed.train, self.on_corrupt)
        if not train:
            raise DatasetError(
                f"No readable training image for category {self.category!r}; check the train folder of "
                "dataset.root (or set datamodule.on_corrupt=skip only if some files are damaged)."
            )
        train, self.val_samples = split_validation(train, self.val_fraction, self.seed)
        self.splits = Splits(train=train, test=check_samples(listed.test, self.on_corrupt))
        # in shared memory before any loader worker starts, so workers see the flags set later
        self.skip_image = torch.zeros(len(train) + len(self.val_samples), dtype=torch.bool).share_memory_()

    def dataset(
        self,
        samples: Sequence[Sample],
        mode: Mode,
        first_id: int = 0,
        skip_image: torch.Tensor | None = None,
        augment: Transform | None = None,
    ) -> AnomalyDataset:
        return AnomalyDataset(
            samples, self.preprocessing, mode, self.synthesizer, self.foreground_rule,
            self.foreground_cache, self.seed, first_id, skip_image, augment,
        )  # fmt: skip

    def _split(self, split: NormalSplit) -> tuple[list[Sample], int]:
        """The normal images of a split and the sample id of its first."""
        assert self.splits is not None
        return (self.splits.train, 0) if split == "train" else (self.val_samples, len(self.splits.train))

    def _fit_dataset(self, split: NormalSplit) -> AnomalyDataset:
        samples, first_id = self._split(split)
        mode: Mode = "synthetic" if self.synthetic_train else "normal"
        augment = self.augment if split == "train" else None
        return self.dataset(samples, mode, first_id, self.skip_image, augment)

    def _world(self) -> tuple[int, int]:
        return (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)

    def loader(self, dataset: AnomalyDataset, batch_size: int, train: bool = False) -> DataLoader:
        """The loader every split uses; `train` makes it resumable (order from seed and epoch only)."""
        world_size, rank = self._world()
        if train:  # resumable: order and synthesis depend only on (seed, epoch)
            sampler = EpochSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=self.seed)
        elif world_size > 1:  # every evaluation image exactly once: padding duplicates would bias metrics
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
        else:
            sampler = None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=self.drop_last and train and len(dataset) > batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=False,
            collate_fn=collate,
        )

    def normal_images(self, split: NormalSplit) -> DataLoader:
        """The normal images of a split, decoded (calibration: thresholds, the fused map's statistics)."""
        return self.loader(self.dataset(self._split(split)[0], "normal"), self.eval_batch_size)

    def synthetic_anomalies(self, split: NormalSplit, draws: int) -> DataLoader | None:
        """`draws` synthetic anomalies on each normal image of a split (synthesis epochs 0..draws-1), the
        same on every rank and in every run: checks on held-out images (the fused map's gate weight).
        None without a synthesizer."""
        if self.synthesizer is None:
            return None
        dataset = self.dataset(self._split(split)[0], "synthetic")
        keys = [(draw, index) for draw in range(draws) for index in range(len(dataset))]
        return DataLoader(
            dataset, batch_size=self.eval_batch_size, sampler=keys, num_workers=self.num_workers,
            collate_fn=collate,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self.loader(self._fit_dataset("train"), self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader | list:
        assert self.splits is not None
        if self.validate_on_test:
            return self.test_dataloader()
        if not self.val_samples:
            return []
        return self.loader(self._fit_dataset("val"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        assert self.splits is not None
        if not self.splits.test:
            raise DatasetError(
                f"Category {self.category!r} has no test image; check the test folder of dataset.root."
            )
        return self.loader(self.dataset(self.splits.test, "test"), self.eval_batch_size)
