"""Published-figure tables: read and check a table of numbers a paper reports (`tasks/references/*.toml`, or one a
user passes to `bnnbench compare --published-table`), so that compare can show them beside bnnbench's own runs.

A table names its source, a short label, where its numbers came from (`provenance`), and its figures. Each figure
keeps the number as the paper prints it (`measure`, `value`, `unit`) and names the bnnbench leaderboard column it is
shown in (`metric`); only the pairings in `CONVERSIONS` (or a measure that is the metric's own name, unitless) are
accepted, so a figure cannot land in a column that means something else. The table is checked strictly on reading,
every mistake one line naming the key, the bad value and the valid choices; metric names against the metric registry.
The tasks a figure names need not exist (a figure is shown only beside results of its tasks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnnbench import tomlfile
from bnnbench.errors import UsageError, unknown_choice
from bnnbench.metrics import METRICS
from bnnbench.package_files import builtin_tasks_dir

__all__ = ["CONVERSIONS", "MARKER", "PublishedFigure", "PublishedTable", "load_published", "shipped_tables"]

MARKER = "†"  # ends every published row's method label and starts its footnote
TABLE_KEYS = ("source", "label", "provenance", "figure")
FIGURE_KEYS = ("dataset", "tasks", "measure", "value", "unit", "metric")


@dataclass(frozen=True)
class Conversion:
    """How a published measure in `unit` becomes a value of the bnnbench metric `metric`."""

    metric: str
    convert: Callable[[float], float]
    formula: str  # what a footnote says about the conversion; empty where the figure is shown as printed


# (published measure, unit) -> the bnnbench column it is shown in. Error rates in % become accuracies (bnnbench has
# no error metric); LTSF papers report MSE and MAE on the standardised series, which bnnbench calls mse_std, mae_std
CONVERSIONS: dict[tuple[str, str], Conversion] = {
    ("error rate", "%"): Conversion("acc", lambda value: 1.0 - value / 100.0, "acc = 1 - error rate / 100"),
    ("mse", ""): Conversion("mse_std", lambda value: value, ""),
    ("mae", ""): Conversion("mae_std", lambda value: value, ""),
}


@dataclass(frozen=True)
class PublishedFigure:
    """One number a paper reports, and the bnnbench column and value it is shown as."""

    dataset: str
    tasks: tuple[str, ...]  # every bnnbench task of the figure's dataset it is shown beside
    measure: str  # as the paper names it
    value: float  # as the paper prints it
    unit: str
    metric: str  # the bnnbench leaderboard column
    shown: float  # `value` converted to `metric`
    formula: str  # the conversion, for the footnote; empty when shown as printed

    def printed(self) -> str:
        """The figure as the paper prints it: "error rate 7.746 %"."""
        return f"{self.measure} {self.value:g}" + (f" {self.unit}" if self.unit else "")


@dataclass(frozen=True)
class PublishedTable:
    """A checked published-figure table."""

    path: Path
    source: str
    label: str
    provenance: str
    figures: tuple[PublishedFigure, ...]

    @property
    def method_label(self) -> str:
        """The method column's text for this table's rows, which no method name can be: "Kim 2026 (published)†"."""
        return f"{self.label} (published){MARKER}"

    def footnote(self, figure: PublishedFigure) -> str:
        """The line under a leaderboard that shows `figure`: where it came from, and that it is not a run."""
        converted = f"; shown as {figure.formula} ({figure.printed()})" if figure.formula else ""
        return f"{MARKER} {self.source}: {self.provenance} — not a bnnbench run{converted}"

    def figures_for(self, task: str, metrics: Iterable[str] | None = None) -> list[PublishedFigure]:
        """The figures shown beside `task` (only those of `metrics`, when given)."""
        wanted = None if metrics is None else set(metrics)
        return [figure for figure in self.figures
                if task in figure.tasks and (wanted is None or figure.metric in wanted)]


def shipped_tables() -> list[Path]:
    """The published-figure tables that ship with bnnbench (beside the task files, in a folder the task scan skips)."""
    return sorted((builtin_tasks_dir() / "references").glob("*.toml"))


def load_published(path: Path) -> PublishedTable:
    """Read and check the table at `path`; UsageError (one line naming the key and what is valid) if it is bad."""
    path = Path(path)
    try:
        raw = tomlfile.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomlfile.TOMLDecodeError) as error:
        lines = str(error).strip().splitlines()
        raise UsageError(f"cannot read published figures '{path}': {lines[0] if lines else type(error).__name__}") \
            from None
    _known_keys(raw, TABLE_KEYS, "key", str(path))
    source, label, provenance = (_text(raw, key, str(path)) for key in ("source", "label", "provenance"))
    entries = raw.get("figure")
    if not isinstance(entries, list) or not entries or not all(isinstance(entry, dict) for entry in entries):
        raise UsageError(f"{path}: needs [[figure]] tables, one per published number")
    figures = [_figure(entry, f"{path}: figure {number}") for number, entry in enumerate(entries, start=1)]
    seen: dict[tuple[str, str], str] = {}
    for figure in figures:  # two numbers for one cell would make the row say which one is shown by chance
        for task in figure.tasks:
            if (task, figure.metric) in seen:
                raise UsageError(f"{path}: figures {seen[(task, figure.metric)]} and {figure.dataset} both give "
                                 f"{figure.metric} of task {task}")
            seen[(task, figure.metric)] = figure.dataset
    return PublishedTable(path, source, label, provenance, tuple(figures))


def _figure(entry: dict[str, Any], where: str) -> PublishedFigure:
    _known_keys(entry, FIGURE_KEYS, "figure key", where)
    if isinstance(entry.get("dataset"), str):
        where = f"{where} ({entry['dataset']})"
    missing = [key for key in FIGURE_KEYS if key not in entry]
    if missing:
        raise UsageError(f"{where}: lacks {', '.join(missing)}; a figure needs {', '.join(FIGURE_KEYS)}")
    dataset = _text(entry, "dataset", where)
    tasks = entry.get("tasks")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(task, str) and task for task in tasks):
        raise UsageError(f"{where}: tasks must be a non-empty list of task names, not {tasks!r}")
    measure, metric = _text(entry, "measure", where), _text(entry, "metric", where)
    unit = entry.get("unit")
    if not isinstance(unit, str):
        raise UsageError(f"{where}: unit must be a string (\"\" for a plain number), not {unit!r}")
    value = entry["value"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"{where}: value {value!r} is not a finite number")
    conversion = CONVERSIONS.get((measure, unit))
    if conversion is None and measure == metric and unit == "":  # a bnnbench metric's own name: shown as printed
        conversion = Conversion(metric, lambda printed: printed, "")
    if conversion is None:
        known = [f"'{m}' in '{u}' as {c.metric}" for (m, u), c in CONVERSIONS.items()]
        raise UsageError(f"{where}: no known way to show measure '{measure}' in unit '{unit}' as a bnnbench metric; "
                         f"known: {', '.join(known)}, or a metric's own name with unit \"\"")
    if metric != conversion.metric:
        raise UsageError(f"{where}: measure '{measure}' in unit '{unit}' is shown as metric '{conversion.metric}', "
                         f"not '{metric}'")
    METRICS.check(metric, where=where)  # a column bnnbench never fills would hold nothing to compare with
    return PublishedFigure(dataset, tuple(tasks), measure, float(value), unit, metric,
                           conversion.convert(float(value)), conversion.formula)


def _known_keys(table: dict[str, Any], keys: tuple[str, ...], kind: str, where: str) -> None:
    for key in table:
        if key not in keys:
            raise unknown_choice(kind, key, keys, where)


def _text(table: dict[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{where}: {key} must be a non-empty string, not {value!r}")
    return value
