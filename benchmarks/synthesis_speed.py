"""Synthetic anomaly throughput (images/s): one thread in one process, and a 2-worker DataLoader.

Usage: python benchmarks/synthesis_speed.py [--size 256] [--images 400] [--texture-dir DIR]
Prints a Markdown table. Timing starts after a warm-up, so one-off costs (procedural texture bank,
worker start-up) are left out; the target of the issue is >= 50 images/s on one core at 256 px.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from aand_lightning.data.synthesis.synthesizer import AnomalySynthesizer


def single_thread() -> None:
    """Pin OpenCV and torch to one thread, in this process or a DataLoader worker."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def pin_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: one thread per worker."""
    single_thread()


class SyntheticImages(Dataset):
    """Item i: the synthetic version of a fixed random image, seeded by i (as a datamodule would)."""

    def __init__(self, synthesizer: AnomalySynthesizer, size: int, length: int) -> None:
        self.synthesizer = synthesizer
        self.image = np.random.default_rng(0).random((size, size, 3), dtype=np.float32)
        self.foreground = np.ones((size, size), bool)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.synthesizer(self.image, self.foreground, np.random.default_rng(index))
        return torch.from_numpy(image), torch.from_numpy(mask)


def rate_in_process(dataset: SyntheticImages, warmup: int = 5) -> float:
    """Images per second, calling the dataset directly in this process."""
    for index in range(warmup):
        dataset[index]
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index]
    return len(dataset) / (time.perf_counter() - start)


def rate_in_loader(dataset: SyntheticImages, workers: int, batch_size: int = 16) -> float:
    """Images per second through a DataLoader, timed from the first batch on."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, worker_init_fn=pin_worker)
    batches = iter(loader)
    next(batches)
    start = time.perf_counter()
    count = sum(len(images) for images, _ in batches)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--texture-dir", default=None)
    args = parser.parse_args()
    single_thread()
    source = "ProceduralTextures" if args.texture_dir is None else args.texture_dir
    print(f"{args.size}x{args.size} px, {args.images} images, textures: {source}\n")
    print("| setting | clean_probability | images/s |")
    print("|---|---|---|")
    for clean_probability in (0.2, 0.0):
        synthesizer = AnomalySynthesizer(texture_dir=args.texture_dir, clean_probability=clean_probability)
        dataset = SyntheticImages(synthesizer, args.size, args.images)
        print(f"| 1 process, 1 thread | {clean_probability} | {rate_in_process(dataset):.1f} |")
        print(f"| DataLoader, 2 workers | {clean_probability} | {rate_in_loader(dataset, workers=2):.1f} |")


if __name__ == "__main__":
    main()
