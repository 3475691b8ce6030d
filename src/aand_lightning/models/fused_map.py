"""The fused anomaly map: the RAA gate map joined to the teacher–student map, on normal-image statistics.

Stage 2's forward already runs the amplified teacher, so the gate map (stage 1's own detector) costs
one more smoothing. Each map is measured on held-out normal images (mean and spread of its pixels);
the gate map is moved onto the AAND map's normal mean and spread and the two are mixed with weight w:

    F = (1 − w)·A + w·(μ_A + σ_A·(G − μ_G)/σ_G)

w = 0 is the paper's map A bit for bit, w = 1 the normalised gate map, and F stays in A's units (so
overlays and thresholds read the same way). F only says *where*: the image score stays the paper's,
max A (`MapName.scored_by`). Why, and the measurements behind the rule: docs/fused-map.md.
"""

from __future__ import annotations

import math

import torch
from torch import nn

AUTO = "auto"
WEIGHT_CAP = 0.25


def gate_weight(normal_gate: torch.Tensor, anomalous_gate: torch.Tensor) -> float:
    """w = min(¼, r), r = (ḡ_anomalous − ḡ_normal) / (1 − ḡ_normal): how far the gate map moves from its
    level on normal pixels towards 1, its training target, on synthetic anomalies of held-out images.

    Measured in the gate's own units (a probability), so a gate that hardly moves gets no weight however
    much the σ-normalisation would magnify it. Synthetic anomalies are the gate's home ground: they can
    show a gate is weak, never that it sees real defects, so they earn it at most ¼ (`WEIGHT_CAP`).
    No anomalous pixel (an empty tensor) is no evidence: w = 0.
    """
    if anomalous_gate.numel() == 0:
        return 0.0
    normal_mean = normal_gate.double().mean()
    responsiveness = (anomalous_gate.double().mean() - normal_mean) / (1 - normal_mean).clamp_min(1e-12)
    return float(responsiveness.clamp(0.0, WEIGHT_CAP))


def parse_weight(setting: str | float) -> float | None:
    """`anomaly_map.fused_weight` → the fixed weight, or None for `auto` (the rule of `gate_weight`)."""
    if setting == AUTO:
        return None
    if isinstance(setting, (int, float)) and not isinstance(setting, bool) and 0.0 <= setting <= 1.0:
        return float(setting)
    raise ValueError(f"anomaly_map.fused_weight={setting!r} is not valid; pass auto or a weight in [0, 1].")


class FusedMap(nn.Module):
    """Buffers `weight` (w) and `stats` (μ_A, σ_A, μ_G, σ_G), NaN until `calibrate` has seen normal maps.

    Calibrated whether or not the fused map is the model's output, so a run can report it beside the
    paper's map.
    """

    def __init__(self, weight: str | float = AUTO) -> None:
        super().__init__()
        self.fixed_weight = parse_weight(weight)
        self.register_buffer("weight", torch.tensor(math.nan))
        self.register_buffer("stats", torch.full((4,), math.nan))

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.stats).all() and torch.isfinite(self.weight))

    @property
    def setting(self) -> str | float:
        """`anomaly_map.fused_weight` as parsed: auto or the fixed weight."""
        return AUTO if self.fixed_weight is None else self.fixed_weight

    def describe(self) -> dict[str, object]:
        """The setting, the weight in use and the normal statistics, as plain values (for metrics.json)."""
        mean_a, std_a, mean_g, std_g = self.stats.tolist()
        return {
            "fused_weight": self.setting,
            "weight": float(self.weight),
            "normal_stats": {"aand_mean": mean_a, "aand_std": std_a, "gate_mean": mean_g, "gate_std": std_g},
        }

    @torch.no_grad()
    def calibrate(
        self, aand: torch.Tensor, gate: torch.Tensor, anomalous_gate: torch.Tensor | None = None
    ) -> None:
        """Statistics from smoothed maps of normal images only; the weight is the fixed one, or
        `gate_weight` of the gate-map values inside synthetic anomalies (`anomalous_gate`)."""
        if self.fixed_weight is None and anomalous_gate is None:
            raise ValueError(
                "fused_weight=auto weighs the gate by its response to synthetic anomalies of held-out "
                "images; pass their gate-map values, or a fixed weight (anomaly_map.fused_weight=0.5)."
            )
        aand, gate = aand.double(), gate.double()
        self.stats.copy_(torch.stack([aand.mean(), aand.std(), gate.mean(), gate.std()]))
        weight = self.fixed_weight if self.fixed_weight is not None else gate_weight(gate, anomalous_gate)
        self.weight.fill_(weight)

    def forward(self, aand: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        stats, weight = self.stats.to(aand.dtype), self.weight.to(aand.dtype)
        mean_a, std_a, mean_g, std_g = stats[0], stats[1], stats[2], stats[3]
        gate_in_aand_units = mean_a + std_a * (gate - mean_g) / std_g.clamp_min(1e-12)
        return (1 - weight) * aand + weight * gate_in_aand_units
