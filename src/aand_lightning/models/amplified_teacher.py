"""The amplified teacher: the frozen encoder's levels, each followed by its own RAA module (in parallel)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aand_lightning.models.encoder import Encoder
from aand_lightning.models.raa import ResidualAnomalyAmplifier, forced_gate


@dataclass
class TeacherOutput:
    """Vanilla features, amplified features (what the student learns) and predicted gates per level;
    with a synthetic mask also the forced gates: each level's ground truth (stage 1's loss targets)."""

    features: list[torch.Tensor]
    amplified: list[torch.Tensor]
    gates: list[torch.Tensor] | None
    forced_gates: list[torch.Tensor] | None = None


def require_raa(enabled: bool, stage1: bool = False, fused: object = None) -> None:
    """The RD baseline (raa=off) has no RAA: no stage 1 to train it, no gate map to fuse (`fused`: the
    fusion setting when the fused map is on). The one rule and message for the config check and the
    modules; ValueError names the fix."""
    if enabled:
        return
    if stage1:
        raise ValueError(
            "stage=amplify trains RAA but raa.enabled=false; use stage=distill for the RD baseline."
        )
    if fused is not None:
        raise ValueError(
            f"anomaly_map.fusion={fused} fuses the RAA gate map, which raa=off does not have; "
            "pass anomaly_map.fusion=off for the RD baseline."
        )


class AmplifiedTeacher(nn.Module):
    """Encoder + one RAA per level. With `enabled=False` it is the plain RD teacher (the RD baseline).

    The next backbone stage always consumes the original features, so RAA never changes what deeper
    levels see; only the targets handed to the student are amplified. State dicts saved when the
    encoder was called `teacher` (`teacher.*` keys) still load.
    """

    def __init__(
        self,
        encoder: Encoder,
        enabled: bool,
        num_prototypes: int,
        temperature: float,
        max_hidden: int,
        eps: float,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.enabled = enabled
        self.raa = nn.ModuleList(
            [
                ResidualAnomalyAmplifier(c, num_prototypes, temperature, max_hidden, eps)
                for c in encoder.channels
            ]
            if enabled
            else []
        )
        self.register_load_state_dict_pre_hook(_rename_encoder_keys)

    @property
    def channels(self) -> list[int]:
        return self.encoder.channels

    def forward(
        self,
        images: torch.Tensor,
        mask: torch.Tensor | None = None,
        forcing: bool = False,
        mask_threshold: float = 0.3,
    ) -> TeacherOutput:
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
    ) -> TeacherOutput:
        """Apply each level's RAA; `forced_gates` replace the predicted gates in the residual."""
        if not self.enabled:
            return TeacherOutput(features, features, None)
        forced = forced_gates if forced_gates is not None else [None] * len(features)
        outputs = [raa(f, g) for raa, f, g in zip(self.raa, features, forced, strict=True)]
        return TeacherOutput(features, [o[0] for o in outputs], [o[1] for o in outputs])


def _rename_encoder_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Checkpoints and stage-1 artifacts written before the rename hold `teacher.*` for the encoder."""
    old = f"{prefix}teacher."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[f"{prefix}encoder.{key[len(old) :]}"] = state_dict.pop(key)
