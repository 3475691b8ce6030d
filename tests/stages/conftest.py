import dataclasses

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from aand_lightning.config import config_file
from aand_lightning.data.batch import Item, collate


class SyntheticBatches(Dataset):
    """Random images with a square synthetic anomaly in every other item."""

    def __init__(self, count: int = 4, size: int = 64) -> None:
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randn(count, 3, size, size, generator=gen)
        self.masks = torch.zeros(count, 1, size, size)
        self.masks[::2, :, 8:40, 8:40] = 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Item:
        foreground = torch.ones(1, *self.images.shape[-2:])
        label = int(self.masks[i].any())
        return Item(self.images[i], self.masks[i], label, "square", f"{i}.png", foreground=foreground)


class IndexedBatches(SyntheticBatches):
    """Fixed items with a sample id: stage 2's feature cache stores and then serves them. The dataset
    also holds the skip flags (one per id) that a datamodule would own and hand to the stage."""

    def __init__(self) -> None:
        super().__init__()
        self.skip_image = torch.zeros(len(self), dtype=torch.bool)

    def __getitem__(self, i: int) -> Item:
        return dataclasses.replace(super().__getitem__(i), sample_id=i)


@pytest.fixture
def resnet18_backbone() -> dict:
    """A tiny untrained teacher with RD's resnet18 student (basic blocks)."""
    return {**config_file("backbone/resnet18.yaml"), "weights": "none"}


@pytest.fixture
def loader() -> DataLoader:
    return DataLoader(SyntheticBatches(), batch_size=2, collate_fn=collate)


@pytest.fixture
def indexed_loader() -> DataLoader:
    return DataLoader(IndexedBatches(), batch_size=2, collate_fn=collate)


@pytest.fixture
def one_step_trainer(tmp_path):
    def make() -> L.Trainer:
        return L.Trainer(
            max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        )  # fmt: skip

    return make
