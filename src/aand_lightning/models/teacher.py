"""The teacher: the frozen encoder's levels, each followed by its own RAA module (in parallel).

Without RAA (`raa.enabled=false`) it is the plain reverse-distillation teacher of the RD baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aand_lightning.models.encoder import Encoder
from aand_lightning.models.raa import RAASettings, ResidualAnomalyAmplifier, forced_gate
from aand_lightning.models.vit_encoder import ViTEncoder


@dataclass
class TeacherFeatures:
    """What the teacher gives for a batch, per level: the encoder's features, the targets the student
    learns (the amplified features; the features themselves without RAA) and the predicted gates (None
    without RAA); with a synthetic mask also the forced gates, each level's ground truth (stage 1)."""

    features: list[torch.Tensor]
    amplified: list[torch.Tensor]
    gates: list[torch.Tensor] | None
    forced_gates: list[torch.Tensor] | None = None


def require_raa(enabled: bool, stage1: bool = False, fused: bool = False) -> None:
    """The RD baseline (raa=off) has no RAA: no stage 1 to train it, no gate map to fuse (`fused`: the
    fused map is the output). The one rule and message for the config check and the modules;
    ValueError names the fix."""
    if enabled:
        return
    if stage1:
        raise ValueError(
            "stage=amplify trains RAA but raa.enabled=false; use stage=distill for the RD baseline."
        )
    if fused:
        raise ValueError(
            "anomaly_map.output=fused fuses the RAA gate map, which raa=off does not have; "
            "pass anomaly_map.output=aand for the RD baseline."
        )


class Teacher(nn.Module):
    """Encoder + one RAA per level when `raa.enabled` (AAND), the encoder alone otherwise (RD).

    The next backbone stage always consumes the original features, so RAA never changes what deeper
    levels see; only the targets handed to the student are amplified.
    """

    def __init__(self, encoder: Encoder | ViTEncoder, raa: RAASettings) -> None:
        super().__init__()
        self.encoder = encoder
        self.amplifies = raa.enabled
        self.raa = nn.ModuleList(
            [ResidualAnomalyAmplifier(c, raa) for c in encoder.channels] if raa.enabled else []
        )

    @property
    def channels(self) -> list[int]:
        return self.encoder.channels

    def forward(
        self,
        images: torch.Tensor,
        mask: torch.Tensor | None = None,
        forcing: bool = False,
        mask_threshold: float = 0.3,
    ) -> TeacherFeatures:
        """Stage 1 in one call: with the synthetic `mask` (B,1,H,W) the output carries each level's forced
        gate (`forced_gate` at `mask_threshold`); `forcing` (stage-1 training) puts them in place of the
        predicted gates in the residual. The predicted gates are returned either way."""
        if forcing and mask is None:
            raise ValueError("Forcing the RAA gates needs the synthetic mask; pass mask=<(B,1,H,W) tensor>.")
        with torch.no_grad():
            features = self.encoder(images)
        forced = None if mask is None else [forced_gate(mask, f.shape[-2:], mask_threshold) for f in features]
        out = self.amplify(features, forced if forcing else None)
        out.forced_gates = forced
        return out

    def amplify(
        self, features: list[torch.Tensor], forced_gates: list[torch.Tensor] | None = None
    ) -> TeacherFeatures:
        """Apply each level's RAA; `forced_gates` replace the predicted gates in the residual."""
        if not self.amplifies:
            return TeacherFeatures(features, features, None)
        forced = forced_gates if forced_gates is not None else [None] * len(features)
        outputs = [raa(f, g) for raa, f, g in zip(self.raa, features, forced, strict=True)]
        return TeacherFeatures(features, [o[0] for o in outputs], [o[1] for o in outputs])
