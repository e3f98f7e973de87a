"""Random crops of the natural images scikit-image ships, each with a random angle (paper section
4.1); the task filters a crop with its angle's steerable filter to make the target. Train,
validation and test crops come from disjoint source images. Each crop is standardised to zero
mean and unit variance: raw intensities around 0.5 make the filter's sum (its response to the
mean) dominate the loss, and the shape of the filter is then learned far more slowly."""

from __future__ import annotations

import math

import numpy as np
import skimage.data
import torch
from skimage.color import rgb2gray
from torch.utils.data import Dataset

from datamodules.stream import StreamDataModule, check_integers, sample_rng

SPLITS = {
    "train": (
        "astronaut",
        "brick",
        "chelsea",
        "coffee",
        "grass",
        "gravel",
        "hubble_deep_field",
        "immunohistochemistry",
        "retina",
        "cell",
        "page",
        "text",
    ),
    "val": ("moon",),
    "test": ("camera", "coins", "rocket"),
}


def load_images(names: tuple[str, ...]) -> list[np.ndarray]:
    """Grayscale float32 images in [0, 1]."""
    images = []
    for name in names:
        image = getattr(skimage.data, name)()
        image = rgb2gray(image[..., :3]) if image.ndim == 3 else image / 255.0
        images.append(np.ascontiguousarray(image, dtype=np.float32))
    return images


def random_crop(images: list[np.ndarray], rng: np.random.Generator, size: int) -> np.ndarray:
    image = images[rng.integers(len(images))]
    y = rng.integers(image.shape[0] - size + 1)
    x = rng.integers(image.shape[1] - size + 1)
    return image[y : y + size, x : x + size]


class SteerableCrops(Dataset):
    """Sample i: a crop [1, size, size] and an angle in [0, 2 pi), drawn from
    ``sample_rng(seed, i)``."""

    def __init__(self, images, seed: int, size: int, length: int | None = None) -> None:
        self.images, self.seed, self.size, self.length = images, seed, size, length

    def __len__(self) -> int:
        return self.length if self.length is not None else 2**62

    def __getitem__(self, index: int):
        rng = sample_rng(self.seed, index)
        crop = torch.from_numpy(random_crop(self.images, rng, self.size).copy())[None]
        crop = (crop - crop.mean()) / crop.std().clamp_min(1e-3)  # zero mean, unit variance
        theta = torch.tensor(rng.uniform(0.0, 2 * math.pi), dtype=torch.float32)
        return crop, theta


class SteerableDataModule(StreamDataModule):
    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        steps_per_epoch: int = 1000,
        crop_size: int = 64,
        val_size: int = 512,
        test_size: int = 2048,
    ) -> None:
        super().__init__(batch_size, num_workers, steps_per_epoch)
        check_integers(
            crop_size=(crop_size, 1),
            val_size=(val_size, 1),
            test_size=(test_size, 1),
        )
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        size = hp.crop_size
        # Fixed seeds, independent of the training seed, keep the evaluation sets fixed.
        self.train_set = SteerableCrops(load_images(SPLITS["train"]), hp.seed, size)
        self.val_set = SteerableCrops(load_images(SPLITS["val"]), 1, size, hp.val_size)
        self.test_set = SteerableCrops(load_images(SPLITS["test"]), 2, size, hp.test_size)
