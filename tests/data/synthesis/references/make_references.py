"""Write the per-op references of the texture augmenters: each imgaug port's output for fixed draws.

The references come from the functions of `data/synthesis/textures.py` before the augmenters became
albumentations transforms (commit 1195427). Regenerate them from that commit's package:

    git worktree add /tmp/refs 1195427
    PYTHONPATH=/tmp/refs/src python tests/data/synthesis/references/make_references.py

Each `<op>.npz` holds the input `image` (32x32 RGB), the values the op drew for a few seeds
(`param_<name>`, replayed here from the same seed; the replay is checked to consume the generator
exactly as the op does: three draws, one per colour space for brightness, one for the ops that draw
nothing) and the op's `outputs`. `test_augmenters.py` applies the new op with those
values and expects the same outputs, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import skimage.data

from aand_lightning.data.synthesis import textures

HERE = Path(__file__).parent
SEEDS = range(100)  # candidates, in order; an op keeps the first draws that add something (see `_keeps`)


def _image() -> np.ndarray:
    """A 32x32 photo crop with every level 0..255 in its first 8 rows (red) and green below 205, so the
    lookup-table ops meet every level and equalize meets a channel whose top level is not 255."""
    image = skimage.data.astronaut()[::16, ::16].copy()
    image[:8, :, 0] = np.arange(256, dtype=np.uint8).reshape(8, 32)
    image[..., 1] = (image[..., 1].astype(np.float32) * 0.8).astype(np.uint8)
    return image


def _gamma(rng: np.random.Generator) -> dict[str, object]:
    return {"gammas": rng.uniform(0.5, 2.0, size=3).astype(np.float32)}


def _brightness(rng: np.random.Generator) -> dict[str, object]:
    space = int(rng.integers(len(textures._BRIGHTNESS_SPACES)))
    multiply = rng.uniform(0.8, 1.2)
    add = int(np.round(rng.uniform(-30.0, 30.0)))
    return {"space": space, "multiply": multiply, "add": add, "multiply_first": rng.random() < 0.5}


def _sharpness(rng: np.random.Generator) -> dict[str, object]:
    return {"factor": rng.uniform(0.0, 2.0)}


def _hue_saturation(rng: np.random.Generator) -> dict[str, object]:
    hue, saturation = rng.integers(-50, 51, size=2)
    return {"hue": int(hue), "saturation": int(saturation)}


def _solarize(rng: np.random.Generator) -> dict[str, object] | None:
    if rng.random() >= 0.5:
        return None  # not applied: nothing to pin
    return {"cut": int(rng.uniform(32.0, 128.0))}


def _posterize(rng: np.random.Generator) -> dict[str, object]:
    return {"num_bits": int(rng.integers(1, 9))}


def _nothing(rng: np.random.Generator) -> dict[str, object]:
    return {}


def _autocontrast(rng: np.random.Generator) -> dict[str, object]:
    return {"cutoff": int(rng.integers(0, 21))}


def _rotate(rng: np.random.Generator) -> dict[str, object]:
    return {"angle": rng.uniform(-45.0, 45.0)}  # imgaug's sign: positive turns clockwise on screen


# op name -> (the old function, the replay of its draws)
OPS: dict[str, tuple[Callable, Callable]] = {
    "gamma_contrast": (textures.gamma_contrast, _gamma),
    "brightness": (textures.brightness, _brightness),
    "sharpness": (textures.sharpness, _sharpness),
    "hue_saturation": (textures.hue_saturation, _hue_saturation),
    "solarize": (textures.solarize, _solarize),
    "posterize": (textures.posterize, _posterize),
    "invert": (textures.invert, _nothing),
    "autocontrast": (textures.autocontrast, _autocontrast),
    "equalize": (textures.equalize, _nothing),
    "rotate": (textures.rotate, _rotate),
}


def _keeps(name: str, values: dict[str, object], kept: list[dict[str, object]]) -> bool:
    """Whether a draw is worth a reference: every colour space once for brightness, three draws for the
    other ops that draw, one call for those that draw nothing."""
    if name == "brightness":
        return values["space"] not in {k["space"] for k in kept}
    return len(kept) < (3 if values else 1)


def main() -> None:
    image = _image()
    for name, (op, replay) in OPS.items():
        params: list[dict[str, object]] = []
        outputs: list[np.ndarray] = []
        for seed in SEEDS:
            drawn, applied = np.random.default_rng(seed), np.random.default_rng(seed)
            values = replay(drawn)
            output = op(image.copy(), applied)
            assert drawn.bit_generator.state == applied.bit_generator.state, f"{name}: replay differs"
            if values is not None and _keeps(name, values, params):
                params.append(values)
                outputs.append(output)
        if name == "brightness":
            assert len(params) == len(textures._BRIGHTNESS_SPACES), "a colour space was never drawn"
        arrays = {f"param_{key}": np.array([p[key] for p in params]) for key in params[0]}
        np.savez_compressed(HERE / f"{name}.npz", image=image, outputs=np.stack(outputs), **arrays)
        print(f"{name}: {', '.join(arrays) or 'no parameters'}")


if __name__ == "__main__":
    main()
