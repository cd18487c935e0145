"""Data sources: one module per source, each with a `Config` dataclass and `load(config) -> LoadedData`.

Image sources yield float tensors in [0, 1], shape (N, C, H, W); normalisation belongs to the model, so
corruptions and the evaluator see the same pixels.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from typing import Any

from bnnbench.errors import UsageError, unknown_choice
from bnnbench.types import DataBundle, Split

__all__ = ["DATA_SOURCES", "LoadedData", "check_data_config", "load_data"]

DATA_SOURCES = {"digits": "bnnbench.data.digits", "diabetes": "bnnbench.data.diabetes"}  # source name -> module


@dataclass(frozen=True)
class LoadedData:
    """A method's data and the test split the evaluator keeps for itself."""

    bundle: DataBundle
    test: Split


def _source_module(source: str, where: str):
    if source not in DATA_SOURCES:
        raise unknown_choice("data source", source, DATA_SOURCES, where)
    return importlib.import_module(DATA_SOURCES[source])


def _config(data: dict[str, Any], where: str):
    module = _source_module(data["source"], where)
    options = {key: value for key, value in data.items() if key != "source"}
    valid = {f.name for f in fields(module.Config)}
    for key in options:
        if key not in valid:
            raise unknown_choice("key", f"data.{key}", [f"data.{k}" for k in valid], where)
    try:
        return module, module.Config(**options)
    except (TypeError, ValueError) as error:
        raise UsageError(f"{where}: bad [data] value: {error}") from None


def check_data_config(data: dict[str, Any], where: str) -> None:
    """Raise UsageError if the task's [data] table names an unknown source or key."""
    _config(data, where)


def load_data(data: dict[str, Any], where: str = "task") -> LoadedData:
    """Load a task's data as its [data] table describes."""
    module, config = _config(data, where)
    return module.load(config)
