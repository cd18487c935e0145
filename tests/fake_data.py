"""Writers of tiny data sets in the publishers' real on-disk formats, for tests (no network): CIFAR-10/100
python pickles, the SVHN test .mat and CIFAR-10-C .npy files."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import scipy.io

from bnnbench.data.cifar_c import cifar10c_dir

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def pickle_file(path: Path, content: dict) -> None:
    path.write_bytes(pickle.dumps(content))


def rows(images: np.ndarray) -> np.ndarray:
    """HWC images as the files store them: channel-major rows of 3072 bytes."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def random_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def write_cifar10(root: Path, batches: tuple[int, ...] = (1, 2), n: int = 4, n_test: int | None = None,
                  ) -> dict[str, np.ndarray]:
    """`batches` training batches of `n` images and a test batch of `n_test` (default `n`)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    # Class names as bytes: the official files are Python 2 pickles, read back with encoding="bytes".
    pickle_file(folder / "batches.meta", {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072})
    written = {}
    for number in batches:
        images, labels = random_images(n, number), [(number + i) % 10 for i in range(n)]
        pickle_file(folder / f"data_batch_{number}", {b"data": rows(images), b"labels": labels,
                                                      b"batch_label": f"training batch {number} of 5".encode()})
        written[f"images{number}"], written[f"labels{number}"] = images, np.array(labels)
    n_test = n if n_test is None else n_test
    test_images, test_labels = random_images(n_test, 99), [(9 - i) % 10 for i in range(n_test)]
    pickle_file(folder / "test_batch", {b"data": rows(test_images), b"labels": test_labels})
    written["test_images"], written["test_labels"] = test_images, np.array(test_labels)
    return written


def write_cifar100(root: Path, train: np.ndarray, train_labels: list[int], test: np.ndarray,
                   test_labels: list[int]) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    names = [f"class{i}".encode() for i in range(100)]
    pickle_file(folder / "meta", {b"fine_label_names": names, b"coarse_label_names": names[:20]})
    pickle_file(folder / "train", {b"data": rows(train), b"fine_labels": train_labels,
                                   b"coarse_labels": [label // 5 for label in train_labels]})
    pickle_file(folder / "test", {b"data": rows(test), b"fine_labels": test_labels,
                                  b"coarse_labels": [label // 5 for label in test_labels]})


def write_svhn_test(root: Path, images: np.ndarray, labels: list[int]) -> None:
    """The official layout: X is (32, 32, 3, N), y is (N, 1) with 10 standing for the digit 0."""
    (root / "svhn").mkdir(parents=True)
    scipy.io.savemat(root / "svhn" / "test_32x32.mat", {"X": images.transpose(1, 2, 3, 0),
                                                         "y": np.array(labels, np.uint8)[:, None]})


def write_cifar10c(root: Path, names: list[str], n: int = 3, labels: np.ndarray | None = None) -> Path:
    """Severity s of corruption number k is filled with 10 * s + k, so a slicing mistake shows up as a wrong
    value; `labels` (default 0..n-1) are the test labels, repeated for the 5 severities."""
    folder = cifar10c_dir(root)
    folder.mkdir(parents=True)
    for offset, name in enumerate(names):
        blocks = [np.full((n, 32, 32, 3), 10 * s + offset, np.uint8) for s in range(1, 6)]
        np.save(folder / f"{name}.npy", np.concatenate(blocks))
    labels = np.arange(n) if labels is None else labels
    np.save(folder / "labels.npy", np.tile(labels.astype(np.uint8), 5))
    return folder
