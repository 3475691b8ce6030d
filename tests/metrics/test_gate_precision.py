"""The authors' stage-1 selection score, against a plain per-image, per-level loop."""

import numpy as np
import torch

from aand_lightning.metrics.gate_precision import gate_precision


def _restated(gates: list[np.ndarray], mask: np.ndarray) -> float:
    """One image: per level, the mask average-pooled to the level's size, > 0.3; precision of gate > 0.5,
    0 without a predicted positive; the mean over levels."""
    values = []
    for gate in gates:
        h, w = gate.shape
        pooled = mask.reshape(h, mask.shape[0] // h, w, mask.shape[1] // w).mean(axis=(1, 3)) > 0.3
        predicted = gate > 0.5
        values.append((predicted & pooled).sum() / predicted.sum() if predicted.any() else 0.0)
    return float(np.mean(values))


def test_gate_precision_is_the_authors_per_image_per_level_mean():
    generator = torch.Generator().manual_seed(0)
    gates = [torch.rand(4, 1, s, s, generator=generator) for s in (16, 8, 4)]
    gates[1][2] = 0.0  # no predicted positive at one level of one image: that level counts 0
    masks = (torch.rand(4, 1, 32, 32, generator=generator) > 0.6).float()
    masks[3] = 0.0  # a normal image: every predicted positive is false
    expected = [_restated([g[i, 0].numpy() for g in gates], masks[i, 0].numpy()) for i in range(4)]
    np.testing.assert_allclose(gate_precision(gates, masks).numpy(), expected, rtol=1e-6)
    assert gate_precision(gates, masks)[3] == 0.0
