"""Writers of tiny data sets in the publishers' real on-disk formats, for tests (no network): CIFAR-10/100
python pickles, the SVHN test .mat and CIFAR-10-C .npy files. They live in the package
(`bnnbench.data.synthetic_files`), which `bnnbench doctor --gpu` uses to write real-size sets."""

from __future__ import annotations

from bnnbench.data.synthetic_files import (
    CIFAR10_CLASSES,
    pickle_file,
    random_images,
    rows,
    write_cifar10,
    write_cifar10c,
    write_cifar100,
    write_svhn_test,
)

__all__ = ["CIFAR10_CLASSES", "pickle_file", "random_images", "rows", "write_cifar10", "write_cifar100",
           "write_cifar10c", "write_svhn_test"]
