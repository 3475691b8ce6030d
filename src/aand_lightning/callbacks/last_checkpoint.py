"""`last.ckpt` at the end of every training epoch, written atomically: what `ckpt_path=last` resumes from."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from aand_lightning.errors import UserError

log = logging.getLogger(__name__)

LAST = "last.ckpt"


class LastCheckpoint(Checkpoint):
    """Saves the full training state (model, optimizer, scheduler, loops, RNG) after every epoch.

    Lightning's `ModelCheckpoint(save_last=True)` writes `last.ckpt` only in a step where a top-k
    checkpoint was saved, so with `save_top_k=0` a killed run had nothing to resume from. The file is
    written under a temporary name and renamed, so a kill during the write leaves the previous epoch's
    checkpoint intact. As a `Checkpoint` it runs after the LightningModule's own `on_train_epoch_end`;
    give it after every other checkpoint callback, so the state it saves includes their updates of this
    epoch (a `ModelCheckpoint` that validates every epoch records its best only at the epoch's end).
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.path = Path(dirpath) / LAST

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tmp = self.path.with_name(f".{LAST}.tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # the full state: resuming needs all of it
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier("last_checkpoint")


def resume_from(ckpt_path: str | None, stage_dir: Path, after_finished_stage: bool) -> str | None:
    """The checkpoint `ckpt_path` (config) means for this stage: None (start), its last.ckpt, or a file."""
    if ckpt_path != "last":
        return ckpt_path
    last = stage_dir / "checkpoints" / LAST
    if last.is_file():
        log.info("Resuming stage %s from %s", stage_dir.name, last)
        return str(last)
    if after_finished_stage:  # killed before this stage's first epoch ended: nothing to resume yet
        log.info("No checkpoint of stage %s yet in %s: starting it", stage_dir.name, last.parent)
        return None
    raise UserError(
        f"ckpt_path=last found no checkpoint in {last.parent}; pass hydra.run.dir=<the run dir to resume> "
        "(it holds <stage>/checkpoints/last.ckpt), or leave ckpt_path out to start afresh."
    )


def require_resumable(run_dir: Path) -> None:
    """`ckpt_path=last` continues a run: its dir must hold a stage's last.ckpt. Otherwise (a mistyped run
    dir) stop, rather than start afresh in a new folder under the name of a resume."""
    if not any(run_dir.glob(f"*/checkpoints/{LAST}")):
        raise UserError(
            f"ckpt_path=last found nothing to resume in {run_dir} (no <stage>/checkpoints/{LAST}); pass "
            "hydra.run.dir=<the run dir to resume>, or leave ckpt_path out to start afresh."
        )
