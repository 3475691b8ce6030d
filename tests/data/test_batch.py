from functools import partial

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from aand_lightning.data.batch import Batch, Item, collate
from aand_lightning.data.datamodule import AnomalyDataModule
from aand_lightning.data.mvtec import MVTecAD
from aand_lightning.data.preprocessing import Preprocessing
from aand_lightning.data.synthesis.synthesizer import AnomalySynthesizer
from aand_lightning.stages.base import AnomalyStage


def _loader(mvtec_root, mode: str):
    dm = AnomalyDataModule(
        MVTecAD(mvtec_root, "bottle"), Preprocessing((24, 40)), batch_size=2, num_workers=0, val_fraction=0.0,
        synthesizer=AnomalySynthesizer(clean_probability=0.0),
    )  # fmt: skip
    dm.setup()
    samples = dm.splits.test if mode == "test" else dm.splits.train
    return dm.loader(dm.dataset(samples, mode, first_id=5 if mode == "normal" else 0), 2), samples


def test_loaders_collate_typed_batches_with_the_fields_a_mode_has(mvtec_root):
    loader, samples = _loader(mvtec_root, "test")
    batch = next(iter(loader))
    assert isinstance(batch, Batch) and len(batch) == 2
    assert batch.image.shape == (2, 3, 24, 40) and batch.image.dtype == torch.float32
    assert batch.mask.shape == (2, 1, 24, 40) and batch.foreground is None
    assert batch.label.dtype == torch.int64 and batch.label.tolist() == [s.label for s in samples[:2]]
    assert batch.sample_id is None  # only normal-mode items have a sample id
    assert batch.path == [str(s.image) for s in samples[:2]] and batch.defect == [
        s.defect for s in samples[:2]
    ]
    normal = next(iter(_loader(mvtec_root, "normal")[0]))
    assert normal.sample_id.dtype == torch.int64 and normal.sample_id.tolist() == [5, 6]  # first_id + index
    assert normal.foreground is None
    synthetic = next(iter(_loader(mvtec_root, "synthetic")[0]))
    assert synthetic.foreground.shape == (2, 1, 24, 40) and synthetic.sample_id is None
    assert synthetic.label.tolist() == [int(m.any()) for m in synthetic.mask]


def test_items_without_a_sample_id_collate_to_none():
    items = [Item(torch.zeros(3, 4, 4), torch.zeros(1, 4, 4), 0, "good", f"{i}.png") for i in range(3)]
    batch = collate(items)
    assert batch.sample_id is None and batch.foreground is None and batch.image.shape == (3, 3, 4, 4)


def test_lightning_moves_the_tensors_and_leaves_the_host_fields():
    items = [
        Item(torch.ones(3, 4, 4), torch.zeros(1, 4, 4), 1, "crack", f"{i}.png", i, torch.ones(1, 4, 4))
        for i in range(2)
    ]
    batch = collate(items)
    batch.sample_id = batch.sample_id.tolist()  # what stage 2 does before the transfer
    moved = move_data_to_device(batch, torch.device("meta"))
    assert isinstance(moved, Batch) and batch.image.device.type == "cpu"  # a copy, the original stays
    assert all(t.device.type == "meta" for t in (moved.image, moved.mask, moved.label, moved.foreground))
    assert moved.sample_id == [0, 1] and moved.path == ["0.png", "1.png"] and moved.defect == ["crack"] * 2
    stage = AnomalyStage(partial(torch.optim.Adam), channels_last=True)
    through_hooks = stage.on_after_batch_transfer(
        stage.transfer_batch_to_device(batch, torch.device("meta"), 0), 0
    )
    assert through_hooks.image.device.type == "meta"
    assert through_hooks.image.is_contiguous(memory_format=torch.channels_last)
