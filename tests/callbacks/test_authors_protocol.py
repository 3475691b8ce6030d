"""`protocol=authors` keeps, stops and evaluates as the authors' loop does: the callback, driven by a
real Trainer over scripted readings, against a plain re-statement of their loop."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from aand_lightning.callbacks.authors_protocol import AuthorsRule, AuthorsSelection

STAGE1 = {"every": 5, "evaluate_first": True, "select_after": 5, "stop_after": 30, "stop_above": 0.999}
STAGE2 = {"every": 5, "evaluate_first": False, "select_after": 5, "stop_after": 5, "stop_above": 0.999}


def authors_loop(readings: list[tuple[float, float]], epochs: int, first: bool, stop_after: int):
    """Their loop, restated (spec "The authors' run, exactly"): evaluate after epoch 0 (stage 1) and after
    every 5th epoch; keep an epoch past 5 whose score beats the best; stop after an epoch past
    `stop_after` whose image AUROC rounds above 0.999. Returns (evaluated, kept, last trained) epochs."""
    best, kept, evaluated = -np.inf, None, []
    for epoch in range(epochs):
        if (epoch + 1) % 5 == 0 or (first and epoch == 0):
            evaluated.append(epoch)
            image_auroc, score = readings[epoch]
            if epoch > 5 and score > best:
                best, kept = score, epoch
            if epoch > stop_after and round(image_auroc, 3) > 0.999:
                return evaluated, kept, epoch
    return evaluated, kept, epochs - 1


class _Scripted(L.LightningModule):
    """Trains a scalar; its test-set readings (image AUROC, selection score) per epoch are scripted."""

    def __init__(self, readings: list[tuple[float, float]]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.readings = readings
        self.evaluated: list[int] = []

    def training_step(self, batch, batch_idx):
        return (self.weight - 1).pow(2).sum()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self) -> None:
        image_auroc, score = self.readings[self.current_epoch]
        self.evaluated.append(self.current_epoch)
        self.log("val/image_auroc", image_auroc)
        self.log("val/selection", score)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(1, 1))

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(1, 1))


def _fit(readings, rule, epochs, tmp_path):
    module, selection = _Scripted(readings), AuthorsSelection(tmp_path, rule)
    trainer = L.Trainer(
        max_epochs=epochs, callbacks=[selection], logger=False, default_root_dir=tmp_path,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module)
    kept = (
        torch.load(selection.best_model_path, weights_only=True)["epoch"]
        if selection.best_model_path
        else None
    )
    return module.evaluated, selection.best_epoch, kept, trainer.current_epoch - 1


def _scripts(epochs: int) -> dict[str, list[tuple[float, float]]]:
    rng = np.random.default_rng(0)
    noise = [(float(rng.uniform(0.9, 0.999)), float(rng.uniform(0, 1))) for _ in range(epochs)]
    sticky = list(noise)
    sticky[9] = (1.0, 0.5)  # a perfect reading before the stop limit: Lightning's EarlyStopping remembered it
    fresh = list(noise)
    fresh[34] = (0.9996, 0.2)  # rounds to 1.000 past epoch 30: stops here
    below = list(noise)
    below[39] = (0.9994, 0.9)  # rounds to 0.999: does not stop
    ties = [(0.95, 0.5)] * epochs  # equal scores: the first kept epoch stays
    return {"noise": noise, "sticky": sticky, "fresh": fresh, "below": below, "ties": ties}


@pytest.mark.parametrize("script", ["noise", "sticky", "fresh", "below", "ties"])
@pytest.mark.parametrize(("rule", "epochs"), [(STAGE1, 45), (STAGE2, 20)], ids=["stage1", "stage2"])
def test_the_callback_keeps_stops_and_evaluates_as_the_authors_loop(rule, epochs, script, tmp_path):
    readings = _scripts(45)[script]
    evaluated, kept, last = authors_loop(readings, epochs, rule["evaluate_first"], rule["stop_after"])
    assert _fit(readings, rule, epochs, tmp_path) == (evaluated, kept, kept, last)


def test_a_reading_before_the_limit_does_not_stop_stage_1():
    """The case Lightning's sticky EarlyStopping got wrong: a perfect reading at epoch 9, then lower ones."""
    rule = AuthorsRule(**STAGE1)
    assert not rule.stops(9, 1.0) and not rule.stops(34, 0.9994) and rule.stops(34, 0.9996)
    assert [e for e in range(12) if rule.evaluates(e)] == [0, 4, 9]
    assert rule.first_selection(10) == 9 and rule.first_selection(9) is None
