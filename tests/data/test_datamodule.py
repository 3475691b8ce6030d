from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import skimage.data
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from aand_lightning.config import config_dir
from aand_lightning.data.datamodule import AnomalyDataModule, split_validation
from aand_lightning.data.datasets import AnomalyDataset
from aand_lightning.data.io import read_image
from aand_lightning.data.mvtec import MVTecAD
from aand_lightning.data.preprocessing import Preprocessing
from aand_lightning.data.records import Sample
from aand_lightning.data.synthesis.foreground import ForegroundRule, foreground_mask
from aand_lightning.data.synthesis.synthesizer import AnomalySynthesizer
from aand_lightning.data.transforms import denormalize, resize
from aand_lightning.data.visa import VisA
from aand_lightning.errors import UserError


def _datamodule(source, image_size=(24, 40), interpolation="pil_bicubic", **kwargs) -> AnomalyDataModule:
    defaults = {"batch_size": 2, "num_workers": 0, "val_fraction": 0.34}
    dm = AnomalyDataModule(
        source, Preprocessing(image_size, interpolation),
        synthesizer=AnomalySynthesizer(clean_probability=0.0), **(defaults | kwargs),
    )  # fmt: skip
    dm.setup("fit")
    return dm


def test_validation_is_held_out_train_never_test(mvtec_root):
    dm = _datamodule(MVTecAD(mvtec_root, "bottle"))
    assert len(dm.splits.train) == 2 and len(dm.val_samples) == 1
    assert dm.val_samples[0].label == 0 and dm.val_samples[0] not in dm.splits.train
    test_paths = {s.image for s in dm.splits.test}
    assert dm.val_samples[0].image not in test_paths
    assert len(dm.splits.test) == 5
    assert dm.val_dataloader().dataset.samples == dm.val_samples
    opt_in = _datamodule(MVTecAD(mvtec_root, "bottle"), validate_on_test=True)
    assert len(opt_in.val_dataloader().dataset) == 5  # the authors' protocol: explicit opt-in only


def test_split_validation_is_seeded():
    samples = [Sample(Path(f"{i}.png"), 0) for i in range(20)]
    a = split_validation(samples, 0.2, seed=1)
    assert len(a[1]) == 4 and split_validation(samples, 0.2, seed=1) == a
    assert split_validation(samples, 0.2, seed=2)[1] != a[1]
    assert split_validation(samples, 0.0, seed=1) == (samples, [])


def test_test_batches_on_non_square_visa(visa_root):
    dm = _datamodule(VisA(visa_root, "candle"), val_fraction=0.0)
    batch = next(iter(dm.test_dataloader()))
    assert batch.image.shape == (2, 3, 24, 40) and batch.image.dtype == torch.float32
    assert batch.mask.shape == (2, 1, 24, 40)
    assert set(batch.mask.unique().tolist()) <= {0.0, 1.0}
    all_batches = list(dm.test_dataloader())
    labels = torch.cat([b.label for b in all_batches])
    masks = torch.cat([b.mask for b in all_batches])
    assert labels.tolist() == [s.label for s in dm.splits.test]
    assert all((m.sum() > 0) == bool(lbl) for m, lbl in zip(masks, labels, strict=True))  # label-index masks


def test_mask_aligned_with_its_image_and_normalisation_inverts(mvtec_root):
    dm = _datamodule(MVTecAD(mvtec_root, "bottle"), image_size=(12, 16))
    dataset = dm.dataset(dm.splits.test, "test")
    index = next(i for i, s in enumerate(dm.splits.test) if s.label == 1)
    item = dataset[index]
    mask = item.mask[0].numpy().astype(bool)
    assert mask[2:5, 3:7].all() and mask.sum() == 12  # exactly the fixture's 3x4 box
    expected = resize((12, 16))(image=read_image(dm.splits.test[index].image))["image"]
    restored = denormalize(item.image[None], dm.preprocessing.mean, dm.preprocessing.std)[0]
    assert np.abs(restored.astype(int) - expected.astype(int)).max() <= 1


def test_synthetic_items_carry_mask_foreground_and_label(mvtec_root):
    dm = _datamodule(MVTecAD(mvtec_root, "bottle"), image_size=32)
    dataset = dm.dataset(dm.splits.train, "synthetic")
    item = dataset[0]
    assert item.foreground.shape == (1, 32, 32) and item.mask.shape == (1, 32, 32)
    assert item.label == int(item.mask.any())
    assert torch.equal(item.image, dataset[(0, 0)].image)  # plain index = epoch 0: stable validation
    assert torch.equal(dataset[(3, 0)].mask, dataset[(3, 0)].mask)  # pure function of (seed, epoch, index)
    assert any(not torch.equal(dataset[(e, 0)].mask, item.mask) for e in range(1, 6))  # new every epoch
    clean = dm.dataset(dm.splits.train, "normal")[0]
    changed = (item.image != clean.image).any(0)
    assert not changed[item.mask[0] == 0].any()  # pixels change only inside the synthetic mask


def test_synthetic_foreground_comes_from_the_native_image(tmp_path, write_png):
    """The rule (blur σ 8 in native pixels) runs on the file's 96x128 image, then the mask is resized."""
    photo = skimage.data.coffee()[::4, ::4][:96, :128].copy()
    path = write_png(tmp_path / "train" / "000.png", photo)
    rule = ForegroundRule("threshold", threshold=100)
    dataset = AnomalyDataset(
        [Sample(path, 0)], Preprocessing((24, 32)), "synthetic",
        AnomalySynthesizer(clean_probability=0.0), rule,
    )  # fmt: skip
    foreground = dataset[0].foreground[0].numpy() > 0
    np.testing.assert_array_equal(foreground, foreground_mask(read_image(path), rule, (24, 32)))
    resized_first = foreground_mask(resize((24, 32))(image=read_image(path))["image"], rule)
    assert (foreground != resized_first).mean() > 0.05


def test_interpolation_reaches_the_datasets(mvtec_root, tmp_path):
    dm = _datamodule(MVTecAD(mvtec_root, "bottle"), interpolation="cv2_cubic")
    assert dm.dataset(dm.splits.test, "test").preprocessing.resize.interpolation == "cv2_cubic"
    default = _datamodule(MVTecAD(mvtec_root, "bottle"))
    assert default.dataset(default.splits.test, "test").preprocessing.resize.interpolation == "pil_bicubic"
    # from the config: the top-level `preprocessing` node is the datamodule's, with the dataset's size
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[
            "dataset=mvtec", f"dataset.root={mvtec_root}", "dataset.image_size=[24,40]",
            "preprocessing.interpolation=cv2_cubic", f"paths.root_dir={tmp_path}",
        ])  # fmt: skip
    configured = instantiate(cfg.datamodule)
    configured.setup()
    assert configured.preprocessing == Preprocessing((24, 40), "cv2_cubic")
    assert configured.dataset(configured.splits.test, "test").preprocessing.interpolation == "cv2_cubic"


def test_corrupt_train_image_is_skipped_with_a_warning(mvtec_root):
    (mvtec_root / "bottle" / "train" / "good" / "999.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    with pytest.warns(UserWarning, match=r"999\.png"):
        dm = _datamodule(MVTecAD(mvtec_root, "bottle"), on_corrupt="skip")
    assert len(dm.splits.train) + len(dm.val_samples) == 3
    with pytest.raises(ValueError, match=r"999\.png"):
        _datamodule(MVTecAD(mvtec_root, "bottle"))


def test_train_sampler_is_seeded_per_epoch(mvtec_root):
    dm = _datamodule(MVTecAD(mvtec_root, "bottle"), val_fraction=0.0, batch_size=1)
    sampler = dm.train_dataloader().sampler
    sampler.set_epoch(4)
    first = list(sampler)
    assert {epoch for epoch, _ in first} == {4} and sorted(i for _, i in first) == [0, 1, 2]
    again = dm.train_dataloader().sampler
    again.set_epoch(4)
    assert list(again) == first  # a resumed run sees the same order


def _epoch(dm: AnomalyDataModule, epoch: int) -> list:
    """The train loader's batches of one epoch, as Lightning would draw them."""
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return list(loader)


def _assert_same_batches(first: list, second: list) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask) and a.path == b.path


def test_synthetic_anomalies_are_the_same_after_a_resume_and_in_loader_workers(mvtec_root):
    """A sample's anomaly, texture augmentation included, is a function of (seed, epoch, index) only:
    the same twice, in a fresh datamodule as a resumed run builds it, in worker processes."""
    source = MVTecAD(mvtec_root, "bottle")
    dm = _datamodule(source, image_size=32, val_fraction=0.0, batch_size=1)
    dm.synthetic_train = True
    first = _epoch(dm, 3)
    assert any(batch.mask.any() for batch in first)
    _assert_same_batches(first, _epoch(dm, 3))
    resumed = _datamodule(source, image_size=32, val_fraction=0.0, batch_size=1, num_workers=2)
    resumed.synthetic_train = True
    _assert_same_batches(first, _epoch(resumed, 3))
    later = _epoch(dm, 4)
    assert any(not torch.equal(a.image, b.image) for a, b in zip(first, later, strict=True))


FLIP = A.Compose([A.HorizontalFlip(p=1.0)])


def test_augment_changes_the_training_images_only(mvtec_root):
    """`augment` reaches the train split of both stages; validation, calibration and test stay as read."""
    source = MVTecAD(mvtec_root, "bottle")
    plain, flipped = _datamodule(source), _datamodule(source, augment=FLIP)
    train, train_plain = flipped.train_dataloader().dataset, plain.train_dataloader().dataset
    assert not train.reusable and train_plain.reusable
    item = train[(2, 0)]
    assert torch.equal(item.image, train_plain[(2, 0)].image.flip(-1)) and item.sample_id is None
    for loader, loader_plain in [
        (flipped.val_dataloader(), plain.val_dataloader()),
        (flipped.normal_images("train"), plain.normal_images("train")),
        (flipped.test_dataloader(), plain.test_dataloader()),
    ]:
        for a, b in zip(loader, loader_plain, strict=True):
            assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
    assert next(iter(flipped.val_dataloader())).sample_id.tolist() == [len(flipped.splits.train)]  # cached


def test_augment_moves_the_foreground_with_the_image_before_synthesis(tmp_path, write_png):
    photo = skimage.data.coffee()[::4, ::4][:96, :128].copy()
    path = write_png(tmp_path / "train" / "000.png", photo)
    rule = ForegroundRule("threshold", threshold=100)
    made = {
        name: AnomalyDataset(
            [Sample(path, 0)], Preprocessing((24, 32)), "synthetic",
            AnomalySynthesizer(clean_probability=0.0), rule, augment=augment,
        )[(1, 0)]
        for name, augment in [("plain", None), ("flipped", FLIP)]
    }  # fmt: skip
    foreground = made["flipped"].foreground
    assert not torch.equal(foreground, foreground.flip(-1))  # the photo's foreground is not symmetric
    assert torch.equal(foreground, made["plain"].foreground.flip(-1))
    assert made["flipped"].mask.any() and not (made["flipped"].mask * (1 - foreground)).any()


def test_augment_is_seeded_per_sample_and_epoch(mvtec_root):
    source = MVTecAD(mvtec_root, "bottle")
    flips = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    dm = _datamodule(source, val_fraction=0.0, batch_size=1, augment=flips)
    epochs = [_epoch(dm, epoch) for epoch in range(4)]
    resumed = _datamodule(source, val_fraction=0.0, batch_size=1, augment=flips)
    _assert_same_batches(epochs[2], _epoch(resumed, 2))
    images = {(b.path[0], e): b.image for e, batches in enumerate(epochs) for b in batches}
    path = epochs[0][0].path[0]
    assert any(not torch.equal(images[path, 0], images[path, e]) for e in range(1, 4))


def test_augment_that_changes_the_size_names_the_fix(mvtec_root):
    dm = _datamodule(MVTecAD(mvtec_root, "bottle"), augment=A.Compose([A.Resize(8, 8)]))
    with pytest.raises(UserError, match="use albumentations ops that keep the size") as caught:
        dm.train_dataloader().dataset[0]
    assert str(caught.value).startswith("augment turned a (24, 40, 3) uint8 training image into a (8, 8, 3)")


def _config(tmp_path, mvtec_root, *overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=[
            "dataset=mvtec", f"dataset.root={mvtec_root}", "dataset.image_size=[24,40]",
            f"paths.root_dir={tmp_path}", *overrides,
        ])  # fmt: skip


def test_augment_group_reaches_the_train_images(mvtec_root, tmp_path):
    """augment=none (the default) leaves every image as read; augment=flips is albumentations' flips."""
    default = instantiate(_config(tmp_path, mvtec_root).datamodule)
    default.setup()
    assert isinstance(default.augment, A.Compose) and default.augment.transforms == []
    assert default.train_dataloader().dataset.reusable  # an empty composition is no augmentation
    flips = instantiate(_config(tmp_path, mvtec_root, "augment=flips").datamodule)
    flips.setup()
    assert [type(op) for op in flips.augment.transforms] == [A.HorizontalFlip, A.VerticalFlip]
    assert not flips.train_dataloader().dataset.reusable


@pytest.mark.parametrize("experiment", ["paper_mvtec", "paper_visa", "paper_mvtec3d", "demo", "quick"])
def test_recipes_augment_no_training_image(experiment, mvtec_root, tmp_path):
    """The authors augment no training image; their recipes (and the demo) keep it so."""
    cfg = _config(tmp_path, mvtec_root, f"experiment={experiment}")
    assert cfg.augment == {"_target_": "albumentations.Compose", "transforms": []}
