"""The two LightningModules of AAND: stage 1 (amplify) and stage 2 (distill)."""

from aand_lightning.stages.amplify import AnomalyAmplification
from aand_lightning.stages.distill import NormalityDistillation

__all__ = ["AnomalyAmplification", "NormalityDistillation"]
