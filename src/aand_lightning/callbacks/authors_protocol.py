"""The authors' protocol (`protocol=authors`): when a stage is evaluated on the test set, which epoch it
keeps and when it stops, as their training loop decides (spec "The authors' run, exactly").

Lightning's `EarlyStopping` remembers a reading: one above the threshold before `min_epochs` stops the
run at `min_epochs`, even if later readings drop. The authors look at each fresh reading alone, and only
past an epoch; they keep an epoch only past epoch 5 (0-indexed), when its score beats the best so far.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

BEST = "best.ckpt"


@dataclass(frozen=True)
class AuthorsRule:
    """One stage's rule, epochs 0-indexed. Evaluated after epochs `every - 1, 2·every - 1, ...` (and
    after the first with `evaluate_first`); an evaluation past `select_after` keeps the epoch if its
    selection score beats the best; one past `stop_after` whose image AUROC, rounded to `digits`, is
    above `stop_above` ends the stage. Stage 2's selection score is the sum of the test metrics
    `select_on`, each rounded to `digits` (stage 1's is the gate precision, `select_on` unused)."""

    every: int = 5
    evaluate_first: bool = False
    select_after: int = 5
    stop_after: int = 30
    stop_above: float = 0.999
    digits: int = 3
    select_on: tuple[str, ...] = ("image_auroc", "pixel_auroc")

    def __post_init__(self) -> None:  # a config's list becomes plain strings (checkpoints load weights_only)
        object.__setattr__(self, "select_on", tuple(str(name) for name in self.select_on))

    def evaluates(self, epoch: int) -> bool:
        return (self.evaluate_first and epoch == 0) or (epoch + 1) % self.every == 0

    def selects(self, epoch: int) -> bool:
        return self.evaluates(epoch) and epoch > self.select_after

    def stops(self, epoch: int, image_auroc: float) -> bool:
        return epoch > self.stop_after and round(image_auroc, self.digits) > self.stop_above

    def first_selection(self, epochs: int) -> int | None:
        """The first epoch of a run of `epochs` that can be kept, or None (nothing would be selected)."""
        return next((epoch for epoch in range(epochs) if self.selects(epoch)), None)


class AuthorsSelection(Checkpoint):
    """Runs the rule on the readings the stage logs on the test set (`val/image_auroc`, its stopping
    metric, and `val/selection`, its selection score): validates only on the rule's epochs, writes the
    kept epoch to `<dirpath>/best.ckpt` (`best_model_path`, what is tested and handed to stage 2) and
    stops the fit. Its state travels in last.ckpt, so a resumed run keeps and stops as the whole one."""

    def __init__(self, dirpath: str | Path, rule: Mapping[str, Any]) -> None:
        self.dirpath = Path(dirpath)
        self.rule = AuthorsRule(**rule)
        self.best_model_path = ""
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning validates after epoch e when (e + 1) % check_val_every_n_epoch == 0, one interval for
        # the whole fit; the authors' epochs are not one interval, so it is set for each epoch.
        epoch = trainer.current_epoch
        trainer.check_val_every_n_epoch = 1 if self.rule.evaluates(epoch) else epoch + 2

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch, readings = trainer.current_epoch, trainer.callback_metrics
        if self.rule.selects(epoch):
            score = float(readings["val/selection"])
            if not math.isnan(score) and (self.best_score is None or score > self.best_score):
                self.best_score, self.best_epoch = score, epoch
                self.best_model_path = str(self.dirpath / BEST)
                trainer.save_checkpoint(self.best_model_path)
        if self.rule.stops(epoch, float(readings["val/image_auroc"])):
            self.stopped_epoch = epoch
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {
            "rule": asdict(self.rule),
            "best_model_path": self.best_model_path,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "stopped_epoch": self.stopped_epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key in ("best_model_path", "best_score", "best_epoch", "stopped_epoch"):
            setattr(self, key, state_dict[key])
