"""Where data files live and how the publishers' on-disk formats of CIFAR-10/100 and SVHN are read.

Files sit under one data root (`--data-dir`, else $BNNBENCH_DATA, else $BNNBENCH_CACHE/data, else
~/.cache/bnnbench/data) in the layouts their publishers ship, so a copy made by torchvision or by hand works
unchanged: `cifar-10-batches-py/`, `cifar-100-python/`, `CIFAR-10-C/` and `svhn/test_32x32.mat`.

Every missing or malformed file is a one-line `UsageError` that names the file and how to get it
(`bnnbench.data.download` fetches them; `bnnbench.data.cifar_c` reads CIFAR-10-C).
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnnbench.errors import UsageError, error_line, unknown_choice

__all__ = ["CIFAR_CLASSES", "DATA_ENV", "CifarArrays", "data_root", "missing_file", "read_cifar",
           "read_cifar_test_images", "read_svhn_test"]

DATA_ENV = "BNNBENCH_DATA"

ROOT_HINT = "choose the data root with --data-dir or $" + DATA_ENV
_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
# (class names, labels) keys: CIFAR-100 is read with its 100 fine labels
_CIFAR_KEYS = {"cifar10": (b"label_names", b"labels"), "cifar100": (b"fine_label_names", b"fine_labels")}
CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}  # a meta file with another count is not the set
_CIFAR10_MAX_BATCHES = 5
_PIXELS = 32 * 32 * 3


def data_root(explicit: str | Path | None = None) -> Path:
    """The folder data files are read from and downloaded to; not created here."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    # Same default as bnnbench.data.splits.cache_dir, not imported from there: that module imports torch.
    return Path(os.environ.get("BNNBENCH_CACHE") or Path.home() / ".cache" / "bnnbench") / "data"


def missing_file(path: Path, root: Path, name: str, what: str) -> UsageError:
    """The error for a missing data file: what to download, or where to put a copy."""
    return UsageError(f"{path} not found; run `bnnbench data download {name}` or put {what} under {root} "
                      f"({ROOT_HINT})")


# ----------------------------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True, eq=False)  # eq=False: == on numpy fields would be ambiguous
class CifarArrays:
    """One CIFAR data set: uint8 images (N, 32, 32, 3) in HWC order and int64 labels (N,), in file order."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]
    n_train_batches: int


# What the official CIFAR python batches hold (dicts of bytes/str, lists, ints and numpy arrays): the only globals a
# batch may name, so a hostile file cannot call anything else while it is read.
ALLOWED_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                   ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: data files may hold data only")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[bytes, Any]:
    # The official files are Python 2 pickles; encoding="bytes" keeps their str keys as bytes, so keys are
    # b"data" whichever Python wrote the file. Only data types may be named (`_DataOnlyUnpickler`).
    with _unraisable_errors() as unraisable:
        try:
            with open(path, "rb") as handle:
                content = _DataOnlyUnpickler(handle, encoding="bytes").load()
            if isinstance(content, dict):
                content = {key.encode() if isinstance(key, str) else key: value for key, value in content.items()}
        except OSError as error:
            raise UsageError(f"{path}: cannot be read: {error.strerror or error}") from None
        except Exception as error:  # only data types can be built here, so whatever fails is the file's damage
            raise UsageError(f"{path}: not a CIFAR python pickle ({error_line(error)})") from None
    if unraisable:
        raise UsageError(f"{path}: not a CIFAR python pickle ({unraisable[0]})")
    if not isinstance(content, dict):
        raise UsageError(f"{path}: not a CIFAR python pickle (holds a {type(content).__name__}, not a dict)")
    return content


@contextmanager
def _unraisable_errors() -> Iterator[list[str]]:
    """Collects the errors Python could not raise, one line each, instead of printing them with a traceback: numpy
    reports so an array it cannot free, built from a damaged pickle's dtype state (flags no real dtype has)."""
    errors: list[str] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda report: errors.append(error_line(report.exc_value))
    try:
        yield errors
    finally:
        sys.unraisablehook = previous


def _key(content: dict[bytes, Any], key: bytes, path: Path) -> Any:
    if key not in content:
        raise UsageError(f"{path}: key {key.decode()!r} missing (has {', '.join(sorted(map(repr, content)))})")
    return content[key]


def _array(content: dict[bytes, Any], key: bytes, path: Path) -> np.ndarray:
    """`content[key]` as a numpy array whose dtype is a real one (a pickle sets a dtype's flags as it likes)."""
    try:
        array = np.asarray(_key(content, key, path))
    except (ValueError, TypeError, OverflowError) as error:  # ragged lists, numbers numpy has no type for
        raise UsageError(f"{path}: {key.decode()!r} is not an array ({error_line(error)})") from None
    if array.dtype.flags != np.dtype(array.dtype.str).flags:
        raise UsageError(f"{path}: {key.decode()!r} has a damaged dtype ({array.dtype} with flags {array.dtype.flags})")
    return array


def _class_names(path: Path, key: bytes, expected: int) -> tuple[str, ...]:
    names = _key(_unpickle(path), key, path)
    if not isinstance(names, list | tuple) or not names:
        raise UsageError(f"{path}: {key.decode()!r} is not a list of class names")
    try:
        decoded = tuple(name.decode() if isinstance(name, bytes) else str(name) for name in names)
    except UnicodeDecodeError as error:
        raise UsageError(f"{path}: {key.decode()!r} holds a class name that is not UTF-8 ({error})") from None
    if len(decoded) != expected:
        raise UsageError(f"{path}: {key.decode()!r} holds {len(decoded)} class names where the set has {expected}")
    return decoded


def _cifar_batch(path: Path, labels_key: bytes, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 32, 32, 3) and labels (n,) of one batch file."""
    content = _unpickle(path)
    data, labels = _array(content, b"data", path), _array(content, labels_key, path)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise UsageError(f"{path}: 'data' must be uint8 of shape (n, {_PIXELS}), got {data.dtype} {data.shape}")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise UsageError(f"{path}: {labels_key.decode()!r} must be {len(data)} integers, got {labels.dtype} "
                         f"{labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise UsageError(f"{path}: labels must lie in 0..{n_classes - 1}, found {labels.min()}..{labels.max()}")
    # Each row is channel-major: 1024 red, 1024 green, 1024 blue bytes, each plane row-major 32x32.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _cifar10_train_files(folder: Path, root: Path) -> list[Path]:
    """data_batch_1.. as far as they go; a gap (1, 2, 4) means a damaged copy, not a smaller one."""
    present = [n for n in range(1, _CIFAR10_MAX_BATCHES + 1) if (folder / f"data_batch_{n}").is_file()]
    if not present:
        raise missing_file(folder / "data_batch_1", root, "cifar10", "the official cifar-10-batches-py folder")
    gap = next((n for n in range(1, present[-1] + 1) if n not in present), None)
    if gap is not None:
        raise UsageError(f"{folder / f'data_batch_{gap}'} not found but data_batch_{present[-1]} is: training "
                         f"batches must be consecutive from data_batch_1; run `bnnbench data download cifar10` "
                         f"or restore the missing file")
    return [folder / f"data_batch_{n}" for n in present]


def cifar_files(root: Path, name: str) -> tuple[Path, list[Path], Path]:
    """(meta, training batches, test batch) of CIFAR-10 or CIFAR-100 under `root`; UsageError if one is missing."""
    if name not in _CIFAR_FOLDERS:
        raise unknown_choice("CIFAR data set", name, _CIFAR_FOLDERS)
    root = Path(root)
    folder = root / _CIFAR_FOLDERS[name]
    what = f"the official {_CIFAR_FOLDERS[name]} folder"
    if not folder.is_dir():
        raise missing_file(folder, root, name, what)
    if name == "cifar10":
        meta, test, train_files = folder / "batches.meta", folder / "test_batch", _cifar10_train_files(folder, root)
    else:
        meta, test, train_files = folder / "meta", folder / "test", [folder / "train"]
    for path in (meta, *train_files, test):
        if not path.is_file():
            raise missing_file(path, root, name, what)
    return meta, train_files, test


def svhn_test_file(root: Path) -> Path:
    return Path(root) / "svhn" / "test_32x32.mat"


def read_cifar(root: Path, name: str) -> CifarArrays:
    """CIFAR-10 or CIFAR-100 from the official python-pickle files under `root`.

    CIFAR-10 reads the training batches present (consecutive from data_batch_1; tests and quick runs
    may ship fewer than the official five) and records how many in `n_train_batches`. CIFAR-100 has
    one training file and uses the 100 fine labels.
    """
    meta, train_files, test = cifar_files(root, name)
    names_key, labels_key = _CIFAR_KEYS[name]
    classes = _class_names(meta, names_key, CIFAR_CLASSES[name])
    batches = [_cifar_batch(path, labels_key, len(classes)) for path in train_files]
    test_images, test_labels = _cifar_batch(test, labels_key, len(classes))
    return CifarArrays(
        train_images=np.concatenate([images for images, _ in batches]),
        train_labels=np.concatenate([labels for _, labels in batches]),
        test_images=test_images,
        test_labels=test_labels,
        classes=classes,
        n_train_batches=len(train_files),
    )


def read_cifar_test_images(root: Path, name: str) -> np.ndarray:
    """The test images of CIFAR-10 or CIFAR-100 (another set's out-of-distribution inputs), uint8 (N, 32, 32, 3):
    its meta and test files are read, checked as `read_cifar` checks them; its training files are not."""
    meta, _, test = cifar_files(root, name)
    names_key, labels_key = _CIFAR_KEYS[name]
    return _cifar_batch(test, labels_key, len(_class_names(meta, names_key, CIFAR_CLASSES[name])))[0]


# ------------------------------------------------------------------------------------------------ SVHN


# Run by `_read_mat_in_child` in a child interpreter: numeric arrays go back as .npy files (no pickles), the names
# the file holds on stdout, a reader's error on stderr with exit code 3.
_MAT_READER = """
import sys
import numpy as np
import scipy.io
path, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
try:
    content = scipy.io.loadmat(path)
    found = sorted(name for name in content if not name.startswith("__"))
    for name in names:
        if name in content:
            np.save(f"{out}/{name}.npy", np.asarray(content[name]), allow_pickle=False)
except Exception as error:
    sys.stderr.write(f"{type(error).__name__}: {error}".replace("\\n", " "))
    sys.exit(3)
print(" ".join(found))
"""


def _read_mat_in_child(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Variables `names` of a MATLAB .mat file, read by scipy in a child interpreter: scipy's C reader crashes the
    process (SIGSEGV, SIGBUS) on some damaged files (one changed byte in the SVHN file's variable tags did), and a
    damaged data file must be one line and exit 2, not a dead run."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bnnbench-mat-") as out:
        done = subprocess.run([sys.executable, "-I", "-c", _MAT_READER, str(path), out, *names],
                              capture_output=True, text=True)
        if done.returncode < 0:
            raise UsageError(f"{path}: scipy's MAT reader crashed on it (signal {-done.returncode}): the file is "
                             "damaged; download it again")
        if done.returncode != 0:
            reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
            raise UsageError(f"{path}: not a MATLAB .mat file scipy can read ({reason})")
        arrays = {name: np.load(Path(out) / f"{name}.npy", allow_pickle=False) for name in names
                  if (Path(out) / f"{name}.npy").is_file()}
    if len(arrays) < len(names):
        expected = " and ".join(repr(name) for name in names)
        raise UsageError(f"{path}: variables {expected} expected, found {', '.join(done.stdout.split()) or 'none'}")
    return arrays


def read_svhn_test(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """SVHN cropped-digits test set (`root/svhn/test_32x32.mat`): uint8 images (N, 32, 32, 3) and int64
    labels (N,) with the file's label 10 (its code for the digit 0) mapped to 0."""
    root = Path(root)
    path = svhn_test_file(root)
    if not path.is_file():
        raise missing_file(path, root, "svhn", "the official test_32x32.mat in a folder named svhn")
    content = _read_mat_in_child(path, ("X", "y"))
    images, labels = content["X"], content["y"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise UsageError(f"{path}: 'X' must be uint8 of shape (32, 32, 3, N), got {images.dtype} {images.shape}")
    n = images.shape[3]
    if labels.size != n or labels.dtype.kind not in "iuf":
        raise UsageError(f"{path}: 'y' must hold {n} labels, got {labels.dtype} {labels.shape}")
    labels = labels.reshape(n).astype(np.int64)
    if n and (labels.min() < 0 or labels.max() > 10):
        raise UsageError(f"{path}: labels must lie in 0..10, found {labels.min()}..{labels.max()}")
    labels[labels == 10] = 0
    return np.ascontiguousarray(images.transpose(3, 0, 1, 2)), labels
