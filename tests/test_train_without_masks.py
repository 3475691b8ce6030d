"""Your own data with image labels only: a folder dataset whose anomalous test images have no masks, or
masks for only some, trains and reports image metrics; pixel metrics are null with the reason, or cover
the masked images only, counted (never a silent zero)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aand_lightning.reporting.summary import write_summary

PIXEL = ("pixel_auroc", "pixel_f1_max", "aupro", "per_image_pro")


def _png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory) -> Path:
    """train/ (8 normal), test/good (3) and test/dent (4, a bright square each), masks/ for two dents."""
    root = tmp_path_factory.mktemp("own_data")
    rng = np.random.default_rng(0)
    texture = lambda: rng.integers(60, 120, (64, 64, 3), dtype=np.uint8)  # noqa: E731
    for index in range(8):
        _png(root / "train" / f"{index}.png", texture())
    for index in range(3):
        _png(root / "test" / "good" / f"ok{index}.png", texture())
    for index in range(4):
        image, mask = texture(), np.zeros((64, 64), np.uint8)
        top, left = rng.integers(4, 40, 2)
        image[top : top + 16, left : left + 16] = 250
        mask[top : top + 16, left : left + 16] = 255
        _png(root / "test" / "dent" / f"d{index}.png", image)
        if index < 2:
            _png(root / "masks" / "dent" / f"d{index}_mask.png", mask)
    return root


def _folder(root: Path, *overrides: str) -> tuple[str, ...]:
    return ("dataset=folder", f"dataset.train_dir={root / 'train'}", f"dataset.test_dir={root / 'test'}",
            "dataset.category=parts", *overrides)  # fmt: skip


@pytest.fixture(scope="module")
def unmasked_run(labelled_folder, train_at) -> tuple[list, Path]:
    """stage=all on the folder without any mask (no dataset.mask_dir)."""
    with pytest.warns(UserWarning, match="None of the 4 anomalous test images has a mask"):
        return train_at(labelled_folder, "unmasked", "stage=all", *_folder(labelled_folder))


def test_without_masks_image_metrics_are_computed_and_pixel_metrics_are_null_with_the_reason(unmasked_run):
    _, run_dir = unmasked_run
    for stage in ("amplify", "distill"):
        text = (run_dir / stage / "metrics.json").read_text()
        assert "NaN" not in text  # valid JSON: null, not a number
        record = json.loads(text)
        assert 0.0 <= record["metrics"]["image_auroc"] <= 1.0
        assert all(record["metrics"][key] is None for key in PIXEL), record["metrics"]
        assert record["pixel_coverage"] == {
            "images": 7,
            "pixel_images": 3,
            "anomalous_images": 4,
            "anomalous_with_mask": 0,
            "note": "Pixel metrics are not available: none of the 4 anomalous test images has a mask.",
        }
        assert len(list((run_dir / stage / "heatmaps").glob("*.png"))) == 1  # pictures still drawn


def test_the_summary_shows_a_dash_and_one_line_why(unmasked_run):
    _, run_dir = unmasked_run
    table = write_summary(run_dir)
    rows = [line for line in table.splitlines() if line.startswith("| folder | parts |")]
    # every map: gate and amplification of stage 1; aand, gate and fused of stage 2
    assert len(rows) == 5 and all(row.endswith("| – | – | – |") for row in rows), table
    assert "folder parts (distill): Pixel metrics are not available: none of the 4" in table


def test_with_masks_for_some_pixel_metrics_cover_the_masked_images_counted(
    labelled_folder, unmasked_run, train_at
):
    """Stage 2 from the first run's amplifier, now with masks for 2 of the 4 anomalous images."""
    with pytest.warns(UserWarning, match="2 of the 4 anomalous test images have no mask"):
        records, _ = train_at(
            labelled_folder, "some_masks", "stage=distill", f"amplifier={unmasked_run[1]}",
            *_folder(labelled_folder, f"dataset.mask_dir={labelled_folder / 'masks'}"),
        )  # fmt: skip
    record = records[0]
    assert all(0.0 <= record["metrics"][key] <= 1.0 for key in PIXEL), record["metrics"]
    assert record["pixel_coverage"] == {
        "images": 7,
        "pixel_images": 5,
        "anomalous_images": 4,
        "anomalous_with_mask": 2,
        "note": "Pixel metrics cover the 5 of 7 test images whose masks are known: 2 of the 4 anomalous "
        "images have no mask.",
    }


def test_the_authors_protocol_needs_every_mask(labelled_folder, train_at, authors_every_epoch):
    from aand_lightning.errors import UserError

    with pytest.raises(UserError, match="protocol=authors selects epochs by pixel metrics"):
        train_at(
            labelled_folder, "authors", "stage=distill", "raa=off", "loss=rd", *authors_every_epoch,
            *_folder(labelled_folder),
        )  # fmt: skip
