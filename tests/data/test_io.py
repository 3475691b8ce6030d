"""Image and mask reading: every mode becomes uint8 RGB / bool, bad files fail with a fix."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from aand_lightning.data.io import CorruptImageError, check_samples, list_images, read_image, read_mask
from aand_lightning.data.records import DatasetError, Sample


def _truncated(path: Path, pixels: np.ndarray, keep: float = 0.5) -> Path:
    """A real encoded image cut short, as a broken download or full disk leaves it."""
    Image.fromarray(pixels).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.fixture
def noise() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)


def test_rgb_png_round_trips_exactly(tmp_path, write_png, noise):
    image = read_image(write_png(tmp_path / "x.png", noise))
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, noise)


def test_grayscale_becomes_three_equal_channels(tmp_path, write_png, noise):
    gray = noise[..., 0]
    image = read_image(write_png(tmp_path / "g.png", gray))
    assert image.shape == (*gray.shape, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], gray)


def test_rgba_is_composited_on_black(tmp_path, write_png):
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 128], [200, 100, 50, 0]]], np.uint8)
    image = read_image(write_png(tmp_path / "a.png", rgba))
    np.testing.assert_array_equal(image[0], [[200, 100, 50], [100, 50, 25], [0, 0, 0]])


def test_gray_alpha_is_composited_on_black(tmp_path):
    path = tmp_path / "la.png"
    Image.fromarray(np.array([[[90, 255], [90, 0]]], np.uint8), mode="LA").save(path)
    np.testing.assert_array_equal(read_image(path)[0], [[90, 90, 90], [0, 0, 0]])


def test_palette_image_uses_its_colours(tmp_path):
    path = tmp_path / "p.png"
    img = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    img.putpalette([10, 20, 30, 200, 150, 100] + [0] * 762)
    img.save(path)
    np.testing.assert_array_equal(
        read_image(path), [[[10, 20, 30], [200, 150, 100]], [[200, 150, 100], [10, 20, 30]]]
    )


def test_palette_transparency_is_composited_on_black(tmp_path):
    path = tmp_path / "pt.png"
    img = Image.fromarray(np.array([[0, 1]], np.uint8), mode="P")
    img.putpalette([10, 20, 30, 200, 150, 100] + [0] * 762)
    img.save(path, transparency=0)
    np.testing.assert_array_equal(read_image(path), [[[0, 0, 0], [200, 150, 100]]])


def test_16_bit_gray_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "g16.png"
    wide = np.array([[0, 257 * 100, 65535, 257 * 200 + 100]], np.uint16)
    Image.fromarray(wide).save(path)
    assert Image.open(path).mode == "I;16"
    np.testing.assert_array_equal(read_image(path)[..., 0], [[0, 100, 255, 200]])


def test_16_bit_rgb_keeps_channel_order_and_scale(tmp_path):
    path = tmp_path / "rgb16.png"
    rgb = np.zeros((2, 2, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 65535, 257 * 128, 0
    cv2.imwrite(str(path), rgb[..., ::-1])  # OpenCV writes BGR
    image = read_image(path)
    assert np.abs(image.astype(int) - [255, 128, 0]).max() <= 1


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file_raises_with_path_and_fix(tmp_path, noise, one_sentence, suffix):
    path = _truncated(tmp_path / f"cut{suffix}", np.tile(noise, (8, 8, 1)))
    with pytest.raises(CorruptImageError) as caught:
        read_image(path)
    assert caught.value.path == path
    assert str(path) in str(caught.value) and "on_corrupt=skip" in str(caught.value)
    one_sentence(str(caught.value))


@pytest.mark.parametrize("content", [b"", b"this is not an image"])
def test_non_image_bytes_raise(tmp_path, content):
    path = tmp_path / "fake.png"
    path.write_bytes(content)
    with pytest.raises(CorruptImageError, match=r"fake\.png"):
        read_image(path)


def test_missing_file_raises_corrupt_image_error(tmp_path):
    with pytest.raises(CorruptImageError, match=r"nothing\.png"):
        read_image(tmp_path / "nothing.png")


def test_corrupt_image_error_is_a_dataset_error():
    assert issubclass(CorruptImageError, DatasetError)


def test_mask_0_255_is_binarised(tmp_path, write_png):
    pixels = np.array([[0, 255], [255, 0]], np.uint8)
    mask = read_mask(write_png(tmp_path / "m.png", pixels))
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, pixels > 0)


def test_mask_label_indices_count_as_anomalous(tmp_path, write_png):
    pixels = np.array([[0, 1, 2, 0]], np.uint8)
    np.testing.assert_array_equal(
        read_mask(write_png(tmp_path / "m.png", pixels)), [[False, True, True, False]]
    )


def test_palette_mask_keeps_indices_not_colours(tmp_path):
    path = tmp_path / "pm.png"
    img = Image.fromarray(np.array([[0, 1, 2]], np.uint8), mode="P")
    img.putpalette([255, 255, 255, 0, 0, 0, 9, 9, 9] + [0] * 759)  # index 0 is white on purpose
    img.save(path)
    np.testing.assert_array_equal(read_mask(path), [[False, True, True]])


def test_rgb_mask_is_any_channel_nonzero(tmp_path, write_png):
    pixels = np.array([[[0, 0, 0], [0, 0, 7], [255, 255, 255]]], np.uint8)
    np.testing.assert_array_equal(read_mask(write_png(tmp_path / "m.png", pixels)), [[False, True, True]])


def test_mask_of_other_size_is_nearest_resized(tmp_path, write_png):
    pixels = np.zeros((4, 4), np.uint8)
    pixels[:2, :2] = 255
    path = write_png(tmp_path / "small_mask.png", pixels)
    mask = read_mask(path, size=(8, 12))
    assert mask.shape == (8, 12)
    np.testing.assert_array_equal(mask, np.kron(pixels > 0, np.ones((2, 3), bool)))


def test_mask_of_right_size_does_not_warn(tmp_path, write_png):
    path = write_png(tmp_path / "m.png", np.zeros((4, 6), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_mask(path, size=(4, 6)).shape == (4, 6)


def test_corrupt_mask_raises(tmp_path, noise):
    with pytest.raises(CorruptImageError, match=r"mask\.png"):
        read_mask(_truncated(tmp_path / "mask.png", np.tile(noise[..., 0], (8, 8))))


@pytest.fixture
def mixed_samples(tmp_path, write_png, noise) -> list[Sample]:
    big = np.tile(noise, (8, 8, 1))
    good = write_png(tmp_path / "good.png", noise)
    mask = write_png(tmp_path / "good_mask.png", noise[..., 0])
    return [
        Sample(good, 0),
        Sample(_truncated(tmp_path / "cut.jpg", big), 0),
        Sample(good, 1, "scratch", mask),
        Sample(good, 1, "scratch", _truncated(tmp_path / "cut_mask.png", big[..., 0])),
    ]


def test_check_samples_skip_keeps_readable_and_warns_per_bad_file(mixed_samples):
    with pytest.warns(UserWarning) as records:
        kept = check_samples(mixed_samples, on_corrupt="skip")
    assert kept == [mixed_samples[0], mixed_samples[2]]
    messages = [str(record.message) for record in records]
    assert len(messages) == 2
    assert "cut.jpg" in messages[0] and "cut_mask.png" in messages[1]


def test_check_samples_error_raises_on_first_bad_file(mixed_samples):
    with pytest.raises(CorruptImageError, match=r"cut\.jpg"):
        check_samples(mixed_samples)


def test_check_samples_returns_all_when_clean(mixed_samples):
    clean = [mixed_samples[0], mixed_samples[2]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_samples(clean, on_corrupt="error") == clean


def test_check_samples_rejects_unknown_policy(mixed_samples, one_sentence):
    with pytest.raises(DatasetError, match="'ignore'") as caught:
        check_samples(mixed_samples, on_corrupt="ignore")
    one_sentence(str(caught.value))


def test_list_images_is_sorted_and_skips_hidden_and_other_files(tmp_path, write_png, noise):
    for name in ("b.PNG", "a.jpg", "._a.png"):
        write_png(tmp_path / name, noise)
    (tmp_path / "c.txt").touch()
    (tmp_path / "sub.png").mkdir()
    assert [path.name for path in list_images(tmp_path)] == ["a.jpg", "b.PNG"]
    assert list_images(tmp_path / "missing") == []


def test_check_samples_warns_per_anomalous_image_with_empty_mask(tmp_path, write_png, noise):
    image = write_png(tmp_path / "img.png", noise)
    empty = [write_png(tmp_path / f"empty{i}_mask.png", np.zeros((32, 48), np.uint8)) for i in range(2)]
    drawn = write_png(tmp_path / "drawn_mask.png", noise[..., 0])
    samples = [Sample(image, 0), *(Sample(image, 1, "scratch", mask) for mask in (*empty, drawn))]
    with pytest.warns(UserWarning) as records:
        assert check_samples(samples) == samples
    messages = [str(record.message) for record in records]
    assert len(messages) == 2
    for mask, message in zip(empty, messages, strict=True):
        assert str(mask) in message and "empty" in message


@pytest.mark.parametrize(
    ("masked", "note"),
    [
        (0, "None of the 3 anomalous test images has a mask"),
        (1, "2 of the 3 anomalous test images have no mask"),
    ],
)
def test_check_samples_notes_anomalous_images_without_mask_in_one_line(
    tmp_path, write_png, noise, masked, note
):
    """Anomalous images without a mask are kept (image metrics), with one line on the pixel metrics."""
    image = write_png(tmp_path / "img.png", noise)
    mask = write_png(tmp_path / "img_mask.png", noise[..., 0])
    samples = [Sample(image, 0), *(Sample(image, 1, "dent", mask if i < masked else None) for i in range(3))]
    with pytest.warns(UserWarning) as records:
        assert check_samples(samples) == samples
    messages = [str(record.message) for record in records]
    assert len(messages) == 1 and messages[0].startswith(note), messages
    assert "\n" not in messages[0] and str(image) in messages[0]


def test_check_samples_has_no_note_when_every_mask_is_known(tmp_path, write_png, noise):
    image = write_png(tmp_path / "img.png", noise)
    samples = [Sample(image, 0), Sample(image, 1, "dent", write_png(tmp_path / "m.png", noise[..., 0]))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_samples(samples) == samples


def _palette(path: Path) -> Path:
    img = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    img.putpalette([10, 20, 30, 200, 150, 100] + [0] * 762)
    img.save(path)
    return path


def test_check_samples_warns_once_with_a_count_per_conversion(tmp_path, write_png, noise):
    gray16 = write_png(tmp_path / "gray16.png", np.full((4, 4), 40000, np.uint16))
    rgb16 = tmp_path / "rgb16.png"
    cv2.imwrite(str(rgb16), np.full((4, 4, 3), 40000, np.uint16))  # Pillow decodes it as 8-bit RGB
    palette = _palette(tmp_path / "palette.png")
    rgb = write_png(tmp_path / "rgb.png", noise)
    mask = _palette(tmp_path / "palette_mask.png")  # masks are not converted images
    samples = [Sample(rgb, 0), Sample(gray16, 0), Sample(palette, 1, "dent", mask), Sample(rgb16, 0)]
    with pytest.warns(UserWarning) as records:
        check_samples(samples)
    assert [str(record.message) for record in records] == [
        f"Converted 3 image(s) to 8-bit RGB: 2 16-bit, 1 palette (first: {gray16})."
    ]


@pytest.mark.parametrize(
    ("pixels", "mode", "kind"),
    [
        (np.zeros((2, 2), np.uint8), "L", "grayscale"),
        (np.zeros((2, 2, 4), np.uint8), "RGBA", "with alpha"),
        (np.zeros((2, 2, 2), np.uint8), "LA", "with alpha"),
    ],
)
def test_check_samples_names_other_conversions(tmp_path, pixels, mode, kind):
    path = tmp_path / "x.png"
    Image.fromarray(pixels, mode=mode).save(path)
    with pytest.warns(UserWarning, match=f": 1 {kind} "):
        check_samples([Sample(path, 0)])


def test_masks_of_another_size_are_reported_once_by_the_data_check(tmp_path, write_png, noise):
    """Before training, not when the test set is first read (after stage 1 has trained)."""
    image = write_png(tmp_path / "image.png", noise)
    small = [write_png(tmp_path / f"small{i}_mask.png", np.full((4, 4), 255, np.uint8)) for i in range(2)]
    right = write_png(tmp_path / "right_mask.png", np.full(noise.shape[:2], 255, np.uint8))
    samples = [
        Sample(image, 1, "scratch", small[0]),
        Sample(image, 1, "scratch", right),
        Sample(image, 1, "s", small[1]),
    ]
    with pytest.warns(UserWarning) as records:
        assert check_samples(samples) == samples
    messages = [str(record.message) for record in records]
    assert len(messages) == 1
    h, w = noise.shape[:2]
    assert "2 mask(s) differ" in messages[0] and f"small0_mask.png is 4x4, its image {h}x{w}" in messages[0]
