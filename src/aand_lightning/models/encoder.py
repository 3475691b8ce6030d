"""The frozen ImageNet encoder under the amplified teacher: a timm CNN cut to its stride-4/8/16 levels."""

from __future__ import annotations

import timm
import torch
from torch import nn

from aand_lightning.errors import ModelConfigError, did_you_mean
from aand_lightning.models.weights import load_into, resolve_state_dict

ENCODER_STRIDES = (4, 8, 16)


def feature_indices(name: str, strides: tuple[int, ...] = ENCODER_STRIDES) -> tuple[int, ...]:
    """Indices of timm's feature levels at the wanted strides (probed on the meta device: no memory, no
    weights), so an unknown or unusable `backbone.name` fails in a second, before any data is read."""
    if not timm.is_model(name):
        raise ModelConfigError(
            f"backbone.name={name} is not a timm model{did_you_mean(name, timm.list_models())}; pass a "
            "backbone= option (e.g. backbone=resnet18) or a name from timm.list_models()."
        )
    with torch.device("meta"):
        try:
            probe = timm.create_model(name, pretrained=False, features_only=True)
        except RuntimeError as error:  # e.g. a model timm builds without a features_only form
            raise ModelConfigError(
                f"backbone.name={name} has no feature levels in timm ({error}); choose a timm CNN with "
                "stride-4/8/16 levels (e.g. backbone=resnet18)."
            ) from None
    reductions = probe.feature_info.reduction()
    missing = [s for s in strides if s not in reductions]
    if missing:
        raise ModelConfigError(
            f"backbone.name={name} has feature strides {reductions}, not {list(strides)}; "
            "choose a timm CNN with stride-4/8/16 levels (e.g. backbone=resnet18)."
        )
    return tuple(reductions.index(s) for s in strides)


def _drop_unused_stages(model: nn.Module) -> None:
    """EfficientNet-style feature nets keep every block; the encoder never needs those after level 3.

    timm's EfficientNetFeatures counts the stem as stage 0, so block i feeds stage index i + 1.
    """
    stage_idx = getattr(model, "_stage_out_idx", None)
    blocks = getattr(model, "blocks", None)
    if stage_idx is not None and isinstance(blocks, nn.Sequential):
        model.blocks = blocks[: max(stage_idx)]


class Encoder(nn.Module):
    """Three feature levels of a pretrained CNN; weights frozen and BatchNorm always in eval mode."""

    def __init__(self, name: str = "wide_resnet50_2", weights: str | None = "imagenet") -> None:
        super().__init__()
        self.name = name
        self.backbone = timm.create_model(
            name, pretrained=False, features_only=True, out_indices=feature_indices(name)
        )
        _drop_unused_stages(self.backbone)
        state_dict = resolve_state_dict(name, weights)
        if state_dict is not None:
            load_into(self.backbone, state_dict)
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    @property
    def channels(self) -> list[int]:
        return list(self.backbone.feature_info.channels())

    def train(self, mode: bool = True) -> Encoder:
        """Ignore the mode for the backbone: its BN statistics are ImageNet's and must never drift."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone(images)
