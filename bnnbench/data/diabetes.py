"""sklearn's diabetes regression data (442 patients, 10 features; shipped with scikit-learn, no download).

The split is fixed and unshuffled, as in the sanity task's definition: the first `n_train` rows train,
the rest test, and there is no validation split (a sanity task has nothing to tune). Features and target
are standardised with the training rows' mean and standard deviation, so the test split leaks nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bnnbench.data import LoadedData
from bnnbench.types import DataBundle, Split

__all__ = ["Config", "load", "shapes"]

N_ROWS = 442
N_FEATURES = 10


@dataclass(frozen=True)
class Config:
    n_train: int = 342

    def __post_init__(self) -> None:
        if not 2 <= self.n_train < N_ROWS:
            raise ValueError(f"n_train must be in 2..{N_ROWS - 1}, got {self.n_train}")


def shapes(config: Config) -> tuple[tuple[int, ...], int]:
    """The bundle's input shape and outputs, known without loading."""
    return (N_FEATURES,), 1


def load(config: Config, root: Path | None = None) -> LoadedData:
    """Standardised float32 features (N, 10) and targets (N,)."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    train, test = slice(0, config.n_train), slice(config.n_train, None)
    x = (x - x[train].mean(axis=0)) / x[train].std(axis=0)
    y = (y - y[train].mean()) / y[train].std()

    def split(rows: slice) -> Split:
        return Split(torch.from_numpy(x[rows]).float(), torch.from_numpy(y[rows]).float())

    empty = Split(torch.zeros(0, x.shape[1]), torch.zeros(0))
    input_shape, num_outputs = shapes(config)
    bundle = DataBundle(train=split(train), val=empty, num_outputs=num_outputs, input_shape=input_shape)
    return LoadedData(bundle=bundle, test=split(test))
