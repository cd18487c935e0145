"""Result files: schema, deterministic run ids, atomic writes, and loading into pandas.

Each run is a directory `<results-dir>/<task>/<method>/<run_id>/` holding `metrics.csv` (tidy long rows),
`run.json` (configuration, provenance, costs, status) and optionally `predictions.npz` and `pointwise.npz`. The
directory is written under a temporary name and renamed into place, so a crash never leaves half a run and a re-run
replaces the old one whole.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from bnnbench.atomic import write_directory
from bnnbench.errors import UsageError

__all__ = ["IDENTITY", "METRIC_COLUMNS", "SCHEMA_VERSION", "check_output_file", "check_writable", "config_hash",
           "git_state", "json_safe", "load_results", "machine_name", "make_run_id", "run_directory", "run_ended_ok",
           "write_run"]

SCHEMA_VERSION = 1
# What a run id covers. 2 (issue 30): the whole effective configuration (every task table after includes and
# overrides, the method's settings, the budget, the data's fingerprint, the bnnbench version). 1, the run.json
# without the key: hyper-parameters and budget only, so two models of one task could share a run id.
IDENTITY = 2
METRIC_COLUMNS = ["run_id", "task", "task_version", "method", "seed", "split", "corruption", "severity",
                  "metric", "value"]


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of what changes a run's numbers (`runner._identity` says what that is)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def make_run_id(task: str, task_version: int, method: str, hash_: str, seed: int) -> str:
    """Deterministic in its inputs, so a re-run overwrites itself and a sweep can skip finished runs."""
    return f"{task}.v{task_version}.{method}.{hash_[:8]}.s{seed}"


def run_directory(results_dir: Path, task: str, method: str, run_id: str) -> Path:
    """Where a run's files live."""
    return Path(results_dir) / task / method / run_id


def check_writable(results_dir: Path, *subdirectories: str, what: str = "results dir") -> None:
    """Raise UsageError unless `results_dir` (and `subdirectories` under it, where a run goes) exist as writable
    directories or could be created: a file anywhere on that path, or an unwritable directory, is refused.

    Creates nothing: bad input must leave no result directory behind.
    """
    path = Path(results_dir, *subdirectories).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{what} '{results_dir}' is not writable: '{existing}' is not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UsageError(f"{what} '{results_dir}' is not writable: {error.strerror}") from None


def check_output_file(path: Path, option: str = "--out") -> None:
    """Raise UsageError unless `path` can be written as a file: not a directory, in a writable directory. `option`
    names the command's option in the message."""
    if Path(path).is_dir():
        raise UsageError(f"{option} '{path}' is a directory; give a file name")
    check_writable(Path(path).parent, what=f"{option} '{path}': folder")


def _metrics_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "value": repr(float(row["value"]))})  # repr: round-trips exactly
    return buffer.getvalue()


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None: JSON has no NaN or inf, and a run.json holding a
    bare `NaN` is one that strict readers (jq, browsers, other languages) refuse."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def write_run(directory: Path, record: dict[str, Any], rows: list[dict[str, Any]],
              predictions: dict[str, Any] | None = None, extra_files: dict[str, str] | None = None,
              pointwise: dict[str, Any] | None = None) -> None:
    """Write run.json, metrics.csv (and predictions.npz, pointwise.npz with each metric's per-example terms on each
    split, and text files such as a failure's traceback) to `directory` atomically."""
    with write_directory(directory) as staging:
        text = json.dumps(json_safe(record), indent=2, sort_keys=True, default=str, allow_nan=False)
        (staging / "run.json").write_text(text + "\n")
        if rows:
            (staging / "metrics.csv").write_text(_metrics_csv(rows))
        if predictions is not None:
            import numpy as np

            np.savez(staging / "predictions.npz", **predictions)
        if pointwise:
            import numpy as np

            # float32: a CIFAR-10-C run holds 76 splits x 10,000 examples of every metric's terms; their reweighted
            # means are summed in float64 (`paired`), and the file is read for intervals, not for the values
            np.savez_compressed(staging / "pointwise.npz",
                                **{key: np.asarray(terms, np.float32) for key, terms in pointwise.items()})
        for name, content in (extra_files or {}).items():
            (staging / name).write_text(content)


@cache
def git_state() -> tuple[str, bool]:
    """(commit sha, dirty) of the checkout bnnbench runs from, or ("unknown", False) outside git."""
    here = Path(__file__).parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip() != ""
        return sha, dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def machine_name() -> str:
    """A short description of this machine for provenance."""
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus"


_RUN_KEYS = ("run_id", "task", "method", "status", "config_hash")  # what every reader joins and groups on
_RUN_NUMBERS = ("fit_seconds", "peak_rss_mb", "eval_seconds", "duration_s")  # averaged by compare and report


class _Unreadable(Exception):
    """Why one run cannot be read: the run is skipped with one line naming the file."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"skipping {path}: {why}")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _read_record(path: Path) -> dict[str, Any]:
    """A run.json as a dict holding what readers rely on. Task and method default to the directory names, where
    the writer put them (`run_directory`)."""
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON and bad UTF-8 alike
        raise _Unreadable(path, f"not readable JSON ({_first_line(error)})") from None
    if not isinstance(record, dict):
        raise _Unreadable(path, "not a JSON object")
    record.setdefault("task", path.parent.parent.parent.name)
    record.setdefault("method", path.parent.parent.name)
    missing = [key for key in _RUN_KEYS if key not in record]
    if missing:
        raise _Unreadable(path, f"lacks required key(s): {', '.join(missing)}")
    for key in _RUN_KEYS:
        if not isinstance(record[key], str) or not record[key]:
            raise _Unreadable(path, f"{key} is not a non-empty string")
    for key in ("task_version", "seed"):
        if key in record and (isinstance(record[key], bool) or not isinstance(record[key], int)):
            raise _Unreadable(path, f"{key} is not an integer")
    for key in _RUN_NUMBERS:
        if record.get(key) is not None and (isinstance(record[key], bool) or not isinstance(record[key], int | float)):
            raise _Unreadable(path, f"{key} is not a number")
    if record.get("data_variant") is not None and not isinstance(record["data_variant"], str):
        raise _Unreadable(path, "data_variant is not a string")
    return record


def _read_metrics(path: Path, run_id: str):
    """A metrics.csv as a frame with numeric task_version, seed, severity and value; every other column text."""
    import pandas as pd

    try:  # all text first, so that a value which is not a number is found here rather than by a later mean
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as error:  # pandas' parser errors and bad UTF-8 are ValueErrors
        raise _Unreadable(path, f"not a readable CSV ({_first_line(error)})") from None
    missing = [column for column in METRIC_COLUMNS if column not in frame.columns]
    if missing:
        raise _Unreadable(path, f"lacks column(s): {', '.join(missing)}")
    if frame.empty:
        raise _Unreadable(path, "has no rows")
    cells = frame[METRIC_COLUMNS].fillna("").apply(lambda column: column.str.strip())
    blank = cells.eq("").any(axis=1).to_numpy().nonzero()[0]
    if len(blank):  # a row cut short: pandas fills the fields it lacks
        raise _Unreadable(path, f"row {blank[0] + 1} has empty fields (a truncated file?)")
    numbers = {}
    for column in ("task_version", "seed", "severity", "value"):
        parsed = pd.to_numeric(cells[column], errors="coerce")
        bad = parsed.isna() & ~cells[column].str.lower().isin(["nan", "+nan", "-nan"])
        if column != "value":
            bad |= parsed.notna() & (parsed != parsed.round())
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            kind = "a number" if column == "value" else "an integer"
            raise _Unreadable(path, f"row {row + 1}: {column} '{cells[column].iloc[row]}' is not {kind}")
        numbers[column] = parsed.astype(float if column == "value" else "int64")
    others = set(cells["run_id"]) - {run_id}
    if others:
        raise _Unreadable(path, f"holds rows of run {sorted(others)[0]}, not of {run_id}")
    return frame.assign(**numbers)


def _visible_runs(results_dir: Path) -> list[Path]:
    """run.json of every run directory, hidden ones skipped, except a run that a killed replacement left set aside
    (`.NAME.old.*/old`, see `atomic.replace_directory`) while NAME itself is gone: that is still the run of NAME."""
    found = []
    for run_json in sorted(results_dir.glob("*/*/*/run.json")):
        if not any(part.startswith(".") for part in run_json.relative_to(results_dir).parts):
            found.append(run_json)
    for run_json in sorted(results_dir.glob("*/*/.*.old.*/old/run.json")):
        task, method, retired = run_json.relative_to(results_dir).parts[:3]
        name = retired[1:].rsplit(".old.", 1)[0]
        hidden = task.startswith(".") or method.startswith(".")
        if not hidden and not (results_dir / task / method / name).exists():
            found.append(run_json)
    return found


def load_results(results_dir: Path, warn: Callable[[str], None] | None = None):
    """All runs under `results_dir` as two pandas frames: runs (one row each) and metrics (long rows).

    Hidden directories (runs being written, set aside or thrown away) are skipped. So is a run whose run.json or
    metrics.csv cannot be read or lacks what the readers need, or which repeats a run id already read: one line
    naming its file goes to `warn` (default: `warnings.warn`), and the other runs are still read.
    """
    import pandas as pd

    if warn is None:
        import warnings

        def warn(line: str) -> None:
            warnings.warn(line, stacklevel=3)

    results_dir = Path(results_dir)
    records, frames, seen = [], [], {}
    for run_json in _visible_runs(results_dir):
        try:
            record = _read_record(run_json)
            if record["run_id"] in seen:
                raise _Unreadable(run_json, f"run id {record['run_id']} was already read from {seen[record['run_id']]}")
            metrics_csv = run_json.with_name("metrics.csv")
            frame = _read_metrics(metrics_csv, record["run_id"]) if metrics_csv.is_file() else None
        except _Unreadable as skipped:
            warn(str(skipped))
            continue
        seen[record["run_id"]] = run_json
        records.append(record)
        if frame is not None:
            frames.append(frame)
    _warn_of_old_identities(records, results_dir, warn)
    runs = pd.DataFrame.from_records(records)
    metrics = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METRIC_COLUMNS)
    if not runs.empty:  # attach the configuration hash so identical method names with other settings differ
        from bnnbench.comparison import with_variant

        runs = with_variant(runs)
        metrics = metrics.merge(runs[["run_id", "config_hash", "status", "data_variant"]], on="run_id", how="left")
    return runs, metrics


def _warn_of_old_identities(records: list[dict[str, Any]], results_dir: Path, warn: Callable[[str], None]) -> None:
    """One line when some runs have run ids of the old kind, which did not cover the task's tables: they are read
    and shown apart from new runs (another config hash), but two models of a task may share one of their ids."""
    old = [record for record in records if record.get("identity", 1) < IDENTITY]
    if old:
        warn(f"{len(old)} run(s) under {results_dir} have run ids of the old kind (identity 1: hyper-parameters "
             "and budget only, not the task's [model] and [data]); they are kept apart from new runs, and re-running "
             "them gives ids of the new kind")


def run_ended_ok(directory: Path) -> bool:
    """Whether `directory` holds a run that ended ok (a re-run of it would only repeat it)."""
    try:
        record = json.loads((Path(directory) / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("status") == "ok"
