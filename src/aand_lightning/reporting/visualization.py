"""Pictures people look at: image with ground-truth contour next to the anomaly heatmap overlay."""

from __future__ import annotations

import cv2
import numpy as np


def heatmap_overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    value_range: tuple[float, float],
    mask: np.ndarray | None = None,
    score: float | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """uint8 RGB panel [image + GT contour | heatmap overlay + score].

    `value_range` is shared by all pictures of a test set, so colours compare across images.
    """
    low, high = value_range
    scaled = np.clip((anomaly_map - low) / max(high - low, 1e-12), 0, 1)
    colour = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    overlay = cv2.addWeighted(image, 1 - alpha, colour, alpha, 0)
    left = image.copy()
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        for panel in (left, overlay):
            cv2.drawContours(panel, contours, -1, (0, 255, 0), 1)
    if score is not None:
        cv2.putText(
            overlay, f"{score:.3f}", (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA
        )
    return np.concatenate([left, overlay], axis=1)


def write_png(path, image: np.ndarray) -> None:
    """Write an RGB uint8 image (cv2 wants BGR)."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1])):
        raise OSError(f"Could not write {path}; check that the run directory is writable.")


def score_plots(scores: np.ndarray, labels: np.ndarray, title: str) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 pictures of the image-level ROC curve and of the normal vs anomalous score histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from torchmetrics.functional.classification import binary_auroc, binary_roc

    s, y = torch.from_numpy(scores).double(), torch.from_numpy(labels).long()
    fpr, tpr, _ = binary_roc(s, y, thresholds=None)
    auroc = binary_auroc(s, y, thresholds=None).item()
    pictures = []
    for kind in ("roc", "histogram"):
        fig, ax = plt.subplots(figsize=(4, 3.2), dpi=100)
        if kind == "roc":
            ax.plot(fpr.numpy(), tpr.numpy(), lw=2, label=f"AUROC {100 * auroc:.1f}")
            ax.plot([0, 1], [0, 1], "k:", lw=1)
            ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{title}: image ROC")
            ax.legend(loc="lower right")
        else:
            bins = np.linspace(scores.min(), scores.max(), 30)
            ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="normal")
            ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="anomalous")
            ax.set(xlabel="image score", ylabel="images", title=f"{title}: scores")
            ax.legend()
        fig.tight_layout()
        fig.canvas.draw()
        pictures.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
        plt.close(fig)
    return pictures[0], pictures[1]
