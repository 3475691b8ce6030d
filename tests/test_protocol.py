"""`protocol=authors`: trains on all of train/good, selects each stage on the test set, stops early,
and hands stage 2 the selected stage-1 amplifier; every record says so."""

import json

import torch

from aand_lightning.callbacks.last_checkpoint import LAST


def test_authors_protocol_selects_stops_and_hands_over_the_selected_amplifier(
    train_in_process, authors_every_epoch
):
    records, run_dir = train_in_process(
        "authors", "stage=all", *authors_every_epoch, "trainer.limit_val_batches=1.0", "amplify.epochs=4",
        "protocol.amplify.stop_after=1", "protocol.amplify.stop_above=0.0", "distill.epochs=2",
    )  # fmt: skip
    assert [r["protocol"] for r in records] == ["selected on test (authors)"] * 2
    # stage 1 stopped at its first evaluation past epoch 1 (image AUROC of the amplification map > 0.0)
    last = torch.load(run_dir / "amplify" / "checkpoints" / LAST, weights_only=True)
    assert last["epoch"] == 2
    (state,) = [v for k, v in last["callbacks"].items() if k.startswith("AuthorsSelection")]
    assert state["stopped_epoch"] == 2 and state["best_epoch"] in (0, 1, 2)
    # the handed-over amplifier is the kept (best.ckpt) epoch's
    best = torch.load(run_dir / "amplify" / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["epoch"] == state["best_epoch"]
    teacher = torch.load(run_dir / "amplify" / "amplifier.pt", weights_only=True)["state_dict"]
    for key, value in teacher.items():
        assert torch.equal(value, best["state_dict"][f"teacher.{key}"]), key
    stage1 = json.loads((run_dir / "amplify" / "metrics.json").read_text())
    assert stage1["protocol"] == "selected on test (authors)"
    assert stage1["metrics_by_map"]["amplification"]["image_auroc"] is not None  # the authors' stage-1 map
    # the kept stage-2 epoch carries thresholds (predict and export need them)
    kept = torch.load(run_dir / "distill" / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert torch.isfinite(kept["model.threshold"]) and torch.isfinite(kept["model.map_threshold"])


def test_last_checkpoint_holds_the_selection_of_its_own_epoch(train_in_process, authors_every_epoch):
    """Validating every epoch, the protocol records its best at the epoch's end: last.ckpt must be
    written after that, or a run resumed from it forgets the best epoch and tests a worse one."""
    _, run_dir = train_in_process(
        "authors", "stage=distill", "raa=off", *authors_every_epoch, "trainer.limit_val_batches=1.0",
        "distill.epochs=1",
    )  # fmt: skip
    checkpoints = run_dir / "distill" / "checkpoints"
    last = torch.load(checkpoints / LAST, weights_only=True)["callbacks"]
    (key,) = [key for key in last if key.startswith("AuthorsSelection")]
    assert last[key]["best_score"] is not None and last[key]["best_epoch"] == 0


def test_authors_protocol_uses_every_training_image(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from aand_lightning.config import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        overrides = ["protocol=authors", f"dataset.root={tmp_path / 'demo'}", f"paths.root_dir={tmp_path}"]
        cfg = compose("train", overrides=[*overrides, "dataset.image_size=64"])
    assert cfg.datamodule.val_fraction == 0.0 and cfg.datamodule.drop_last is False
    assert cfg.datamodule.validate_on_test is True
    datamodule = instantiate(cfg.datamodule)
    datamodule.setup()
    assert datamodule.val_samples == [] and len(datamodule.splits.train) > 0
