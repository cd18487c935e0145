"""CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019) from the official .npy files under the data root.

`CIFAR-10-C/<name>.npy` is uint8 (50000, 32, 32, 3): severities 1..5 stacked, each the 10,000 CIFAR-10 test
images in test order; `labels.npy` holds the test labels repeated 5 times. When the files are absent the
evaluator generates the corruptions itself (`bnnbench.data.corruptions`); results record which.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bnnbench.data import OfficialCorruptions
from bnnbench.data.files import missing_file
from bnnbench.errors import UsageError, unknown_choice

__all__ = ["CIFAR10C_CORRUPTIONS", "cifar10c_available", "cifar10c_dir", "official_cifar10c", "read_cifar10c",
           "read_cifar10c_labels"]

# The 15 corruptions of Hendrycks & Dietterich (2019) that CIFAR-10-C results are reported on, in the
# paper's order (noise, blur, weather, digital).
CIFAR10C_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
# The official tar also ships four "extra" corruptions (held out in the paper); reading them is allowed.
_CIFAR10C_EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")


def cifar10c_dir(root: Path) -> Path:
    """The official CIFAR-10-C folder under `root`."""
    return Path(root) / "CIFAR-10-C"


def cifar10c_available(root: Path, names: list[str]) -> bool:
    """Whether labels.npy and `<name>.npy` for every name are present (not whether they are valid)."""
    folder = cifar10c_dir(root)
    return all((folder / f"{name}.npy").is_file() for name in ["labels", *names])


def _load_npy(path: Path, root: Path) -> np.ndarray:
    if not path.is_file():
        raise missing_file(path, root, "cifar10c", "the official CIFAR-10-C folder")
    try:
        # Memory-mapped: a corruption file is 150 MB and callers want one 30 MB severity of it.
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise UsageError(f"{path}: not a numpy .npy array ({error})") from None


def _severity_count(array: np.ndarray, path: Path) -> int:
    """Images per severity: the first dimension stacks severities 1..5 in equal blocks."""
    if len(array) == 0 or len(array) % 5:
        raise UsageError(f"{path}: first dimension must be 5 x (images per severity), got shape {array.shape}")
    return len(array) // 5


def _corruption_images(root: Path, name: str, n_labels: int | None = None) -> np.ndarray:
    """`<name>.npy` memory-mapped (only its header is read here) and checked: uint8 (5 x N, 32, 32, 3), with
    as many images as labels.npy has labels when `n_labels` is given."""
    if name not in CIFAR10C_CORRUPTIONS + _CIFAR10C_EXTRA:  # also keeps the name from leaving the folder
        raise unknown_choice("CIFAR-10-C corruption", name, CIFAR10C_CORRUPTIONS + _CIFAR10C_EXTRA)
    path = cifar10c_dir(root) / f"{name}.npy"
    images = _load_npy(path, Path(root))
    length = "5 x N" if n_labels is None else str(n_labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise UsageError(f"{path}: must be uint8 of shape ({length}, 32, 32, 3), got {images.dtype} {images.shape}")
    if n_labels is not None and len(images) != n_labels:
        raise UsageError(f"{path}: must be uint8 of shape ({length}, 32, 32, 3), one image per label in labels.npy, "
                         f"got {images.dtype} {images.shape}")
    _severity_count(images, path)
    return images


def read_cifar10c(root: Path, name: str, severity: int) -> np.ndarray:
    """The official CIFAR-10-C images of one corruption and severity: uint8 (N, 32, 32, 3) in CIFAR-10
    test order (N is 10,000 for the official files)."""
    if isinstance(severity, bool) or severity not in (1, 2, 3, 4, 5):
        raise UsageError(f"CIFAR-10-C severity must be one of 1..5, got {severity!r}")
    images = _corruption_images(root, name)
    n = len(images) // 5
    return np.array(images[(severity - 1) * n:severity * n])  # copies the slice, closes the map


def read_cifar10c_labels(root: Path) -> np.ndarray:
    """CIFAR-10-C labels.npy as int64 (5 x N,): the test labels repeated once per severity."""
    path = cifar10c_dir(root) / "labels.npy"
    labels = _load_npy(path, Path(root))
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise UsageError(f"{path}: must be integers of shape (5 x N,), got {labels.dtype} {labels.shape}")
    _severity_count(labels, path)
    return np.array(labels, dtype=np.int64)


def official_cifar10c(root: Path, test_labels: np.ndarray) -> OfficialCorruptions:
    """The official CIFAR-10-C files present under `root` (possibly none), their labels checked against the
    CIFAR-10 test labels (the evaluator uses them when every corruption a task asks for is there)."""
    present = tuple(name for name in CIFAR10C_CORRUPTIONS if cifar10c_available(root, [name]))
    if present:
        labels = read_cifar10c_labels(root)
        if len(labels) != 5 * len(test_labels) or not np.array_equal(labels[:len(test_labels)], test_labels):
            raise UsageError(f"{cifar10c_dir(root) / 'labels.npy'} does not match the CIFAR-10 test "
                             f"labels under {root} ({len(labels)} labels for {len(test_labels)} test images x 5)")
        for name in present:  # headers only: a malformed file fails at loading, not in the evaluator after training
            _corruption_images(root, name, len(labels))

    def read(name: str, severity: int) -> np.ndarray:
        return read_cifar10c(root, name, severity)

    return OfficialCorruptions(label="cifar10c", names=present, read=read)
