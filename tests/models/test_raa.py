import math
from dataclasses import replace

import pytest
import torch

from aand_lightning.config import config_file
from aand_lightning.models.raa import (
    RAASettings,
    ResidualAnomalyAmplifier,
    forced_gate,
    sinusoidal_position_encoding,
)

# The RAA settings conf/raa/default.yaml gives (a level reads all but `enabled`, the teacher's).
RAA = RAASettings.from_config(config_file("raa/default.yaml"))


def test_position_encoding_layout():
    pe = sinusoidal_position_encoding(8, 3, 5)[0]
    # channel 0 = sin(x * 1), channel 1 = cos(x * 1): x varies along width, constant along height
    assert torch.allclose(pe[0, 1], torch.sin(torch.arange(5.0)))
    assert torch.allclose(pe[1, 2], torch.cos(torch.arange(5.0)))
    assert torch.allclose(pe[4, :, 0], torch.sin(torch.arange(3.0)))  # first y channel
    assert torch.allclose(pe[6, :, 3], torch.sin(torch.arange(3.0) * 10000 ** (-2 / 4)))
    with pytest.raises(ValueError):
        sinusoidal_position_encoding(6, 2, 2)


def test_gate_is_probability_and_forcing_replaces_it():
    torch.manual_seed(0)
    raa = ResidualAnomalyAmplifier(16, replace(RAA, num_prototypes=5))
    features = torch.randn(2, 16, 6, 7)
    amplified, gate = raa(features)
    assert gate.shape == (2, 1, 6, 7)
    assert ((gate > 0) & (gate < 1)).all()
    assert torch.allclose(amplified, features + gate * torch.tanh(raa.residual(features)) * features)

    forced = torch.zeros(2, 1, 6, 7)
    forced[:, :, 2:4, 3:5] = 1
    amplified_forced, gate_forced = raa(features, forced)
    assert torch.equal(gate_forced, gate)  # the predicted gate is still returned for the focal loss
    assert torch.equal(amplified_forced[..., 0:2, :], features[..., 0:2, :])  # w = 0 → unchanged
    inside = amplified_forced[..., 2:4, 3:5] - features[..., 2:4, 3:5]
    assert inside.abs().sum() > 0


def test_hidden_width_and_parameter_count_for_wide_resnet():
    levels = [ResidualAnomalyAmplifier(c, RAA) for c in (256, 512, 1024)]
    assert [lvl.query[0].out_channels for lvl in levels] == [512, 1024, 1024]
    total = sum(p.numel() for lvl in levels for p in lvl.parameters())
    assert math.isclose(total / 1e6, 11.7, abs_tol=0.1)  # the spec: about 11.7 M trainable


def test_forced_gate_pools_and_thresholds():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :4] = 1  # a full 4x4 block → one full cell at stride 4
    mask[..., 4, 4] = 1  # 1/16 of a cell → below 0.3
    gate = forced_gate(mask, (2, 2))
    assert gate[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_raa_compiles_to_one_graph_without_recompiling():
    """`performance.compile`: one graph per shape (a Python-side cache would force a recompile)."""
    torch._dynamo.reset()
    raa = ResidualAnomalyAmplifier(16, replace(RAA, num_prototypes=5))
    compiled = torch.compile(raa, backend="eager", fullgraph=True)
    features = torch.randn(2, 16, 6, 7)
    compiled(features)
    with torch._dynamo.config.patch(error_on_recompile=True):
        again, _ = compiled(features)
    assert torch.allclose(again, raa(features)[0])
