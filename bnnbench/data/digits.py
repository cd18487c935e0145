"""sklearn's 8x8 handwritten digits (1,797 images, shipped with scikit-learn: no download).

Pixels (0..16) are stored as uint8 images, round(v * 255 / 16), exactly as a real image data set would
be, so clean and corrupted test images share one quantisation. The train/val/test split is stratified
and depends only on `split_seed`, never on the run seed: every method and seed sees the same test set.
`train_fraction` keeps a stratified part of the training split (also by `split_seed`) and leaves val and
test as they are, so a small-data task is scored on the same images as the full one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bnnbench.data import LoadedData
from bnnbench.errors import UsageError
from bnnbench.types import DataBundle, Split

__all__ = ["Config", "load", "load_images", "shapes"]


@dataclass(frozen=True)
class Config:
    """`val_fraction` and `test_fraction` are of the whole data set; `train_fraction` is of the training split
    that they leave."""

    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    train_fraction: float = 1.0

    def __post_init__(self) -> None:
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            raise ValueError(f"val_fraction={self.val_fraction} and test_fraction={self.test_fraction} "
                             "must be in (0, 1) and sum to less than 1")
        if not 0 < self.train_fraction <= 1:
            raise ValueError(f"data.train_fraction = {self.train_fraction} must be in (0, 1]")


def load_images() -> tuple[np.ndarray, np.ndarray]:
    """All digits as uint8 images (N, 8, 8, 1) and int64 labels (N,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, digits.target.astype(np.int64)


def shapes(config: Config) -> tuple[tuple[int, ...], int]:
    """The bundle's input shape and outputs, known without loading: 8 x 8 grey images of 10 digits."""
    return (1, 8, 8), 10


def load(config: Config, root: Path | None = None) -> LoadedData:
    """Stratified train/val/test split of the digits, as float tensors in [0, 1], shape (N, 1, 8, 8)."""
    from sklearn.model_selection import train_test_split

    images, labels = load_images()
    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=config.test_fraction, stratify=labels,
                                  random_state=config.split_seed)
    train, val = train_test_split(rest, test_size=config.val_fraction / (1 - config.test_fraction),
                                  stratify=labels[rest], random_state=config.split_seed)
    if config.train_fraction < 1:  # after val and test are drawn, so those stay the full task's images
        kept = round(config.train_fraction * len(train))
        if kept < 10:  # stratification needs a row per class; fewer would leave classes unseen
            raise UsageError(f"data.train_fraction = {config.train_fraction} keeps {kept} of {len(train)} training "
                             "images; at least 10 (one per class) are needed")
        train, _ = train_test_split(train, train_size=kept, stratify=labels[train],
                                    random_state=config.split_seed)

    def split(rows: np.ndarray) -> Split:
        x = torch.from_numpy(images[rows]).permute(0, 3, 1, 2).float() / 255.0
        return Split(x.contiguous(), torch.from_numpy(labels[rows]))

    input_shape, num_outputs = shapes(config)
    bundle = DataBundle(train=split(train), val=split(val), num_outputs=num_outputs, input_shape=input_shape)
    info = {"n_rows": {"train": len(train), "val": len(val), "test": len(test)}}
    return LoadedData(bundle=bundle, test=split(test), info=info)
