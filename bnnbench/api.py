"""The Python API: one function per job (`run`, `sweep`, `tune`, `compare`, `load_results`). The command line calls
these same functions and adds only presentation: it parses strings (seed ranges, `--set` pairs) and prints what the
functions report through their callbacks and return. Bad input raises `bnnbench.errors.UsageError` (one line) before
any work, as on the command line. Imports stay light here (no pandas, no torch) so the command line can import it."""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bnnbench.errors import UsageError, unknown_choice
from bnnbench.types import TaskSpec

if TYPE_CHECKING:
    import pandas as pd

    from bnnbench.runner import RunOutcome, RunPlan
    from bnnbench.sweep import SweepResult
    from bnnbench.tuned import TuneOutcome

__all__ = ["MAX_SEED", "MAX_SEEDS", "TuneResult", "check_seeds", "compare", "load_results", "run", "sweep", "tune"]

MAX_SEED = 2**64 - 1  # what torch.manual_seed takes
MAX_SEEDS = 1_000_000  # so that a typo cannot fill the memory
EXECUTORS = ("local", "ray")

PathLike = str | Path


def check_seeds(seeds: Iterable[int]) -> list[int]:
    """Each seed once, in the order first given. UsageError unless every seed is an integer in 0..MAX_SEED and
    there are between 1 and MAX_SEEDS of them (counted as they come, so a huge range is refused, not built)."""
    if isinstance(seeds, str | bytes) or not isinstance(seeds, Iterable):
        raise UsageError(f"seeds must be a list of integers, got {seeds!r}")
    unique: dict[int, None] = {}  # insertion-ordered set
    for seed in seeds:
        try:
            value = operator.index(seed) if not isinstance(seed, bool) else None
        except TypeError:
            value = None
        if value is None:
            raise UsageError(f"seeds must be integers, got {seed!r}")
        if not 0 <= value <= MAX_SEED:
            raise UsageError(f"seed {value} is out of range: seeds must lie in 0..{MAX_SEED}")
        unique[value] = None
        if len(unique) > MAX_SEEDS:
            raise UsageError(f"too many seeds: at most {MAX_SEEDS:,} in all")
    if not unique:
        raise UsageError("at least one seed is needed")
    return list(unique)


def run(task: PathLike | TaskSpec, method: str, seeds: Iterable[int] = (0,), overrides: Mapping[str, Any] | None = None,
        results_dir: PathLike = "results/runs", budget: str | None = None, epochs: int | None = None,
        device: str = "auto", data_dir: PathLike | None = None, force: bool = False, save_predictions: bool = False,
        task_dirs: Iterable[PathLike] = (), tuned: PathLike | None = None, compile: bool = False,
        show_progress: bool = False, on_run: Callable[[RunOutcome], None] | None = None) -> pd.DataFrame:
    """`bnnbench run` for each seed; the tidy metric rows of those runs (metrics.csv's columns).

    A seed whose run id already has an ok result is read, not re-run (`force=True` re-runs it). A run that fails is
    written as a failed run and has no rows. `on_run(outcome)` hears of each seed as it ends, with status "ok",
    "failed" or "skipped" (an ok result was there); without it a failed run is named in a warning. `method` may be
    "package.module:attr" of a MethodSpec; `task_dirs` are searched for task names (`--tasks-dir`); `tuned` is a
    `tune` file whose settings for the method apply under `overrides`; `compile` runs the network through
    torch.compile."""
    import pandas as pd

    from bnnbench.runner import prepare

    seeds = check_seeds(seeds)
    if tuned is not None:
        from bnnbench.tuned import check_report_seeds

        check_report_seeds(Path(tuned), seeds)
    if overrides is not None and not isinstance(overrides, Mapping):
        raise UsageError(f"overrides must be a dict of hyper-parameter values, got {overrides!r}")
    plan = prepare(task, method, overrides=dict(overrides or {}), budget_name=budget, epochs=epochs, device=device,
                   results_dir=Path(results_dir), save_predictions=save_predictions, show_progress=show_progress,
                   data_dir=_path(data_dir), task_dirs=list(task_dirs), tuned=_path(tuned), compile=compile)
    frames = []
    for seed in seeds:
        outcome = _run_or_skip(plan, seed, force)
        if on_run is not None:
            on_run(outcome)
        elif outcome.status == "failed":
            warnings.warn(f"{outcome.run_id} failed: {outcome.error}", stacklevel=2)
        if outcome.status != "failed":
            frames.append(pd.read_csv(outcome.directory / "metrics.csv", dtype={"corruption": str, "split": str}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _run_or_skip(plan: RunPlan, seed: int, force: bool) -> RunOutcome:
    """The seed's run; or, when its run id already ended ok and not `force`, a "skipped" outcome naming it."""
    from bnnbench.runner import RunOutcome, finished_run
    from bnnbench.runner import run as run_seed

    existing = None if force else finished_run(plan, seed)
    if existing is None:
        return run_seed(plan, seed)
    return RunOutcome(existing.name, existing, "skipped", "", {}, {})


def sweep(tasks: Iterable[PathLike | TaskSpec], methods: Iterable[str], seeds: Iterable[int] = (0,),
          grid: Iterable[Mapping[str, Any]] = ({},), executor: str = "local", workers: int = 1,
          ray_address: str | None = None, gpus_per_run: float | None = None, threads: int | None = None,
          force: bool = False, device: str = "auto", results_dir: PathLike = "results/runs",
          budget: str | None = None, epochs: int | None = None, data_dir: PathLike | None = None,
          save_predictions: bool = False, task_dirs: Iterable[PathLike] = (), tuned: PathLike | None = None,
          on_update: Callable[[SweepResult, int], None] | None = None) -> SweepResult:
    """`bnnbench sweep`: every task x method x grid entry x seed, one run each, as `run` would do it; runs with an ok
    result are skipped (`force` re-runs them) and a failure stays in its run. `grid` lists override dicts, one
    configuration each (`bnnbench.sweep.parse_grid` makes the cartesian product of `--set` axes). `executor`
    "local" runs on `workers` processes of `threads` torch threads; "ray" on the cluster at `ray_address`, else on
    a Ray started here with `workers` CPUs, each run asking for `threads` CPUs and `gpus_per_run` GPUs (default:
    the task's [resources]). Each task file is read once. `on_update(result, running)` hears of every change."""
    from bnnbench.sweep import LocalPool, expand, run_local, run_ray

    request = (_names(tasks, "tasks"), _names(methods, "methods"), check_seeds(seeds), _grid(grid),
               {"budget_name": budget, "epochs": epochs, "device": device, "results_dir": Path(results_dir),
                "data_dir": _path(data_dir), "save_predictions": save_predictions, "task_dirs": list(task_dirs),
                "tuned": _path(tuned)})
    _check_executor(executor, workers, threads)
    if tuned is not None:
        from bnnbench.tuned import check_report_seeds

        check_report_seeds(Path(tuned), request[2])
    if executor == "ray":
        return run_ray(expand(*request), address=ray_address, cpus=workers, cpus_per_run=threads,
                       gpus_per_run=gpus_per_run, force=force, on_update=on_update)
    pool = LocalPool(workers, threads or 1)  # its first worker expands the sweep: this process never imports torch
    try:
        jobs = pool.expand(*request)
    except BaseException:
        pool.close()
        raise
    return run_local(jobs, force=force, on_update=on_update, pool=pool)


@dataclass(frozen=True)
class TuneResult:
    """What `tune` did: each method's best settings and study summary, and the tuned file it wrote."""

    outcome: TuneOutcome
    path: Path  # `run(..., tuned=path)` applies its settings


def tune(task: PathLike | TaskSpec, methods: Iterable[str], trials: int = 24, seeds: Iterable[int] = (1000,),
         objective: str = "nll", executor: str = "local", workers: int = 1, study_dir: PathLike = "studies",
         out: PathLike | None = None, budget_seconds: float | None = None, sampler_seed: int = 0,
         budget: str | None = None, epochs: int | None = None, device: str = "auto", threads: int | None = None,
         ray_address: str | None = None, data_dir: PathLike | None = None, task_dirs: Iterable[PathLike] = (),
         on_trial: Callable[[str, str, int, float | None], None] | None = None, pruner: str = "sha",
         min_epochs: int | None = None, divergence_factor: float | None = None) -> TuneResult:
    """`bnnbench tune`: `trials` Optuna trials per method (each the mean validation `objective` over `seeds`) on
    the task's validation split only, run by the sweep executors (`executor`, `workers`, `threads`, `ray_address`
    as in `sweep`), resumable from `study_dir`; then the tuned file, `out` (default tuned/<task>.toml).
    `methods` may be "all" (bnnbench's own methods). Trials run at the task's default (full) budget unless `budget`
    names another; `pruner` ("sha", "hyperband", "none", first rung `min_epochs`) stops trials whose validation
    NLL trails, and a run whose validation NLL exceeds `divergence_factor` x its best stops as diverged
    (`bnnbench.pruning`). `budget_seconds` also stops a method's study once its runs took that long.
    `on_trial(task, method, number, value)` hears of each trial that ends; `value` is None for a failed or pruned
    one."""
    from bnnbench.methods import find_method
    from bnnbench.pruning import DIVERGENCE_FACTOR
    from bnnbench.tasks import load_task
    from bnnbench.tune import tune as tune_studies
    from bnnbench.tuned import write_tuned

    names, seeds, task_dirs = _names(methods, "methods"), check_seeds(seeds), list(task_dirs)
    if names in (["all"], "all"):
        from bnnbench.methods import METHODS

        names = [name for name in METHODS.names() if METHODS.origin(name) is None]
    _check_executor(executor, workers, threads)
    if not isinstance(task, TaskSpec):
        task = load_task(task, task_dirs, methods=[find_method(name)[0] for name in names])
    options = {"budget_name": budget, "epochs": epochs, "device": device, "data_dir": _path(data_dir),
               "task_dirs": task_dirs}

    def report(method: str, number: int, state: str, value: float | None) -> None:
        if on_trial is not None:
            on_trial(task.name, method, number, value)

    outcome = tune_studies(task, names, trials, seeds, objective, Path(study_dir), options,
                           _trial_executor(executor, workers, threads, ray_address), workers,
                           sampler_seed=sampler_seed, budget_seconds=budget_seconds, on_trial=report, pruner=pruner,
                           divergence_factor=DIVERGENCE_FACTOR if divergence_factor is None else divergence_factor,
                           min_epochs=min_epochs)
    path = Path(out) if out is not None else Path("tuned") / f"{task.name}.toml"
    write_tuned(path, task, outcome)
    return TuneResult(outcome, path)


def _trial_executor(executor: str, workers: int, threads: int | None, ray_address: str | None):
    """`run_jobs(jobs, on_done)` for the tuner: the sweep executor asked for."""
    from bnnbench.sweep import LocalPool, run_local, run_ray

    def run_jobs(jobs, on_done):
        if executor == "ray":
            return run_ray(jobs, address=ray_address, cpus=workers, cpus_per_run=threads, on_done=on_done)
        return run_local(jobs, pool=LocalPool(workers, threads or 1), on_done=on_done)

    return run_jobs


def load_results(results_dir: PathLike = "results/runs") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, metrics): one row per run (run.json) and the long metric rows, as `compare` reads them."""
    from bnnbench.results import load_results as load

    return load(Path(results_dir))


def compare(results_dir: PathLike = "results/runs", task: str | Iterable[str] | None = None,
            metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """The leaderboard `bnnbench compare` shows, as a long frame: one row per (task, method, column) with mean,
    stderr, n, best (on a fidelity task, every mean within its HMC reference's resolution of the best) and the
    method's mean rank."""
    from bnnbench.comparison import aggregate, leaderboard
    from bnnbench.reference_files import reference_resolutions

    runs, rows = load_results(results_dir)
    if task is not None and not runs.empty:
        tasks = [task] if isinstance(task, str) else list(task)
        runs, rows = runs[runs["task"].isin(tasks)], rows[rows["task"].isin(tasks)]
    return leaderboard(runs, aggregate(runs, rows), list(metrics) if metrics else None,
                       resolution=reference_resolutions(runs))


def _path(value: PathLike | None) -> Path | None:
    return None if value is None else Path(value)


def _names(values: Any, what: str) -> list:
    """A list of names (or loaded tasks); a lone one is a list of one. UsageError for none."""
    listed = [values] if isinstance(values, str | Path | TaskSpec) else list(values)
    if not listed:
        raise UsageError(f"no {what} given")
    return listed


def _grid(grid: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    entries = [] if isinstance(grid, Mapping) else list(grid)  # a lone dict: axes or one entry? refused, not guessed
    if not entries or not all(isinstance(entry, Mapping) for entry in entries):
        raise UsageError(f"grid must be a list of override dicts, e.g. [{{'lr': 1e-3}}, {{'lr': 3e-3}}], got {grid!r}")
    return [dict(entry) for entry in entries]


def _check_executor(executor: str, workers: int, threads: int | None) -> None:
    if executor not in EXECUTORS:
        raise unknown_choice("executor", executor, EXECUTORS)
    if workers < 1 or (threads is not None and threads < 1):
        raise UsageError(f"--workers and --threads must be >= 1, got {workers} and {threads}")
