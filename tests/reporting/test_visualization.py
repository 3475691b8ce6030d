import numpy as np

from aand_lightning.reporting.visualization import heatmap_overlay, score_plots


def test_overlay_panel_has_contour_and_shared_colour_scale():
    image = np.full((32, 32, 3), 100, np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[8:16, 8:16] = True
    amap = np.zeros((32, 32), np.float32)
    panel = heatmap_overlay(image, amap, (0.0, 1.0), mask, score=0.5)
    assert panel.shape == (32, 64, 3)
    left = panel[:, :32]
    assert (left[8, 8:16] == (0, 255, 0)).all()  # ground-truth contour in green
    assert (left[20:, 20:] == 100).all()  # untouched away from the contour
    hot = heatmap_overlay(image, amap + 1.0, (0.0, 1.0))[:, 32:]
    cold = heatmap_overlay(image, amap, (0.0, 1.0))[:, 32:]
    assert hot[..., 0].mean() > cold[..., 0].mean()  # jet: high values are red


def test_score_plots_are_rgb_pictures():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(10), np.ones(10)].astype(int)
    roc, hist = score_plots(rng.normal(labels, 1.0), labels, "t")
    assert roc.ndim == 3 and roc.shape[2] == 3 and roc.dtype == np.uint8 and hist.shape == roc.shape
    assert roc.std() > 0
