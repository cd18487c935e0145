"""TOML in and out: the one place that imports `tomllib` (with `tomli` on Python 3.10), and the writer of the few
TOML values bnnbench writes itself (tuned files)."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["TOMLDecodeError", "loads", "parse_value", "toml_key", "toml_value"]

TOMLDecodeError = tomllib.TOMLDecodeError
loads = tomllib.loads


def parse_value(text: str) -> Any:
    """The TOML value `text` spells (`3e-4`, `[8, 8]`, `"x"`), or `text` itself when it is no TOML value: a
    `--set schedule=constant` need not quote its string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def toml_value(value: Any) -> str:
    """`value` (a bool, number, string, list or table) as TOML; ValueError for what TOML cannot hold."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value!r} has no TOML form")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise ValueError(f"{value!r} has no TOML form")


def toml_key(key: str) -> str:
    """A bare key where TOML allows one, else a quoted one."""
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)
