"""Data sources: one module per source, each with a `Config` dataclass, `load(config) -> LoadedData` and, where
the shapes follow from the config, `shapes(config) -> (input_shape, num_outputs)`, which `load` gives its bundle
too, so that the network can be sized before any data are read.

Image sources yield float tensors in [0, 1], shape (N, C, H, W); normalisation belongs to the model, so
corruptions and the evaluator see the same pixels. Sources that read files take them from a data root
(`--data-dir`, else $BNNBENCH_DATA, else a per-user cache folder: `bnnbench.data.files.data_root`).
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bnnbench.errors import UsageError, unknown_choice
from bnnbench.registry import Registry
from bnnbench.schema import check_types
from bnnbench.types import DataBundle, Split

if TYPE_CHECKING:
    import numpy as np

__all__ = ["DATA_SOURCES", "LoadedData", "OfficialCorruptions", "check_data_config", "declared_shapes", "load_data"]

DATA_SOURCES: Registry[str] = Registry("data source")  # source name -> module, imported on use
DATA_SOURCES.register("digits", "bnnbench.data.digits")
DATA_SOURCES.register("diabetes", "bnnbench.data.diabetes")
DATA_SOURCES.register("cifar10", "bnnbench.data.cifar")
DATA_SOURCES.register("cifar100", "bnnbench.data.cifar")
DATA_SOURCES.register("timeseries", "bnnbench.data.timeseries")
DATA_SOURCES.register("pets", "bnnbench.data.finegrained")
DATA_SOURCES.register("flowers", "bnnbench.data.finegrained")
DATA_SOURCES.register("aircraft", "bnnbench.data.finegrained")
DATA_SOURCES.register("dtd", "bnnbench.data.finegrained")


@dataclass(frozen=True)
class OfficialCorruptions:
    """A published corrupted copy of a test set (CIFAR-10-C): `read(name, severity)` returns the test images
    under that corruption as uint8 (N, H, W, C) in test order, for each corruption in `names`."""

    label: str  # e.g. "cifar10c"; results say whether they used these files or generated ones
    names: tuple[str, ...]
    read: Callable[[str, int], np.ndarray]


@dataclass(frozen=True)
class LoadedData:
    """A method's data and what the evaluator keeps for itself: the test split, out-of-distribution inputs
    (name -> Split, labels -1) and, when a published corrupted test set is at hand, its files (otherwise
    the evaluator generates the corruptions). `info` is recorded in run.json."""

    bundle: DataBundle
    test: Split
    ood: dict[str, Split] = field(default_factory=dict)
    official_corruptions: OfficialCorruptions | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _source_module(source: str, where: str):
    return importlib.import_module(DATA_SOURCES.get(source, where))


def _config(data: dict[str, Any], where: str):
    module = _source_module(data["source"], where)
    valid = {f.name for f in fields(module.Config)}
    # a module serving several sources (cifar10, cifar100) is told which one through its `source` field
    options = {key: value for key, value in data.items() if key != "source" or "source" in valid}
    for key in options:
        if key not in valid:
            raise unknown_choice("key", f"data.{key}", [f"data.{k}" for k in valid], where)
    # types first: a Config's own checks compare values, and "zero" < 1 would be a TypeError, not a message
    check_types(options, typing.get_type_hints(module.Config), "data", where)
    try:
        return module, module.Config(**options)
    except (TypeError, ValueError) as error:
        raise UsageError(f"{where}: bad [data] value: {error}") from None


def check_data_config(data: dict[str, Any], where: str) -> None:
    """Raise UsageError if the task's [data] table names an unknown source or key."""
    _config(data, where)


def declared_shapes(data: dict[str, Any], where: str = "task") -> tuple[tuple[int, ...], int] | None:
    """(input shape, outputs) of the bundle the task's [data] table would load, without reading anything; None for
    a source (a plugin's) that does not declare them."""
    module, config = _config(data, where)
    return module.shapes(config) if hasattr(module, "shapes") else None


def load_data(data: dict[str, Any], where: str = "task", root: str | Path | None = None) -> LoadedData:
    """Load a task's data as its [data] table describes; file-based sources read under `root`
    (default `data_root()`). Sources that read files name them (`source_files`), and `info` records their
    fingerprint."""
    from bnnbench.data.files import data_root
    from bnnbench.data.fingerprint import fingerprint

    module, config = _config(data, where)
    root = data_root(root)
    loaded = module.load(config, root)
    files = module.source_files(config, root) if hasattr(module, "source_files") else []
    if files:  # the data's identity: part of run.json (through `info`) and of the run id's hash
        loaded.info["data_fingerprint"] = fingerprint(files, root)
    return loaded
