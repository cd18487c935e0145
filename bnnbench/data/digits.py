"""sklearn's 8x8 handwritten digits (1,797 images, shipped with scikit-learn: no download).

Pixels (0..16) are stored as uint8 images, round(v * 255 / 16), exactly as a real image data set would
be, so clean and corrupted test images share one quantisation. The train/val/test split is stratified
and depends only on `split_seed`, never on the run seed: every method and seed sees the same test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bnnbench.data import LoadedData
from bnnbench.types import DataBundle, Split

__all__ = ["Config", "load", "load_images"]


@dataclass(frozen=True)
class Config:
    """Fractions are of the whole data set."""

    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            raise ValueError(f"val_fraction={self.val_fraction} and test_fraction={self.test_fraction} "
                             "must be in (0, 1) and sum to less than 1")


def load_images() -> tuple[np.ndarray, np.ndarray]:
    """All digits as uint8 images (N, 8, 8, 1) and int64 labels (N,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, digits.target.astype(np.int64)


def load(config: Config, root: Path | None = None) -> LoadedData:
    """Stratified train/val/test split of the digits, as float tensors in [0, 1], shape (N, 1, 8, 8)."""
    from sklearn.model_selection import train_test_split

    images, labels = load_images()
    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=config.test_fraction, stratify=labels,
                                  random_state=config.split_seed)
    train, val = train_test_split(rest, test_size=config.val_fraction / (1 - config.test_fraction),
                                  stratify=labels[rest], random_state=config.split_seed)

    def split(rows: np.ndarray) -> Split:
        x = torch.from_numpy(images[rows]).permute(0, 3, 1, 2).float() / 255.0
        return Split(x.contiguous(), torch.from_numpy(labels[rows]))

    bundle = DataBundle(train=split(train), val=split(val), num_outputs=10, input_shape=(1, 8, 8))
    return LoadedData(bundle=bundle, test=split(test))
