"""aand_lightning: AAND (Residual Anomaly Amplification + Hard Knowledge Distillation), Lightning + Hydra."""

__version__ = "0.1.0"
