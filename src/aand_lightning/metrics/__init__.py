"""Evaluation metrics: exact AUROC / F1-max and AUPRO (dataset-level and per-image)."""

from aand_lightning.metrics.anomaly_metrics import AnomalyMetrics
from aand_lightning.metrics.aupro import aupro, label_regions, per_image_pro

__all__ = ["AnomalyMetrics", "aupro", "label_regions", "per_image_pro"]
