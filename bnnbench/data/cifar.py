"""CIFAR-10 and CIFAR-100 from the official python-pickle batches, with CIFAR-10-C and OOD test sets.

Files are read under the data root (see `bnnbench.data.files`); `bnnbench data download NAME` fetches them.
Validation images are a stratified `val_fraction` of of the official training set, fixed by `split_seed`
alone; the test split is the official test set, in file order, so official CIFAR-10-C files (which follow
that order) line up with it.

Out-of-distribution sets are other data sets' test images: CIFAR-100 for CIFAR-10 models (and the
reverse), SVHN for both. With `ood = "auto"` the ones present under the data root are used, the absent ones are
listed in run.json (`ood_missing`), and those whose files are there but refused (damaged, hostile or of the wrong
shape) are listed with the reason (`ood_refused`) and warned about on stderr; a list names sets that must be present
and readable. Only an OOD set's test images are read (CIFAR: its meta and test files).
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnnbench.data import LoadedData
from bnnbench.data import files as data_files
from bnnbench.data.cifar_c import cifar10c_dir, official_cifar10c
from bnnbench.errors import UsageError
from bnnbench.types import DataBundle, Split

__all__ = ["Config", "load", "shapes", "stratified_holdout"]

OOD_SETS = {"cifar10": ("cifar100", "svhn"), "cifar100": ("cifar10", "svhn")}  # defaults per source


@dataclass(frozen=True)
class Config:
    """`source` is cifar10 or cifar100; `ood` is "auto", "none" or a list drawn from cifar10, cifar100, svhn."""

    source: str = "cifar10"
    split_seed: int = 0
    val_fraction: float = 0.1  # of the official training set: 5,000 of CIFAR's 50,000 images
    ood: Any = "auto"

    def __post_init__(self) -> None:
        if self.source not in OOD_SETS:
            raise ValueError(f"unknown source '{self.source}'; valid choices: {', '.join(OOD_SETS)}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.ood not in ("auto", "none") and not (
                isinstance(self.ood, list) and all(name in ("cifar10", "cifar100", "svhn") for name in self.ood)):
            raise ValueError(f"ood must be \"auto\", \"none\" or a list drawn from cifar10, cifar100, svhn; "
                             f"got {self.ood!r}")


def _split(images: np.ndarray, labels: np.ndarray) -> Split:
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float().div_(255.0)
    return Split(x, torch.from_numpy(labels.astype(np.int64)))


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) with `fraction` of the rows of each class held out for validation."""
    index = np.arange(len(labels))
    if fraction == 0:
        return index, index[:0]
    from sklearn.model_selection import train_test_split

    try:
        train, val = train_test_split(index, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as error:  # too few images to hold out every class (a damaged or partial copy)
        raise UsageError(f"data.val_fraction = {fraction} of {len(labels)} training images cannot hold out each "
                         f"of the {len(np.unique(labels))} classes ({error})") from None
    return np.sort(train), np.sort(val)


def _ood_test_images(name: str, root: Path) -> np.ndarray:
    if name == "svhn":
        return data_files.read_svhn_test(root)[0]
    return data_files.read_cifar_test_images(root, name)


def _ood_absent(name: str, root: Path) -> bool:
    """Whether an OOD set's files are not under the data root (under "auto" it is then "missing"); files that are there
    but cannot be read are another case: refused, with a warning."""
    if name == "svhn":
        return not data_files.svhn_test_file(root).is_file()
    try:
        data_files.cifar_files(root, name)
    except UsageError:
        return True
    return False


def _ood_splits(config: Config, root: Path) -> tuple[dict[str, Split], list[str], dict[str, str]]:
    """The OOD test sets and, under "auto", the names of those that are absent and, name -> why, of those whose files
    were refused (each also one warning line on stderr: a damaged copy must not pass for an absent one)."""
    if config.ood == "none":
        return {}, [], {}
    wanted = OOD_SETS[config.source] if config.ood == "auto" else tuple(config.ood)
    if config.source in wanted:
        raise UsageError(f"data.ood lists '{config.source}', the in-distribution data set itself")
    splits, missing, refused = {}, [], {}
    for name in wanted:
        if config.ood == "auto" and _ood_absent(name, root):
            missing.append(name)
            continue
        try:
            images = _ood_test_images(name, root)
        except UsageError as error:
            if config.ood != "auto":
                raise
            refused[name] = str(error)
            sys.stderr.write(f"warning: out-of-distribution set '{name}' left out: {error}\n")
            continue
        splits[name] = Split(_split(images, np.zeros(len(images), np.int64)).x,
                             torch.full((len(images),), -1, dtype=torch.int64))  # no labels: OOD
    return splits, missing, refused


def source_files(config: Config, root: Path) -> list[Path]:
    """Every file `load` reads (and the evaluator reads later: CIFAR-10-C), for the data's fingerprint."""
    meta, train_files, test = data_files.cifar_files(root, config.source)
    files = [meta, *train_files, test]
    if config.ood != "none":
        for name in OOD_SETS[config.source] if config.ood == "auto" else tuple(config.ood):
            if name == "svhn":
                files += [data_files.svhn_test_file(root)]
            elif name in ("cifar10", "cifar100"):
                with contextlib.suppress(UsageError):  # absent under "auto"; `load` refuses what it must
                    meta, train_files, test = data_files.cifar_files(root, name)
                    files += [meta, test]
    if config.source == "cifar10":
        files += sorted(cifar10c_dir(root).glob("*.npy"))
    return [path for path in files if path.is_file()]


def shapes(config: Config) -> tuple[tuple[int, ...], int]:
    """The bundle's input shape and outputs, known without reading the files."""
    return (3, 32, 32), data_files.CIFAR_CLASSES[config.source]


def load(config: Config, root: Path) -> LoadedData:
    """Train/val/test of `config.source` as float tensors in [0, 1], shape (N, 3, 32, 32), plus OOD sets and,
    for CIFAR-10, the official CIFAR-10-C files when they are under the data root."""
    arrays = data_files.read_cifar(root, config.source)
    train_rows, val_rows = stratified_holdout(arrays.train_labels, config.val_fraction, config.split_seed)
    input_shape, num_outputs = shapes(config)  # read_cifar refuses a meta file of another class count
    bundle = DataBundle(train=_split(arrays.train_images[train_rows], arrays.train_labels[train_rows]),
                        val=_split(arrays.train_images[val_rows], arrays.train_labels[val_rows]),
                        num_outputs=num_outputs, input_shape=input_shape)
    ood, missing, refused = _ood_splits(config, root)
    info = {"data_root": str(root), "n_train_batches": arrays.n_train_batches, "ood_sets": sorted(ood),
            "ood_missing": missing, "ood_refused": refused}
    official = official_cifar10c(root, arrays.test_labels) if config.source == "cifar10" else None
    return LoadedData(bundle=bundle, test=_split(arrays.test_images, arrays.test_labels), ood=ood, info=info,
                      official_corruptions=official)
