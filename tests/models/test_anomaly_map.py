import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from aand_lightning.models.anomaly_map import (
    AnomalyMapGenerator,
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
    """Expected value built without the module: cosine by hand, torch's bilinear resize, scipy's blur."""
    torch.manual_seed(0)
    teacher = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)]
    student = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)]
    generator = AnomalyMapGenerator(sigma=4.0)
    maps, scores = generator(teacher, student, (32, 32))

    def distance(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return 1 - (t * s).sum(1) / (t.norm(dim=1) * s.norm(dim=1))

    raw = sum(
        torch.nn.functional.interpolate(
            distance(t, s)[:, None], size=(32, 32), mode="bilinear", align_corners=True
        )
        for t, s in zip(teacher, student, strict=True)
    ).numpy()
    expected = np.stack([gaussian_filter(m[0], sigma=4, mode="reflect")[None] for m in raw])
    np.testing.assert_allclose(maps.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), expected.reshape(2, -1).max(1), atol=1e-5)
    assert torch.equal(scores, maps.flatten(1).max(dim=1).values)
    identical, identical_scores = generator(teacher, teacher, (32, 32))
    assert identical.abs().max() < 1e-5 and identical_scores.abs().max() < 1e-5
