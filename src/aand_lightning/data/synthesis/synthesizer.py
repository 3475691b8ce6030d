"""Stage-1 anomaly synthesis: Perlin blobs inside the foreground, filled with an augmented texture."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real

import numpy as np

from aand_lightning.data.synthesis.augmenters import authors_texture_augment
from aand_lightning.data.synthesis.perlin import NOISE_ROTATIONS, perlin_mask
from aand_lightning.data.synthesis.textures import TextureSource, make_texture_source
from aand_lightning.data.transforms import Transform, apply_seeded
from aand_lightning.errors import UserError

# The closed interval of each fraction of the synthesis config; `checks.check_config` checks the
# config against these before anything is built, and the synthesizer checks its arguments.
FRACTIONS = {"clean_probability": (0.0, 1.0), "beta_max": (0.0, 1.0)}
# The values of the settings that reproduce the authors' synthesis (the first of each is ours, the
# second theirs; `protocol=authors` selects theirs, docs/method.md lists them).
CHOICES = {
    "noise_rotation": NOISE_ROTATIONS,
    "after_max_tries": ("clean", "keep_next_draw"),
    "texture_channels": ("rgb", "bgr"),
}


def check_fractions(values: Mapping[str, object]) -> None:
    """Fail with one sentence naming `synthesis.<key>=<value>` unless each value is in its FRACTIONS range."""
    for key, value in values.items():
        low, high = FRACTIONS[key]
        if isinstance(value, bool) or not isinstance(value, Real) or not low <= value <= high:
            raise UserError(f"synthesis.{key}={value} is not valid; pass a number in [{low}, {high}].")


def check_choices(values: Mapping[str, object]) -> None:
    """Fail with one sentence naming `synthesis.<key>=<value>` unless each value is one of its CHOICES."""
    for key, value in values.items():
        if value not in CHOICES[key]:
            raise UserError(f"synthesis.{key}={value} is not valid; pass one of {', '.join(CHOICES[key])}.")


class AnomalySynthesizer:
    """DRAEM-style synthetic anomalies for AAND's amplification stage.

    Every draw comes from the `rng` passed to `__call__` (the texture augmentation's random state is
    drawn from it too), so a sample is reproducible from its seed and the object pickles cleanly into
    DataLoader workers. The textures come from `texture_source` when given, else from `textures`
    (procedural | dtd | folder, see `make_texture_source`); `texture_source.description` names them.
    `texture_augment` (albumentations, on uint8 RGB) augments each texture; None gives the authors'
    (`authors_texture_augment`), `albumentations.NoOp()` none.

    Three settings reproduce the authors' synthesis (CHOICES; ours first): `noise_rotation`
    (see `perlin_mask`), `after_max_tries` (when max_tries draws leave fewer than min_pixels: "clean"
    returns the clean image, "keep_next_draw" draws once more and keeps that mask, even empty, as
    their loop does) and `texture_channels` ("bgr" reverses each texture's channels before it is
    augmented and blended: the authors read DTD with cv2 and never convert it).
    """

    def __init__(
        self,
        texture_source: TextureSource | None = None,
        texture_augment: Transform | None = None,
        texture_dir: str | None = None,
        textures: str = "procedural",
        dtd_root: str | None = None,
        clean_probability: float = 0.2,
        beta_max: float = 0.8,
        min_scale_exp: int = 0,
        max_scale_exp: int = 5,
        threshold: float = 0.5,
        max_rotation: float = 90.0,
        min_pixels: int = 5,
        max_tries: int = 10,
        seed: int = 0,
        noise_rotation: str = "canvas",
        after_max_tries: str = "clean",
        texture_channels: str = "rgb",
    ) -> None:
        check_fractions({"clean_probability": clean_probability, "beta_max": beta_max})
        check_choices(
            {
                "noise_rotation": noise_rotation,
                "after_max_tries": after_max_tries,
                "texture_channels": texture_channels,
            }
        )
        if max_tries < 1:
            raise ValueError(f"max_tries must be at least 1, got {max_tries}; fix the config.")
        if texture_source is None:
            texture_source = make_texture_source(texture_dir, seed, textures, dtd_root)
        self.texture_source = texture_source
        self.texture_augment = authors_texture_augment() if texture_augment is None else texture_augment
        self.clean_probability = clean_probability
        self.beta_max = beta_max
        self.perlin = {
            "min_scale_exp": min_scale_exp,
            "max_scale_exp": max_scale_exp,
            "threshold": threshold,
            "max_rotation": max_rotation,
        }
        self.min_pixels = min_pixels
        self.max_tries = max_tries
        self.noise_rotation = noise_rotation
        self.after_max_tries = after_max_tries
        self.texture_channels = texture_channels

    def anomaly_mask(self, foreground: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """Perlin mask AND foreground, redrawn while fewer than min_pixels survive; after max_tries
        such draws None ("clean"), or one more draw, whatever it holds ("keep_next_draw")."""
        height, width = foreground.shape

        def draw() -> np.ndarray:
            mask = perlin_mask(height, width, rng, noise_rotation=self.noise_rotation, **self.perlin)
            return mask & foreground

        for _ in range(self.max_tries):
            mask = draw()
            if np.count_nonzero(mask) >= self.min_pixels:
                return mask
        return draw() if self.after_max_tries == "keep_next_draw" else None

    def texture(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A texture of the source, augmented: float32 (height, width, 3) in [0, 1], RGB unless
        texture_channels is "bgr" (then the channels are reversed before the augmentation)."""
        texture = self.texture_source.sample(rng, height, width)
        if self.texture_channels == "bgr":
            texture = np.ascontiguousarray(texture[..., ::-1])
        augmented = apply_seeded(
            self.texture_augment, rng, ("synthesis.texture_augment", "texture"), texture
        )["image"]
        return augmented.astype(np.float32) * np.float32(1.0 / 255.0)

    def __call__(
        self, image: np.ndarray, foreground: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(synthetic image float32 HxWx3, mask float32 HxW in {0, 1}) for a float32 RGB image in [0, 1].

        Inside the mask the pixel becomes (1-beta)·texture + beta·image with beta ~ U(0, beta_max);
        outside it stays exactly the original. The spec blends after ImageNet normalisation; that
        normalisation is a per-channel affine map n(x) = (x - mean)/std, and
        (1-beta)·n(t) + beta·n(x) = n((1-beta)·t + beta·x), so blending in [0, 1] is identical.
        With probability clean_probability (or when no mask survives) the image is returned as is
        with an empty mask.
        """
        image = np.asarray(image, dtype=np.float32)
        foreground = np.asarray(foreground, dtype=bool)
        if foreground.shape != image.shape[:2]:
            raise ValueError(
                f"Foreground shape {foreground.shape} differs from image size {image.shape[:2]}; "
                "resize the foreground to the image size."
            )
        empty = np.zeros(foreground.shape, np.float32)
        if rng.random() < self.clean_probability:
            return image, empty
        mask = self.anomaly_mask(foreground, rng)
        if mask is None:
            return image, empty
        texture = self.texture(rng, *foreground.shape)
        beta = np.float32(rng.uniform(0.0, self.beta_max))
        synthetic = image.copy()
        synthetic[mask] = (1.0 - beta) * texture[mask] + beta * image[mask]
        return synthetic, mask.astype(np.float32)
