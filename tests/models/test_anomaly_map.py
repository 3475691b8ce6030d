import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from aand_lightning.models.anomaly_map import (
    AnomalyMapGenerator,
    cosine_distance,
    gaussian_blur,
    gaussian_kernel1d,
)


@pytest.mark.parametrize("size", [(40, 52), (10, 12)])
def test_gaussian_blur_matches_scipy(size):
    rng = np.random.default_rng(0)
    maps = rng.random((2, 1, *size)).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(maps), gaussian_kernel1d(4.0)).numpy()
    reference = np.stack([gaussian_filter(m[0], sigma=4, mode="reflect")[None] for m in maps])
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_map_sums_levels_and_score_is_max():
    torch.manual_seed(0)
    teacher = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)]
    student = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)]
    generator = AnomalyMapGenerator(sigma=4.0)
    maps, scores = generator(teacher, student, (32, 32))
    raw = sum(
        torch.nn.functional.interpolate(
            cosine_distance(t, s)[:, None], size=(32, 32), mode="bilinear", align_corners=True
        )
        for t, s in zip(teacher, student, strict=True)
    )
    expected = gaussian_blur(raw, gaussian_kernel1d(4.0))
    assert torch.allclose(maps, expected)
    assert torch.equal(scores, maps.flatten(1).max(dim=1).values)
    identical, identical_scores = generator(teacher, teacher, (32, 32))
    assert identical.abs().max() < 1e-5 and identical_scores.abs().max() < 1e-5
