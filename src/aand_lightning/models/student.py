"""Reverse-distillation student: one-class bottleneck (joins the three levels) + mirrored decoder.

Everything is sized from the teacher's channel list (c1, c2, c3), so any stride-4/8/16 backbone works;
for wide_resnet50_2 (256, 512, 1024) with bottleneck blocks of width 128 this is exactly RD's design,
for resnet18 (64, 128, 256) with basic blocks it is RD's resnet18 student.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

BlockKind = Literal["bottleneck", "basic"]
EXPANSION = {"bottleneck": Bottleneck.expansion, "basic": BasicBlock.expansion}


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _check_block(block: str, width_per_group: int) -> None:
    if block not in EXPANSION:
        raise ValueError(f"Unknown student block {block!r}; use one of {sorted(EXPANSION)}.")
    if block == "basic" and width_per_group != 64:
        raise ValueError("Basic student blocks need width_per_group=64 (only bottleneck blocks can be wide).")


class OneClassBottleneck(nn.Module):
    """RD's one-class bottleneck: join the three levels at stride 16, then compress to stride 32."""

    def __init__(
        self,
        channels: list[int],
        block: BlockKind,
        num_blocks: int,
        width_per_group: int,
    ) -> None:
        super().__init__()
        _check_block(block, width_per_group)
        c1, c2, c3 = channels
        self.level1 = nn.Sequential(_conv_bn_relu(c1, c2, 2), _conv_bn_relu(c2, c3, 2))
        self.level2 = _conv_bn_relu(c2, c3, 2)
        out = 2 * c3
        expansion = EXPANSION[block]
        planes = out // expansion
        downsample = nn.Sequential(nn.Conv2d(3 * c3, out, 1, stride=2, bias=False), nn.BatchNorm2d(out))
        layers: list[nn.Module] = []
        for i in range(num_blocks):
            inplanes, stride, down = (3 * c3, 2, downsample) if i == 0 else (out, 1, None)
            if block == "bottleneck":
                layers.append(Bottleneck(inplanes, planes, stride, down, base_width=width_per_group))
            else:
                layers.append(BasicBlock(inplanes, planes, stride, down))
        self.blocks = nn.Sequential(*layers)
        self.out_channels = out

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        joined = torch.cat([self.level1(features[0]), self.level2(features[1]), features[2]], dim=1)
        return self.blocks(joined)


def _deconv(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2, bias=False)


class _UpsamplingResidual(nn.Module):
    """relu(body(x) + shortcut(x)); subclasses build `body`, the shortcut upsamples when needed."""

    def __init__(self, body: nn.Sequential, upsample: nn.Module | None) -> None:
        super().__init__()
        self.body = body
        self.upsample = upsample
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.upsample is None else self.upsample(x)
        out = self.body(x)
        out += identity  # in place, like torchvision's blocks: one fewer full-size tensor per block
        return self.relu(out)


class DeBottleneck(_UpsamplingResidual):
    """Bottleneck whose 3×3 conv becomes a 2×2 transposed conv when it upsamples."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, upsample: nn.Module | None = None, base_width: int = 64
    ) -> None:
        width = planes * base_width // 64
        middle = (
            _deconv(width, width)
            if upsample is not None
            else nn.Conv2d(width, width, 3, padding=1, bias=False)
        )
        body = nn.Sequential(
            nn.Conv2d(inplanes, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            middle, nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, planes * self.expansion, 1, bias=False), nn.BatchNorm2d(planes * self.expansion),
        )  # fmt: skip
        super().__init__(body, upsample)


class DeBasicBlock(_UpsamplingResidual):
    """Basic block whose first 3×3 conv becomes a 2×2 transposed conv when it upsamples."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, upsample: nn.Module | None = None, base_width: int = 64
    ) -> None:
        first = (
            _deconv(inplanes, planes)
            if upsample is not None
            else nn.Conv2d(inplanes, planes, 3, padding=1, bias=False)
        )
        body = nn.Sequential(
            first, nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes),
        )  # fmt: skip
        super().__init__(body, upsample)


class Decoder(nn.Module):
    """Mirrored ResNet: three upsampling stages returning features shaped like the teacher's levels."""

    def __init__(
        self,
        channels: list[int],
        in_channels: int,
        block: BlockKind,
        layers: tuple[int, int, int],
        width_per_group: int,
    ) -> None:
        super().__init__()
        _check_block(block, width_per_group)
        block_cls = DeBottleneck if block == "bottleneck" else DeBasicBlock
        stages = []
        inplanes = in_channels
        for out, count in zip(reversed(channels), layers, strict=True):
            planes = out // block_cls.expansion
            upsample = nn.Sequential(_deconv(inplanes, out), nn.BatchNorm2d(out))
            blocks = [block_cls(inplanes, planes, upsample, width_per_group)]
            blocks += [block_cls(out, planes, None, width_per_group) for _ in range(count - 1)]
            stages.append(nn.Sequential(*blocks))
            inplanes = out
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs[::-1]  # level 1 (stride 4) first, like the teacher


class Student(nn.Module):
    """Bottleneck + decoder: reconstructs the (amplified) teacher levels from a compact code.

    `bottleneck_width_per_group` lets the bottleneck blocks differ from the decoder's (RD uses 128 for
    both with wide_resnet50_2; anomalib's RD builds a 64-wide bottleneck, ~30 % fewer bottleneck FLOPs).
    """

    def __init__(
        self,
        channels: list[int],
        block: BlockKind,
        bottleneck_blocks: int,
        decoder_layers: tuple[int, int, int],
        width_per_group: int,
        bottleneck_width_per_group: int | None,
    ) -> None:
        super().__init__()
        width = width_per_group if bottleneck_width_per_group is None else bottleneck_width_per_group
        self.bottleneck = OneClassBottleneck(channels, block, bottleneck_blocks, width)
        self.decoder = Decoder(
            channels, self.bottleneck.out_channels, block, tuple(decoder_layers), width_per_group
        )
        for m in self.modules():  # RD's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.decoder(self.bottleneck(features))
