"""Evaluation metrics: exact AUROC / F1-max and AUPRO (dataset-level and per-image).

The PRO functions are imported from `aand_lightning.metrics.aupro`; they are not re-exported here
because a function named `aupro` would shadow the module of the same name.
"""

from aand_lightning.metrics.anomaly_metrics import AnomalyMetrics, PixelCoverage

__all__ = ["AnomalyMetrics", "PixelCoverage"]
