"""The texture augmenters of DRAEM/AAND's randAugmenter (imgaug), as albumentations transforms.

The authors apply 3 distinct ops of ten, in the order drawn: albumentations' `RandomOrder(n=3)`.
Three of the ten are stock albumentations ops with imgaug's result (`Posterize`, `InvertImg`,
`Rotate`). The other seven differ from their stock namesakes in what they draw or compute, so the
faithful op is written here: each draws its values in `get_params` (from the transform's random
state, which `data.transforms.seeded` sets per sample) and applies them in `apply`, on uint8 RGB.
`authors_texture_augment()` is that composition; `conf/synthesis/default.yaml` lists the same ops.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

_LEVELS = np.arange(256, dtype=np.float32)

# (to, back, brightness channel) of imgaug's WithBrightnessChannels colour spaces, drawn uniformly.
BRIGHTNESS_SPACES = (
    (cv2.COLOR_RGB2YCrCb, cv2.COLOR_YCrCb2RGB, 0),
    (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB, 2),
    (cv2.COLOR_RGB2HLS, cv2.COLOR_HLS2RGB, 1),
    (cv2.COLOR_RGB2Lab, cv2.COLOR_Lab2RGB, 0),
    (cv2.COLOR_RGB2Luv, cv2.COLOR_Luv2RGB, 0),
    (cv2.COLOR_RGB2YUV, cv2.COLOR_YUV2RGB, 0),
)


def _lut(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Apply a 256-entry uint8 lookup table (shared, or one column per channel): imgaug's apply_lut."""
    return cv2.LUT(image, np.ascontiguousarray(table, dtype=np.uint8).reshape(1, 256, -1))


class GammaContrast(A.ImageOnlyTransform):
    """imgaug GammaContrast(gamma, per_channel=True): one gamma ~ U(gamma) per channel.

    Table 255·(v/255)^gamma in float32, truncated to uint8, as imgaug's adjust_contrast_gamma
    (albumentations' RandomGamma draws one gamma for all channels).
    """

    def __init__(self, gamma: tuple[float, float] = (0.5, 2.0), p: float = 1.0) -> None:
        super().__init__(p=p)
        self.gamma = tuple(gamma)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        channels = params["shape"][2] if len(params["shape"]) == 3 else 1
        return {"gammas": self.random_generator.uniform(*self.gamma, size=channels).astype(np.float32)}

    def apply(self, img: np.ndarray, gammas: np.ndarray, **params: Any) -> np.ndarray:
        levels = np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None]
        return _lut(img, np.clip(levels**gammas * 255, 0, 255).astype(np.uint8))


class MultiplyAndAddToBrightness(A.ImageOnlyTransform):
    """imgaug MultiplyAndAddToBrightness(mul, add): on a brightness channel, not on RGB.

    The colour space is one of YCrCb, HSV, HLS, Lab, Luv, YUV (imgaug's default list); only its
    brightness channel changes: multiplied by U(mul) (float32 table, truncated) and shifted by
    round(U(add)), in random order.
    """

    def __init__(
        self, mul: tuple[float, float] = (0.8, 1.2), add: tuple[float, float] = (-30.0, 30.0), p: float = 1.0
    ) -> None:
        super().__init__(p=p)
        self.mul = tuple(mul)
        self.add = tuple(add)

    def get_params(self) -> dict[str, Any]:
        return {
            "space": self.py_random.randrange(len(BRIGHTNESS_SPACES)),
            "multiply": self.py_random.uniform(*self.mul),
            "add": round(self.py_random.uniform(*self.add)),
            "multiply_first": self.py_random.random() < 0.5,
        }

    def apply(
        self, img: np.ndarray, space: int, multiply: float, add: int, multiply_first: bool, **params: Any
    ) -> np.ndarray:
        to_space, back, channel = BRIGHTNESS_SPACES[space]
        multiplied = np.clip(_LEVELS * np.float32(multiply), 0, 255).astype(np.uint8)
        added = np.clip(np.arange(256) + int(add), 0, 255).astype(np.uint8)
        table = added[multiplied] if multiply_first else multiplied[added]
        converted = cv2.cvtColor(img, to_space)
        converted[..., channel] = table[converted[..., channel]]
        return cv2.cvtColor(converted, back)


class EnhanceSharpness(A.ImageOnlyTransform):
    """imgaug pillike.EnhanceSharpness(factor): PIL's ImageEnhance.Sharpness, factor ~ U(factor)
    (albumentations' Sharpen is another filter)."""

    def __init__(self, factor: tuple[float, float] = (0.0, 2.0), p: float = 1.0) -> None:
        super().__init__(p=p)
        self.factor = tuple(factor)

    def get_params(self) -> dict[str, Any]:
        return {"factor": self.py_random.uniform(*self.factor)}

    def apply(self, img: np.ndarray, factor: float, **params: Any) -> np.ndarray:
        return np.asarray(ImageEnhance.Sharpness(Image.fromarray(img)).enhance(factor))


class AddToHueAndSaturation(A.ImageOnlyTransform):
    """imgaug AddToHueAndSaturation(value, per_channel=True): hue and saturation shifts drawn apart.

    Both are integers in `value`; the hue one is scaled to OpenCV's 0..179 wheel as imgaug does
    (int(h / 255 · 180), so -35..35) and wraps; saturation is clipped. albumentations'
    HueSaturationValue draws floats and leaves grey pixels grey.
    """

    def __init__(self, value: tuple[int, int] = (-50, 50), p: float = 1.0) -> None:
        super().__init__(p=p)
        self.value = tuple(value)

    def get_params(self) -> dict[str, Any]:
        return {"hue": self.py_random.randint(*self.value), "saturation": self.py_random.randint(*self.value)}

    def apply(self, img: np.ndarray, hue: int, saturation: int, **params: Any) -> np.ndarray:
        hue = int(np.float32(hue) / np.float32(255.0) * np.float32(180.0))
        levels = np.arange(256)
        table = np.stack([(levels + hue) % 180, np.clip(levels + saturation, 0, 255), levels], axis=1)
        hsv = _lut(cv2.cvtColor(img, cv2.COLOR_RGB2HSV), table)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


class Solarize(A.Solarize):
    """imgaug Solarize(p, threshold): invert the levels >= int(U(threshold)), threshold in levels.

    albumentations' Solarize with imgaug's draw: its continuous threshold inverts from the level
    above (ceil), imgaug's from the integer part.
    """

    def __init__(self, threshold: tuple[float, float] = (32.0, 128.0), p: float = 0.5) -> None:
        super().__init__(threshold_range=(threshold[0] / 255.0, threshold[1] / 255.0), p=p)
        self.threshold = tuple(threshold)

    def get_params(self) -> dict[str, float]:
        return {"threshold": int(self.py_random.uniform(*self.threshold)) / 255.0}


class Autocontrast(A.ImageOnlyTransform):
    """imgaug pillike.Autocontrast(cutoff): PIL's ImageOps.autocontrast with cutoff ~ U{cutoff} percent
    (albumentations' AutoContrast has a fixed cutoff and its own histogram stretch)."""

    def __init__(self, cutoff: tuple[int, int] = (0, 20), p: float = 1.0) -> None:
        super().__init__(p=p)
        self.cutoff = tuple(cutoff)

    def get_params(self) -> dict[str, Any]:
        return {"cutoff": self.py_random.randint(*self.cutoff)}

    def apply(self, img: np.ndarray, cutoff: int, **params: Any) -> np.ndarray:
        return np.asarray(ImageOps.autocontrast(Image.fromarray(img), cutoff=cutoff))


def _equalize_table(channel: np.ndarray) -> np.ndarray:
    """imgaug's equalize lookup for one channel: its own re-implementation of PIL's, which it runs on
    images of 4096 values and more (RGB from about 37x37 px: every size we train at).

    It differs from PIL's ImageOps.equalize in one place: the step is the count of all levels but 255
    divided by 255, where PIL leaves out the highest level present rather than level 255.
    """
    histogram = cv2.calcHist([channel], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    step = histogram[:-1].sum() // 255
    if np.count_nonzero(histogram) <= 1 or step == 0:
        return np.arange(256)
    below = np.concatenate([[0], np.cumsum(histogram)[:-1]])
    return np.minimum((step // 2 + below) // step, 255)


class Equalize(A.ImageOnlyTransform):
    """imgaug pillike.Equalize(): histogram-equalise each channel with imgaug's step (albumentations'
    Equalize(mode="pil") uses PIL's)."""

    def __init__(self, p: float = 1.0) -> None:
        super().__init__(p=p)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return _lut(img, np.stack([_equalize_table(c) for c in cv2.split(img)], axis=1))


def authors_texture_augment() -> A.RandomOrder:
    """DRAEM/AAND's randAugmenter with imgaug's ranges: 3 distinct of the ten ops, in the order drawn.

    Rotate is imgaug's Affine(rotate=(-45, 45)): bilinear about the centre, black corners (imgaug's
    positive angle turns the other way, which the symmetric range makes the same op).
    """
    return A.RandomOrder(
        [
            GammaContrast(),
            MultiplyAndAddToBrightness(),
            EnhanceSharpness(),
            AddToHueAndSaturation(),
            Solarize(),
            A.Posterize(num_bits=(1, 8), p=1.0),
            A.InvertImg(p=1.0),
            Autocontrast(),
            Equalize(),
            A.Rotate(
                limit=45, interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0
            ),
        ],
        n=3,
    )
