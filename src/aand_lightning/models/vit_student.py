"""The student of the authors' ViT variant: the three taps fused into one token map, then a randomly
initialised ViT decoder whose chosen blocks give the student's three levels.

As their `clip_bn.BN_layer` and `clip_decoder.de_VisionTransformer`: per level a 1×1 conv + BN + ReLU,
concatenated and reduced by a 1×1 conv (their `bn4` is built but never applied, so it is left out);
then learned position embeddings, a LayerNorm and CLIP-style pre-norm blocks (QuickGELU MLP), tapped
after blocks 2, 4 and 6 by default. The HKD loss and the maps are the CNN path's.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import QuickGELU
from timm.models.vision_transformer import Block
from torch import nn

from aand_lightning.models.vit_encoder import resize_position_embedding


class LevelFusion(nn.Module):
    """Per level 1×1 conv + BN + ReLU to the common width, concatenated, 1×1 conv back to that width."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        width = channels[0]
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
            for c in channels
        )
        self.reduce = nn.Conv2d(width * len(channels), width, 1, bias=False)
        for m in self.modules():  # as their BN_layer
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.reduce(torch.cat([level(f) for level, f in zip(self.levels, features, strict=True)], 1))


class ViTDecoder(nn.Module):
    """(B, C, h, w) → the tokens after the blocks `taps` (1-based), each as (B, C, h, w); it has
    max(taps) blocks (6 for the authors' [2, 4, 6]).

    The position embedding is learned on a `pos_grid`² grid (the authors' 16² at 256 px) and resized
    bicubically when the token grid differs (other image sizes)."""

    def __init__(
        self, width: int, taps: tuple[int, ...], num_heads: int, mlp_ratio: float, pos_grid: int
    ) -> None:
        super().__init__()
        self.taps = tuple(int(t) for t in taps)
        self.pos_embed = nn.Parameter(width**-0.5 * torch.randn(1, pos_grid * pos_grid, width))
        self.norm_pre = nn.LayerNorm(width)
        block = partial(Block, qkv_bias=True, act_layer=QuickGELU, norm_layer=nn.LayerNorm)
        self.blocks = nn.Sequential(*[block(width, num_heads, mlp_ratio) for _ in range(max(self.taps))])
        for block in self.blocks:  # nn.MultiheadAttention's initialisation, as their decoder's blocks
            nn.init.xavier_uniform_(block.attn.qkv.weight)
            nn.init.zeros_(block.attn.qkv.bias)
            nn.init.zeros_(block.attn.proj.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2) + resize_position_embedding(self.pos_embed, (h, w), 0)
        tokens = self.norm_pre(tokens)
        levels = []
        for number, block in enumerate(self.blocks, start=1):
            tokens = block(tokens)
            if number in self.taps:
                levels.append(tokens.transpose(1, 2).reshape(b, c, h, w))
        return levels


class ViTStudent(nn.Module):
    """Fusion + ViT decoder: reconstructs the ViT teacher's three (amplified) taps."""

    def __init__(
        self,
        channels: list[int],
        taps: tuple[int, ...],
        num_heads: int,
        mlp_ratio: float,
        pos_grid: int,
    ) -> None:
        super().__init__()
        if len(set(channels)) != 1 or len(taps) != len(channels) or sorted(set(taps)) != list(taps):
            raise ValueError(
                f"The ViT decoder needs levels of one width and {len(channels)} increasing taps; got "
                f"channels {channels}, taps {list(taps)}."
            )
        self.fusion = LevelFusion(channels)
        self.decoder = ViTDecoder(channels[0], tuple(taps), num_heads, mlp_ratio, pos_grid)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.decoder(self.fusion(features))
