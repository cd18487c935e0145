"""Result files: schema, deterministic run ids, atomic writes, and loading into pandas.

Each run is a directory `<results-dir>/<task>/<method>/<run_id>/` holding `metrics.csv` (tidy long rows),
`run.json` (configuration, provenance, costs, status) and optionally `predictions.npz`. The directory
is written under a temporary name and renamed into place, so a crash never leaves half a run and a
re-run replaces the old one whole.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from bnnbench.errors import UsageError

__all__ = ["METRIC_COLUMNS", "SCHEMA_VERSION", "check_writable", "config_hash", "git_state", "load_results",
           "machine_name", "make_run_id", "replace_directory", "run_directory", "write_run", "write_text_atomic"]

SCHEMA_VERSION = 1
METRIC_COLUMNS = ["run_id", "task", "task_version", "method", "seed", "split", "corruption", "severity",
                  "metric", "value"]


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of what changes a run's numbers (hyper-parameters and budget)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def make_run_id(task: str, task_version: int, method: str, hash_: str, seed: int) -> str:
    """Deterministic in its inputs, so a re-run overwrites itself and a sweep can skip finished runs."""
    return f"{task}.v{task_version}.{method}.{hash_[:8]}.s{seed}"


def run_directory(results_dir: Path, task: str, method: str, run_id: str) -> Path:
    """Where a run's files live."""
    return Path(results_dir) / task / method / run_id


def check_writable(results_dir: Path) -> None:
    """Raise UsageError unless `results_dir` exists as a writable directory or could be created.

    Creates nothing: bad input must leave no result directory behind.
    """
    path = Path(results_dir).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"results dir '{results_dir}' is not writable: '{existing}' is not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UsageError(f"results dir '{results_dir}' is not writable: {error.strerror}") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        handle.write(text)
    os.replace(handle.name, path)


def _metrics_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "value": repr(float(row["value"]))})  # repr: round-trips exactly
    return buffer.getvalue()


def write_run(directory: Path, record: dict[str, Any], rows: list[dict[str, Any]],
              predictions: dict[str, Any] | None = None) -> None:
    """Write run.json, metrics.csv (and predictions.npz) to `directory` atomically."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        (staging / "run.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        if rows:
            (staging / "metrics.csv").write_text(_metrics_csv(rows))
        if predictions is not None:
            import numpy as np

            np.savez(staging / "predictions.npz", **predictions)
        replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_directory(staging: Path, directory: Path) -> None:
    """Move the finished `staging` directory to `directory` (a sibling), swapping out any old one whole, then
    dropping it: readers see the old or the new, never a mix."""
    if directory.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
        os.replace(directory, retired / "old")
        os.replace(staging, directory)
        shutil.rmtree(retired)
    else:
        os.replace(staging, directory)


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


def load_results(results_dir: Path):
    """All runs under `results_dir` as two pandas frames: runs (one row each) and metrics (long rows).

    Hidden directories (runs being written) are skipped.
    """
    import pandas as pd

    records, frames = [], []
    for run_json in sorted(Path(results_dir).glob("*/*/*/run.json")):
        if any(part.startswith(".") for part in run_json.relative_to(results_dir).parts):
            continue
        record = json.loads(run_json.read_text())
        records.append(record)
        metrics_csv = run_json.with_name("metrics.csv")
        if metrics_csv.is_file():
            frames.append(pd.read_csv(metrics_csv, dtype={"corruption": str, "split": str}))
    runs = pd.DataFrame.from_records(records)
    metrics = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METRIC_COLUMNS)
    if not runs.empty:  # attach the configuration hash so identical method names with other settings differ
        from bnnbench.compare import with_variant

        runs = with_variant(runs)
        metrics = metrics.merge(runs[["run_id", "config_hash", "status", "data_variant"]], on="run_id", how="left")
    return runs, metrics
