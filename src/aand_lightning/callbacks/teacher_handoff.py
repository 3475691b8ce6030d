"""Hand the frozen amplified teacher from stage 1 to stage 2 (the artifact itself lives in `handoff`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from aand_lightning.handoff import save_teacher


class TeacherHandoff(Callback):
    """At the end of stage-1 fit, rank 0 writes the teacher artifact; every rank waits until it exists.

    With a selected checkpoint (`best`, the authors' protocol) the handed-over teacher is that epoch's.
    """

    def __init__(
        self,
        path: str | Path,
        backbone: Mapping[str, Any],
        raa: Mapping[str, Any],
        textures: str | None,
        best: Path | None = None,
    ) -> None:
        self.path, self.backbone, self.raa, self.textures = Path(path), dict(backbone), dict(raa), textures
        self.best = best

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.best is not None and self.best.is_file():
            state = torch.load(self.best, map_location=pl_module.device, weights_only=True)["state_dict"]
            pl_module.load_state_dict(state)
        if trainer.is_global_zero:
            save_teacher(self.path, pl_module.teacher, self.backbone, self.raa, self.textures)
        trainer.strategy.barrier("teacher_handoff")
