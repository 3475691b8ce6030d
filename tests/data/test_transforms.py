"""The shared resize: PIL's antialiased bicubic (the authors') on real photos, nearest masks, cv2 option."""

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from aand_lightning.data.transforms import INTERPOLATIONS, as_size, resize

PHOTOS = ("chelsea", "coffee", "astronaut")  # 451x300, 600x400, 512x512: real photos shipped with skimage


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("size", [128, 64, (64, 96)])
def test_image_resize_is_pils_bicubic(name: str, size: int | tuple[int, int]) -> None:
    photo = getattr(skimage.data, name)()
    height, width = as_size(size)
    expected = np.asarray(Image.fromarray(photo).resize((width, height), Image.Resampling.BICUBIC))
    out = resize(size)(image=photo)["image"]
    assert out.shape == (height, width, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - expected).mean() <= 1.0  # the brief's bound, in 0..255 units
    np.testing.assert_array_equal(out, expected)


def test_mask_is_pils_nearest_and_stays_binary() -> None:
    mask = (skimage.data.coffee()[..., 0] > 128).astype(np.uint8)
    out = resize(64)(image=skimage.data.coffee(), mask=mask)
    expected = np.asarray(Image.fromarray(mask).resize((64, 64), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(out["mask"], expected)
    assert set(np.unique(out["mask"])) == {0, 1}


def test_cv2_cubic_stays_available_but_is_not_the_default() -> None:
    photo = skimage.data.chelsea()
    mask = (photo[..., 1] > 100).astype(np.uint8)
    out = resize(64, "cv2_cubic")(image=photo, mask=mask)
    np.testing.assert_array_equal(out["image"], cv2.resize(photo, (64, 64), interpolation=cv2.INTER_CUBIC))
    np.testing.assert_array_equal(out["mask"], cv2.resize(mask, (64, 64), interpolation=cv2.INTER_NEAREST))
    assert resize(64).interpolation == INTERPOLATIONS[0] == "pil_bicubic"
    assert np.abs(out["image"].astype(int) - resize(64)(image=photo)["image"]).mean() > 2  # 5/255 here


def test_unknown_interpolation_names_the_choices() -> None:
    with pytest.raises(
        ValueError, match=r"set preprocessing\.interpolation to one of pil_bicubic, cv2_cubic"
    ):
        resize(64, "bicubic")
