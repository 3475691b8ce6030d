"""Rotated, thresholded Perlin noise: the shape of a DRAEM-style synthetic anomaly."""

from __future__ import annotations

import math

import cv2
import numpy as np

# The values of synthesis.noise_rotation: how the noise is rotated (see perlin_mask).
NOISE_ROTATIONS = ("canvas", "affine_zero_corners")


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic fade 6t^5 - 15t^4 + 10t^3: smooth at cell borders."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(height: int, width: int, cell: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Perlin noise of shape (height, width) in about [-1, 1], with cells of `cell` = (rows, cols) pixels.

    The image is laid out as (cells_y, cell_rows, cells_x, cell_cols) so every step broadcasts
    small per-cell and per-offset arrays instead of repeating the gradient lattice per pixel.
    """
    cell_h, cell_w = cell
    cells_y, cells_x = -(-height // cell_h), -(-width // cell_w)
    angles = rng.uniform(0.0, 2.0 * math.pi, size=(cells_y + 1, cells_x + 1))
    grad_y, grad_x = np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)
    offset_y = (np.arange(cell_h, dtype=np.float32) / cell_h)[None, :, None, None]
    offset_x = (np.arange(cell_w, dtype=np.float32) / cell_w)[None, None, None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        """Dot product of each cell's (dy, dx) corner gradient with the offset from that corner."""
        gy = grad_y[dy : dy + cells_y, dx : dx + cells_x][:, None, :, None]
        gx = grad_x[dy : dy + cells_y, dx : dx + cells_x][:, None, :, None]
        return gy * (offset_y - dy) + gx * (offset_x - dx)

    fade_y, fade_x = _fade(offset_y), _fade(offset_x)
    top = corner(0, 0)
    top += fade_x * (corner(0, 1) - top)
    bottom = corner(1, 0)
    bottom += fade_x * (corner(1, 1) - bottom)
    noise = math.sqrt(2.0) * (top + fade_y * (bottom - top))
    return noise.reshape(cells_y * cell_h, cells_x * cell_w)[:height, :width]


def rotated_window(
    noise: np.ndarray, height: int, width: int, angle: float, border: int = cv2.BORDER_REFLECT_101
) -> np.ndarray:
    """The centre (height, width) window of `noise` rotated by `angle` degrees about its centre.

    Bilinear; what lies beyond `noise` follows the cv2 `border` mode (BORDER_CONSTANT gives 0).
    """
    canvas_h, canvas_w = noise.shape
    matrix = cv2.getRotationMatrix2D(((canvas_w - 1) / 2.0, (canvas_h - 1) / 2.0), angle, 1.0)
    matrix[:, 2] += ((width - canvas_w) / 2.0, (height - canvas_h) / 2.0)
    return cv2.warpAffine(noise, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=border)


def perlin_mask(
    height: int,
    width: int,
    rng: np.random.Generator,
    min_scale_exp: int = 0,
    max_scale_exp: int = 5,
    threshold: float = 0.5,
    max_rotation: float = 90.0,
    noise_rotation: str = "canvas",
) -> np.ndarray:
    """A bool (height, width) blob mask: Perlin noise, rotated by U(-max_rotation, max_rotation), thresholded.

    The noise has 2**U{min..max} periods along each axis (drawn independently), as in DRAEM. Periods
    are rounded to whole pixels so any size works (not only powers of two). `noise_rotation`:
    "canvas" computes the noise on a canvas that covers the rotated image, so no corner of the mask is
    left without noise; "affine_zero_corners" is the authors' (DRAEM's imgaug Affine: noise at the
    image size, rotated about the centre, bilinear, uncovered corners filled with 0, which a threshold
    >= 0 never passes). imgaug's rotate=a is cv2's -a; for a range symmetric about 0 that is the same draw.
    """
    if height < 1 or width < 1:
        raise ValueError(f"Perlin mask size must be positive, got {height}x{width}; pass a real image size.")
    if not 0 <= min_scale_exp <= max_scale_exp:
        raise ValueError("Perlin scale exponents need 0 <= min_scale_exp <= max_scale_exp; fix the config.")
    if noise_rotation not in NOISE_ROTATIONS:
        raise ValueError(f"noise_rotation is {noise_rotation!r}; use one of {', '.join(NOISE_ROTATIONS)}.")
    periods_y, periods_x = 2 ** rng.integers(min_scale_exp, max_scale_exp + 1, size=2)
    angle = float(rng.uniform(-max_rotation, max_rotation))
    cell = (max(1, round(height / periods_y)), max(1, round(width / periods_x)))
    if noise_rotation == "affine_zero_corners":
        noise = perlin_noise(height, width, cell, rng)
        return rotated_window(noise, height, width, angle, cv2.BORDER_CONSTANT) > threshold
    cos, sin = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    canvas_h = math.ceil(height * cos + width * sin) + 2
    canvas_w = math.ceil(width * cos + height * sin) + 2
    noise = rotated_window(perlin_noise(canvas_h, canvas_w, cell, rng), height, width, angle)
    return noise > threshold
