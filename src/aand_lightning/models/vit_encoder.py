"""The frozen encoder of the authors' ViT variant: a timm CLIP ViT tapped after chosen blocks.

The taps are the patch tokens after blocks 4, 8 and 12 (no class token, before `ln_post`) as C×h×w
maps, so the RAA modules, the losses and the maps see the same (B, C, h, w) levels as from a CNN; the
levels differ from a CNN's only in sharing one size. The position embedding is resized from the
pretrained grid to the input's, bicubic without antialiasing, as the authors' loader does (at every
forward here, so the module takes any image size, like the CNN encoders).
"""

from __future__ import annotations

import re

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from aand_lightning.errors import ModelConfigError, did_you_mean
from aand_lightning.models.weights import StateDict, load_into, resolve_state_dict

_OPENAI_BLOCK = re.compile(r"visual\.transformer\.resblocks\.(\d+)\.(.+)")
_OPENAI_BLOCK_LAYERS = {
    "ln_1.": "norm1.",
    "attn.in_proj_": "attn.qkv.",
    "attn.out_proj.": "attn.proj.",
    "ln_2.": "norm2.",
    "mlp.c_fc.": "mlp.fc1.",
    "mlp.c_proj.": "mlp.fc2.",
}


def check_vit(name: str, taps: list[int], model_args: dict | None = None) -> None:
    """That timm's `name` (built with `model_args`, on the meta device) is a ViT with a class token and
    that every tap is one of its blocks; one sentence naming the fix otherwise."""
    if not timm.is_model(name):
        raise ModelConfigError(
            f"backbone.name={name} is not a timm model{did_you_mean(name, timm.list_models('vit_*'))}; "
            "pass backbone=clip_vit_b16 or a ViT name from timm.list_models('vit_*')."
        )
    try:
        with torch.device("meta"):
            probe = timm.create_model(name, pretrained=False, **(model_args or {}))
    except TypeError as error:  # an argument the model does not take
        raise ModelConfigError(
            f"backbone.model_args={dict(model_args or {})} does not build {name} ({error}); pass timm "
            "VisionTransformer arguments such as depth, embed_dim, num_heads, or backbone.model_args=null."
        ) from None
    if not isinstance(probe, VisionTransformer) or probe.cls_token is None:
        raise ModelConfigError(
            f"backbone.name={name} is not a timm VisionTransformer with a class token; backbone.family=vit "
            "needs one (e.g. backbone=clip_vit_b16), a CNN needs backbone.family=cnn."
        )
    depth = len(probe.blocks)
    if len(taps) != 3 or sorted(set(taps)) != list(taps) or not all(1 <= t <= depth for t in taps):
        raise ModelConfigError(
            f"backbone.taps={list(taps)} must be three increasing block numbers within the {depth} blocks of "
            f"{name} (the authors tap [4, 8, 12])."
        )


def resize_position_embedding(
    embedding: torch.Tensor, grid: tuple[int, int], prefix_tokens: int = 1
) -> torch.Tensor:
    """(1, prefix + g·g, C) position embeddings of a square grid g → (1, prefix + h·w, C) for `grid`
    (h, w): the patch part bicubic-resized without antialiasing (the authors' `resize_pos_embed`), the
    prefix (class token) part kept."""
    prefix, patches = embedding[:, :prefix_tokens], embedding[:, prefix_tokens:]
    side = round(patches.shape[1] ** 0.5)
    if (side, side) == tuple(grid):
        return embedding
    image = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=tuple(grid), mode="bicubic", align_corners=False)
    return torch.cat([prefix, image.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)], dim=1)


def openai_clip_to_timm(state_dict: StateDict) -> StateDict:
    """OpenAI CLIP's image tower keys (`visual.*`, as in their ViT-B-16.pt) → timm's VisionTransformer
    keys, one by one; the text tower, `ln_post` and `proj` (never used by the taps) are dropped."""
    top = {
        "visual.conv1.weight": "patch_embed.proj.weight",
        "visual.class_embedding": "cls_token",
        "visual.positional_embedding": "pos_embed",
        "visual.ln_pre.weight": "norm_pre.weight",
        "visual.ln_pre.bias": "norm_pre.bias",
    }
    out: StateDict = {}
    for key, tensor in state_dict.items():
        if key in top:  # timm keeps both embeddings with a leading batch axis
            out[top[key]] = tensor.reshape(1, -1, tensor.shape[-1]) if key.endswith("embedding") else tensor
            continue
        match = _OPENAI_BLOCK.fullmatch(key)
        if match is None:
            continue
        block, rest = match.groups()
        for theirs, ours in _OPENAI_BLOCK_LAYERS.items():
            if rest.startswith(theirs):
                out[f"blocks.{block}.{ours}{rest[len(theirs) :]}"] = tensor
    return out


class ViTEncoder(nn.Module):
    """Patch tokens of a pretrained ViT after the blocks `taps` (1-based), as (B, C, h, w) levels; frozen,
    the blocks past the last tap, the final norm and the head removed."""

    def __init__(
        self,
        name: str = "vit_base_patch16_clip_quickgelu_224.openai",
        weights: str | None = "openai",
        taps: tuple[int, ...] = (4, 8, 12),
        model_args: dict | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.taps = tuple(int(t) for t in taps)
        check_vit(name, list(self.taps), model_args)
        vit = timm.create_model(name, pretrained=False, **(model_args or {}))
        vit.blocks = vit.blocks[: max(self.taps)]
        vit.norm, vit.fc_norm, vit.head = nn.Identity(), nn.Identity(), nn.Identity()
        state_dict = resolve_state_dict(name, weights)
        if state_dict is not None:
            if any(key.startswith("visual.") for key in state_dict):
                state_dict = openai_clip_to_timm(state_dict)
            load_into(vit, state_dict)
        self.backbone = vit
        self.requires_grad_(False)
        self.eval()

    @property
    def channels(self) -> list[int]:
        return [self.backbone.embed_dim] * len(self.taps)

    def train(self, mode: bool = True) -> ViTEncoder:
        """Always eval: the encoder is frozen (no dropout or statistics to update)."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        vit = self.backbone
        patches = vit.patch_embed.proj(images)
        b, c, h, w = patches.shape
        tokens = torch.cat([vit.cls_token.expand(b, -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
        tokens = vit.norm_pre(tokens + resize_position_embedding(vit.pos_embed, (h, w)))
        levels = []
        for number, block in enumerate(vit.blocks, start=1):
            tokens = block(tokens)
            if number in self.taps:
                levels.append(tokens[:, 1:].transpose(1, 2).reshape(b, c, h, w))
        return levels
