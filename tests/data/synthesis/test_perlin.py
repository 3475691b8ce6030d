"""Perlin noise and masks: sizes, lattice zeros, scales, rotation, thresholds, reproducibility."""

import cv2
import numpy as np
import pytest

from aand_lightning.data.synthesis.perlin import perlin_mask, perlin_noise, rotated_window


@pytest.mark.parametrize(("height", "width"), [(256, 256), (200, 333), (37, 64), (1, 5)])
def test_mask_has_requested_non_square_size(height: int, width: int) -> None:
    mask = perlin_mask(height, width, np.random.default_rng(0))
    assert mask.shape == (height, width)
    assert mask.dtype == bool


def test_noise_is_zero_on_the_lattice_and_bounded() -> None:
    noise = perlin_noise(48, 40, (8, 10), np.random.default_rng(1))
    assert noise.shape == (48, 40)
    np.testing.assert_allclose(noise[::8, ::10], 0.0, atol=1e-6)
    assert np.abs(noise).max() <= 1.0
    assert np.abs(noise).max() > 0.2


def test_noise_is_smooth() -> None:
    noise = perlin_noise(64, 64, (16, 16), np.random.default_rng(2))
    assert np.abs(np.diff(noise, axis=0)).max() < 0.2
    assert np.abs(np.diff(noise, axis=1)).max() < 0.2


def test_same_seed_same_mask_other_seed_other_mask() -> None:
    first = perlin_mask(64, 96, np.random.default_rng(7))
    again = perlin_mask(64, 96, np.random.default_rng(7))
    masks = [perlin_mask(64, 96, np.random.default_rng(seed), threshold=0.0) for seed in (8, 9)]
    np.testing.assert_array_equal(first, again)
    assert (masks[0] != masks[1]).any()


def test_threshold_bounds() -> None:
    rng = np.random.default_rng(3)
    assert perlin_mask(50, 70, rng, threshold=1.5).sum() == 0
    assert perlin_mask(50, 70, rng, threshold=-1.5).all()


def _mean_blob_count(scale_exp: int) -> float:
    """Average number of blobs over a few masks at one fixed Perlin scale."""
    counts = []
    for seed in range(5):
        mask = perlin_mask(128, 128, np.random.default_rng(seed), scale_exp, scale_exp, threshold=0.0)
        counts.append(cv2.connectedComponents(mask.astype(np.uint8))[0] - 1)
    return float(np.mean(counts))


def test_finer_scale_gives_more_blobs() -> None:
    assert _mean_blob_count(5) > 4 * _mean_blob_count(1)


def test_rotation_by_90_degrees_turns_columns_into_rows() -> None:
    noise = perlin_noise(100, 100, (100, 5), np.random.default_rng(4))
    rotated = rotated_window(noise, 60, 60, 90.0)
    assert rotated.shape == (60, 60)
    along_x = np.abs(np.diff(rotated, axis=1)).mean()
    along_y = np.abs(np.diff(rotated, axis=0)).mean()
    assert along_y > 3 * along_x


def test_bad_scale_exponents_are_rejected() -> None:
    with pytest.raises(ValueError, match="min_scale_exp"):
        perlin_mask(8, 8, np.random.default_rng(0), min_scale_exp=3, max_scale_exp=2)
