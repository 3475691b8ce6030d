"""Stage-1 anomaly synthesis: Perlin masks, texture sources and their augmenters, foreground rules, the
synthesizer."""

from aand_lightning.data.synthesis.augmenters import authors_texture_augment
from aand_lightning.data.synthesis.foreground import (
    ForegroundCache,
    ForegroundRule,
    foreground_mask,
    select_rule,
)
from aand_lightning.data.synthesis.perlin import perlin_mask
from aand_lightning.data.synthesis.synthesizer import AnomalySynthesizer
from aand_lightning.data.synthesis.textures import (
    DTDTextures,
    ProceduralTextures,
    TextureFolder,
    TextureSource,
    make_texture_source,
)

__all__ = [
    "AnomalySynthesizer",
    "DTDTextures",
    "ForegroundCache",
    "ForegroundRule",
    "ProceduralTextures",
    "TextureFolder",
    "TextureSource",
    "authors_texture_augment",
    "foreground_mask",
    "make_texture_source",
    "perlin_mask",
    "select_rule",
]
