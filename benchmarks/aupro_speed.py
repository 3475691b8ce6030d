"""Time AUPRO on an MVTec-sized test set (default 100 maps of 256x256, ~300 regions) on one CPU thread.

Run: python benchmarks/aupro_speed.py [--images 100] [--size 256] [--repeats 7]
Prints the median wall time of several repeats for each function; the target is aupro < 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from aand_lightning.metrics.aupro import aupro, label_regions, per_image_pro

BLOBS_PER_IMAGE = 3


def make_test_set(images: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth noisy maps and masks of a few random discs per image, the maps slightly higher on the discs."""
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.randint(0, size, (images, BLOBS_PER_IMAGE, 2, 1, 1), generator=generator)
    radii = torch.randint(3, size // 10, (images, BLOBS_PER_IMAGE, 1, 1), generator=generator)
    distances = (ys - centres[:, :, 0]) ** 2 + (xs - centres[:, :, 1]) ** 2
    masks = (distances <= radii**2).any(dim=1)
    noise = torch.rand(images, 1, size, size, generator=generator)
    maps = F.avg_pool2d(noise, 9, stride=1, padding=4).squeeze(1) + 0.2 * masks
    return maps, masks


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of repeated calls, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    maps, masks = make_test_set(args.images, args.size)
    regions = int(label_regions(masks).max())
    print(
        f"{args.images} maps of {args.size}x{args.size}, {regions} regions, threads=1, "
        f"median of {args.repeats}"
    )
    print(f"aupro = {aupro(maps, masks):.4f}, per_image_pro = {per_image_pro(maps, masks):.4f}")
    for name, function in [
        ("label_regions", lambda: label_regions(masks)),
        ("aupro", lambda: aupro(maps, masks)),
        ("per_image_pro", lambda: per_image_pro(maps, masks)),
    ]:
        print(f"{name:>14}: {median_seconds(function, args.repeats):.3f} s")


if __name__ == "__main__":
    main()
