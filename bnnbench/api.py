"""The Python API, for notebooks: the command line's code path (`runner.prepare`, `runner.run`,
`results.load_results`, `compare.leaderboard`), returning pandas frames instead of printing."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["compare", "load_results", "run"]


def run(task: str, method: str, seeds: Iterable[int] = (0,), overrides: dict[str, Any] | None = None,
        results_dir: str | Path = "results/runs", budget: str | None = None, epochs: int | None = None,
        device: str = "auto", data_dir: str | Path | None = None, force: bool = False,
        save_predictions: bool = False, task_dirs: Iterable[str | Path] = ()) -> pd.DataFrame:
    """`bnnbench run` for each seed; the tidy metric rows of those runs (metrics.csv's columns).

    As on the command line, a seed whose run id already has an ok result is read, not re-run (`force=True`
    re-runs it), and bad input raises `bnnbench.errors.UsageError` before any work. A run that fails is
    written as a failed run and named in a warning; it has no rows. `method` may be "package.module:attr" of a
    MethodSpec; `task_dirs` are searched for task names, as `--tasks-dir`."""
    from bnnbench.runner import finished_run, prepare
    from bnnbench.runner import run as run_seed

    plan = prepare(task, method, overrides=dict(overrides or {}), budget_name=budget, epochs=epochs, device=device,
                   results_dir=Path(results_dir), save_predictions=save_predictions, show_progress=False,
                   data_dir=Path(data_dir) if data_dir else None, task_dirs=list(task_dirs))
    frames = []
    for seed in seeds:
        directory = None if force else finished_run(plan, seed)
        if directory is None:
            outcome = run_seed(plan, seed)
            if outcome.status != "ok":
                warnings.warn(f"{outcome.run_id} failed: {outcome.error}", stacklevel=2)
                continue
            directory = outcome.directory
        frames.append(pd.read_csv(directory / "metrics.csv", dtype={"corruption": str, "split": str}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_results(results_dir: str | Path = "results/runs") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, metrics): one row per run (run.json) and the long metric rows, as `compare` reads them."""
    from bnnbench.results import load_results as load

    return load(Path(results_dir))


def compare(results_dir: str | Path = "results/runs", task: str | Iterable[str] | None = None,
            metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """The leaderboard `bnnbench compare` shows, as a long frame: one row per (task, method, column) with mean,
    stderr, n, best and the method's mean rank."""
    from bnnbench.comparison import aggregate, leaderboard

    runs, rows = load_results(results_dir)
    if task is not None and not runs.empty:
        tasks = [task] if isinstance(task, str) else list(task)
        runs, rows = runs[runs["task"].isin(tasks)], rows[rows["task"].isin(tasks)]
    return leaderboard(runs, aggregate(runs, rows), list(metrics) if metrics else None)
