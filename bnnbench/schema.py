"""The value rules: what a value in a task table, a `--set` or an API argument must be, checked in this one place.

A rule is a type annotation (int, float, str, bool, dict, list[X], tuple[X, ...], unions with None, Any), the one
that the consumer declares on its configuration dataclass (a method's `Hparams`, a data source's `Config`,
`TrainConfig`, `Budget`), plus the ranges that hold whatever the key. Task files, `--set` pairs and the Python API
go through the same rule, so a value is accepted or refused the same way wherever it comes from.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any

from bnnbench.errors import UsageError

__all__ = ["MAX_INTEGER", "check_types", "conform", "range_problem", "value_problem"]

# Integers in a task table or `--set` are sizes, counts, epochs and seeds: anything past int32 is a typo that would
# only surface mid-run, as an overflow, an allocation that fails, or a job that never ends.
MAX_INTEGER = 2**31 - 1
_PLURALS = {int: "integers", float: "finite numbers", str: "strings", bool: "booleans (true or false)",
            dict: "tables"}
_SINGULARS = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false", dict: "a table"}


def value_problem(value: Any, expected: Any) -> str | None:
    """What `value` must be instead to fit the type annotation `expected` (int, float, str, bool, dict, list[X],
    tuple[X, ...], unions with None, Any), e.g. "an integer" or "a list of strings"; None when it fits. A float
    annotation takes an integer too (TOML writes 1 for 1.0). A value of the right type must also pass
    `range_problem`."""
    if not _fits(value, expected):
        return _describe(expected)
    return range_problem(value)


def range_problem(value: Any) -> str | None:
    """Why a number (or a list of numbers) is unusable whatever its key (NaN, infinite, or an integer beyond
    MAX_INTEGER), as what it must be instead; None when it is fine."""
    if isinstance(value, float) and not math.isfinite(value):
        return "a finite number"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
        return f"an integer between {-MAX_INTEGER} and {MAX_INTEGER}"
    if isinstance(value, list | tuple):
        for item in value:
            problem = range_problem(item)
            if problem:
                return f"a list whose items are each {problem}"
    return None


def check_types(table: dict[str, Any], expected: dict[str, Any], prefix: str, where: str) -> None:
    """Raise UsageError, naming the key, its value and what it must be, for the first value of `table` that does
    not fit its annotation in `expected` (key -> type); keys `expected` lacks are left to the table's own checks."""
    for key, value in table.items():
        if key in expected:
            problem = value_problem(value, expected[key])
            if problem:
                raise UsageError(f"{where}: key '{prefix}.{key}' must be {problem}, got {value!r}")


def _item_type(expected: Any) -> Any:
    """The element type of list[X] or tuple[X, ...]; Any for a bare or fixed-length sequence."""
    args = typing.get_args(expected)
    if typing.get_origin(expected) is list and len(args) == 1:
        return args[0]
    return args[0] if len(args) == 2 and args[1] is Ellipsis else Any


def _is_union(expected: Any) -> bool:
    return typing.get_origin(expected) in (typing.Union, types.UnionType)


def _fits(value: Any, expected: Any) -> bool:
    if expected is Any:
        return True
    if _is_union(expected):
        return any(_fits(value, option) for option in typing.get_args(expected))
    origin = typing.get_origin(expected) or expected
    if origin in (list, tuple):  # TOML has arrays only: a list stands for a tuple too
        return isinstance(value, list | tuple) and all(_fits(item, _item_type(expected)) for item in value)
    if origin is type(None):
        return value is None
    if origin in (int, float):  # bool is an int to Python, never to a task file
        numbers = int if origin is int else int | float
        return isinstance(value, numbers) and not isinstance(value, bool)
    return not isinstance(origin, type) or isinstance(value, origin)  # Any and the like: the consumer checks


def _describe(expected: Any, plural: bool = False) -> str:
    if _is_union(expected):
        return " or ".join(_describe(option, plural) for option in typing.get_args(expected)
                           if option is not type(None))
    origin = typing.get_origin(expected) or expected
    if origin in (list, tuple):
        item = _item_type(expected)
        items = "" if item is Any else f" of {_describe(item, plural=True)}"
        return f"lists{items}" if plural else f"a list{items}"
    names = _PLURALS if plural else _SINGULARS
    return names.get(origin, getattr(origin, "__name__", str(origin)))


def conform(value: Any, expected: Any) -> Any:
    """A value that fits `expected` (see `value_problem`) in the form its consumer reads: a float for a float
    annotation given an integer, a tuple for a tuple annotation given a list (TOML has arrays only); in a union,
    the form of the first option it fits."""
    if _is_union(expected):
        option = next((option for option in typing.get_args(expected) if _fits(value, option)), Any)
        return conform(value, option)
    origin = typing.get_origin(expected) or expected
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value
