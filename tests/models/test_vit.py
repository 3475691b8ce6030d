"""The authors' ViT variant: the CLIP teacher's taps against a plain re-statement of CLIP's image tower
(OpenAI's layout and key names, loaded into ours key by key), the position-embedding resize, the RAA
and student shapes, and the teacher/student pairing."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aand_lightning.config import config_file
from aand_lightning.errors import ModelConfigError
from aand_lightning.models.build import build_aand, check_backbone
from aand_lightning.models.vit_encoder import ViTEncoder, openai_clip_to_timm, resize_position_embedding
from aand_lightning.models.vit_student import ViTStudent

CLIP = "vit_base_patch16_clip_quickgelu_224.openai"
RAA = config_file("raa/default.yaml")
ANOMALY_MAP = config_file("train.yaml")["anomaly_map"]
VIT_STUDENT = {k: v for k, v in config_file("student/vit_decoder.yaml").items()}


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ReferenceBlock(nn.Module):
    """CLIP's ResidualAttentionBlock: pre-LN, nn.MultiheadAttention on (L, N, D) tokens, QuickGELU MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(), c_proj=nn.Linear(4 * width, width)
            )
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class ReferenceTower(nn.Module):
    """CLIP's VisionTransformer, written out plainly: conv1, class embedding, position embedding of the
    224-px grid (resized once for another input size, bicubic without antialias, as the authors'
    `resize_pos_embed`), ln_pre, the blocks; the taps are the patch tokens after the chosen blocks."""

    def __init__(self, width: int, layers: int, heads: int, patch: int = 16, grid: int = 14) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(width**-0.5 * torch.randn(width))
        self.positional_embedding = nn.Parameter(width**-0.5 * torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.Sequential(*[ReferenceBlock(width, heads) for _ in range(layers)])
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(width**-0.5 * torch.randn(width, 512))
        for p in self.parameters():  # CLIP's trained weights are not at init values: no zero biases
            if p.dim() == 1 and p is not self.class_embedding:
                nn.init.normal_(p, std=0.1)

    def forward(self, x: torch.Tensor, taps: list[int]) -> list[torch.Tensor]:
        x = self.conv1(x)
        b, c, h, w = x.shape
        x = x.reshape(b, c, h * w).permute(0, 2, 1)
        x = torch.cat([self.class_embedding + torch.zeros(b, 1, c, dtype=x.dtype), x], dim=1)
        old = self.positional_embedding
        side = round((old.shape[0] - 1) ** 0.5)
        grid = old[1:].reshape(1, side, side, c).permute(0, 3, 1, 2)
        if (side, side) != (h, w):
            grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        x = x + torch.cat([old[:1], grid.permute(0, 2, 3, 1).reshape(h * w, c)], dim=0)
        x = self.ln_pre(x).permute(1, 0, 2)
        out = []
        for number, block in enumerate(self.transformer.resblocks, start=1):
            x = block(x)
            if number in taps:
                out.append(x.permute(1, 0, 2)[:, 1:].reshape(b, h, w, c).permute(0, 3, 1, 2))
        return out


def _openai_file(tmp_path, tower: ReferenceTower) -> str:
    """The tower's weights as OpenAI's checkpoint names them (`visual.*`, beside a text tower's keys)."""
    state = {f"visual.{k}": v for k, v in tower.state_dict().items()}
    state["token_embedding.weight"] = torch.zeros(3, 4)
    path = tmp_path / "ViT-tiny.pt"
    torch.save(state, path)
    return str(path)


@pytest.mark.parametrize("size", [64, 256])
def test_taps_equal_clip_restatement_in_float64(tmp_path, size):
    """Tiny geometry (width 64, 4 heads, 12 blocks) in float64: the grid is resized 14→4 and 14→16."""
    torch.manual_seed(0)
    tower = ReferenceTower(width=64, layers=12, heads=4).double()
    args = {"embed_dim": 64, "num_heads": 4}
    encoder = ViTEncoder(CLIP, _openai_file(tmp_path, tower), (4, 8, 12), args).double()
    images = torch.randn(2, 3, size, size, dtype=torch.float64)
    ours, theirs = encoder(images), tower(images, [4, 8, 12])
    assert [t.shape for t in ours] == [(2, 64, size // 16, size // 16)] * 3
    for a, b in zip(ours, theirs, strict=True):
        assert (a - b).abs().max() < 1e-12


def test_taps_of_vit_b16_equal_clip_restatement_in_float32(tmp_path):
    """ViT-B/16 itself (768 wide, 12 heads, 12 blocks), 256 px, float32, as the authors run it."""
    torch.manual_seed(0)
    tower = ReferenceTower(width=768, layers=12, heads=12)
    encoder = ViTEncoder(CLIP, _openai_file(tmp_path, tower), (4, 8, 12))
    images = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        ours, theirs = encoder(images), tower(images, [4, 8, 12])
    assert [t.shape for t in ours] == [(1, 768, 16, 16)] * 3
    for a, b in zip(ours, theirs, strict=True):
        assert (a - b).abs().max() / b.abs().max() < 1e-5


def test_timm_gelu_variant_is_not_clip(tmp_path):
    """The same weights in timm's `vit_base_patch16_clip_224` run exact GELU, not CLIP's QuickGELU: its
    taps differ from CLIP's, which is why the backbone config names the quickgelu model."""
    torch.manual_seed(0)
    tower = ReferenceTower(width=64, layers=4, heads=4).double()
    args = {"embed_dim": 64, "num_heads": 4}
    gelu = ViTEncoder("vit_base_patch16_clip_224.openai", _openai_file(tmp_path, tower), (2, 3, 4), args)
    images = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    assert (gelu.double()(images)[-1] - tower(images, [4])[0]).abs().max() > 1e-3


def test_openai_keys_map_one_by_one():
    tower = ReferenceTower(width=64, layers=2, heads=4)
    mapped = openai_clip_to_timm({f"visual.{k}": v for k, v in tower.state_dict().items()})
    assert mapped["cls_token"].shape == (1, 1, 64) and mapped["pos_embed"].shape == (1, 197, 64)
    assert torch.equal(mapped["blocks.1.attn.qkv.weight"], tower.transformer.resblocks[1].attn.in_proj_weight)
    assert torch.equal(mapped["blocks.0.mlp.fc2.bias"], tower.transformer.resblocks[0].mlp.c_proj.bias)
    assert not any(k.startswith(("norm.", "head")) for k in mapped)  # ln_post and proj: never tapped
    assert len(mapped) == 5 + 2 * 12  # conv, cls, pos, ln_pre ×2; per block 12 tensors


def test_position_embedding_resize_is_bicubic_without_antialias():
    torch.manual_seed(0)
    embedding = torch.randn(1, 1 + 14 * 14, 8)
    resized = resize_position_embedding(embedding, (16, 16))
    grid = embedding[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    direct = F.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False)
    assert torch.equal(resized[:, :1], embedding[:, :1])
    assert torch.equal(resized[:, 1:], direct.permute(0, 2, 3, 1).reshape(1, 256, 8))
    antialiased = F.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False, antialias=True)
    assert not torch.allclose(direct, antialiased, atol=1e-3)  # the distinction is real at 14→16
    assert resize_position_embedding(embedding, (14, 14)) is embedding


def _vit_backbone(**student) -> dict:
    return {
        "name": CLIP, "weights": "none", "family": "vit", "taps": [1, 2, 3],
        "model_args": {"depth": 3, "embed_dim": 64, "num_heads": 2},
        "student": {**VIT_STUDENT, "taps": [1, 2, 3], "num_heads": 2, **student},
    }  # fmt: skip


def test_raa_and_student_shapes_at_vit_b16():
    """One 768-channel RAA per tap (hidden min(2C, 1024)); the student as the authors' (their unused
    bn4, conv1, class embedding, ln_post and proj left out)."""
    student = ViTStudent([768] * 3, (2, 4, 6), num_heads=12, mlp_ratio=4.0, pos_grid=16)
    features = [torch.randn(1, 768, 16, 16) for _ in range(3)]
    assert [s.shape for s in student(features)] == [(1, 768, 16, 16)] * 3
    assert len(student.decoder.blocks) == 6 and student.decoder.blocks[0].attn.num_heads == 12
    fusion = sum(p.numel() for p in student.fusion.parameters())
    assert fusion == 3 * (768 * 768 + 2 * 768) + 3 * 768 * 768
    assert student.decoder.pos_embed.shape == (1, 256, 768)
    from aand_lightning.models.raa import RAASettings, ResidualAnomalyAmplifier

    raa = ResidualAnomalyAmplifier(768, RAASettings.from_config(RAA))
    assert (
        sum(p.numel() for p in raa.parameters())
        == 2 * (768 * 1024 * 2 + 1024 * 1024 + 2 * 1024 + 768) + 100 * 768
    )


def test_tiny_vit_model_runs_at_64_px():
    model = build_aand(_vit_backbone(), RAA, ANOMALY_MAP)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.map.shape == (2, 1, 64, 64) and out.score.shape == (2,)
    assert [f.shape for f in out.teacher_features.amplified] == [(2, 64, 4, 4)] * 3
    assert [s.shape for s in out.student] == [(2, 64, 4, 4)] * 3


@pytest.mark.parametrize(
    ("backbone", "expected"),
    [
        (_vit_backbone(kind="rd"), "student=rd needs a CNN teacher but backbone " + CLIP + " is a VIT; pass "
         "student=vit_decoder (or backbone=wide_resnet50_2)."),
        ({**config_file("backbone/resnet18.yaml"), "student": {"kind": "vit_decoder"}},
         "student=vit_decoder needs a VIT teacher but backbone resnet18 is a CNN; pass student=rd (or "
         "backbone=clip_vit_b16)."),
    ],
)  # fmt: skip
def test_wrong_pairing_is_refused_in_one_sentence(backbone, expected):
    with pytest.raises(ModelConfigError) as error:
        check_backbone(backbone)
    assert str(error.value) == expected
    with pytest.raises(ModelConfigError):
        build_aand({**backbone, "weights": "none"}, RAA, ANOMALY_MAP)
