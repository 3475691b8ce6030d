"""Generate the demo textures with defect kinds that neither the demo nor stage-1's synthesis draws.

The demo's defects (scratch, stain, pasted patch) look like stage 1's synthetic anomalies, so the RAA
gate finds them easily there. This set keeps the demo's normal images (same photos, crops and tints)
and draws four other kinds, each a change of the texture itself rather than something pasted on it:
blur, swirl, tint (colour cast) and scale (the texture at twice its size). It is a check for the
fused map's weighting, not a benchmark of AAND. MVTec layout, so it runs with `dataset=mvtec`:

  python benchmarks/unseen_defects.py data/unseen_defects
  python -m aand_lightning.train -m dataset=mvtec dataset.root=data/unseen_defects \\
      dataset.category=brick,grass,gravel 'dataset.foreground_rules.default={kind: whole}' ...
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2
import numpy as np
from skimage.transform import swirl

from aand_lightning.data.demo import CATEGORIES, DefectMaker, normal_view, write_category


def _ellipse(size: int, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """A filled random ellipse (bool mask) away from the border."""
    region = np.zeros((size, size), np.uint8)
    centre = tuple(int(c) for c in rng.uniform(0.25 * size, 0.75 * size, 2))
    axes = tuple(int(a) for a in rng.uniform(low, high, 2) * size)
    cv2.ellipse(region, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return region > 0


def _blur(image: np.ndarray, rng: np.random.Generator, source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An out-of-focus ellipse: the texture's detail is gone, its colour stays."""
    region = _ellipse(image.shape[0], rng, 0.08, 0.18)
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=float(rng.uniform(2.0, 3.5)))
    return np.where(region[..., None], blurred, image), region


def _swirl(image: np.ndarray, rng: np.random.Generator, source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A twisted disc: the same pixels, displaced."""
    size = image.shape[0]
    radius = float(rng.uniform(0.12, 0.2) * size)
    centre = rng.uniform(0.3 * size, 0.7 * size, 2)
    twisted = swirl(image, center=tuple(centre), strength=float(rng.uniform(3, 6)), radius=radius)
    yy, xx = np.mgrid[:size, :size]
    region = (yy - centre[1]) ** 2 + (xx - centre[0]) ** 2 < (0.9 * radius) ** 2
    return np.where(region[..., None], np.rint(twisted * 255), image).astype(np.uint8), region


def _tint(image: np.ndarray, rng: np.random.Generator, source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A colour cast (hue turned by 60–120 degrees) inside an ellipse; brightness unchanged."""
    region = _ellipse(image.shape[0], rng, 0.1, 0.2)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.int32)
    hsv[..., 0] = (hsv[..., 0] + int(rng.integers(30, 61))) % 180
    hsv[..., 1] = np.maximum(hsv[..., 1], 90)
    cast = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    return np.where(region[..., None], cast, image), region


def _scale(image: np.ndarray, rng: np.random.Generator, source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same texture at twice its size inside an ellipse: right material, wrong structure."""
    size = image.shape[0]
    region = _ellipse(size, rng, 0.12, 0.22)
    zoomed = cv2.resize(normal_view(source, rng, size), (2 * size, 2 * size))[:size, :size]
    return np.where(region[..., None], zoomed, image), region


DEFECTS: dict[str, DefectMaker] = {"blur": _blur, "swirl": _swirl, "tint": _tint, "scale": _scale}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", type=Path)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--test-from-train-part", action="store_true",
        help="crop test images from the train part of each photo (test normals like validation ones)",
    )  # fmt: skip
    parser.add_argument(
        "--test-sets", type=int, default=1,
        help="draw the test split this many times (more test images, finer metrics; same train split)",
    )  # fmt: skip
    parser.add_argument("--demo-defects", action="store_true", help="the demo's own defect kinds instead")
    args = parser.parse_args()
    if args.test_sets < 1:
        parser.error(f"--test-sets {args.test_sets} draws no test split; pass 1 or more.")
    defects = None if args.demo_defects else DEFECTS
    for category in CATEGORIES:
        for part in range(args.test_sets):
            _write_part(args, category, defects, part)
    kinds = "the demo's" if args.demo_defects else ", ".join(DEFECTS)
    print(f"Wrote {', '.join(CATEGORIES)} with defects {kinds} to {args.root}")


def _write_part(args: argparse.Namespace, category: str, defects: dict | None, part: int) -> None:
    """Part 0 is the whole category; each further part is another draw of the test split, whose images
    and masks join part 0's under a `p<part>_` prefix."""
    target = args.root / category
    folder = target if part == 0 else args.root / f".part{part}" / category
    stream = (1,) if part == 0 else (1, part)
    write_category(
        folder, category, args.seed, args.size, defects, stream=stream,
        test_from_train_part=args.test_from_train_part,
    )  # fmt: skip
    if part == 0:
        return
    for split in ("test", "ground_truth"):
        for path in sorted((folder / split).rglob("*.png")):
            destination = target / split / path.parent.name / f"p{part}_{path.name}"
            destination.parent.mkdir(parents=True, exist_ok=True)
            path.replace(destination)
    shutil.rmtree(folder.parent)


if __name__ == "__main__":
    main()
