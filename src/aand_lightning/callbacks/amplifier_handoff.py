"""Hand the frozen amplifier from stage 1 to stage 2 (the file itself lives in `artifacts.amplifier`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from aand_lightning.artifacts.amplifier import save_amplifier
from aand_lightning.callbacks.authors_protocol import AuthorsSelection

# A protocol callback that keeps one epoch (its `best_model_path`): the authors' rule, or a user's own.
Selection = AuthorsSelection | ModelCheckpoint


class AmplifierHandoff(Callback):
    """At the end of stage-1 fit, rank 0 writes the amplifier; every rank waits until it exists.

    `selected` is the protocol's selection (the authors' protocol keeps the best epoch; the entry point
    sets it): when it has a best checkpoint, the handed-over amplifier is that epoch's.
    """

    def __init__(self, path: str | Path, backbone: Mapping[str, Any], raa: Mapping[str, Any]) -> None:
        self.path, self.backbone, self.raa = Path(path), dict(backbone), dict(raa)
        self.selected: Selection | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        best = (
            Path(self.selected.best_model_path) if self.selected and self.selected.best_model_path else None
        )
        if best is not None and best.is_file():
            state = torch.load(best, map_location=pl_module.device, weights_only=True)["state_dict"]
            pl_module.load_state_dict(state)
        if trainer.is_global_zero:
            save_amplifier(self.path, pl_module.teacher, self.backbone, self.raa, pl_module.textures)
        trainer.strategy.barrier("amplifier_handoff")
