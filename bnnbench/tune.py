"""`bnnbench tune`: the same hyper-parameter search budget for every method, scored on the validation split only.

One Optuna study per (task, method) in an SQLite file of the study directory (`<task>.db`), sampled by seeded TPE
over the method's declared search space (`MethodSpec.search_space`, replaced key by key by the task's
`[tune.<method>]`). A trial is one run per seed, executed by the sweep executors (`sweep.run_local`, `run_ray`)
with `validation_only` plans: the evaluator scores the validation split and the test split is never read. The
objective is the mean over seeds of one validation metric. Every method gets `trials` trials (and, with
`budget_seconds`, no new trial once its runs have used that many seconds), asked round-robin so that an
interrupted tune leaves the methods equally far; a method whose space is all categorical with fewer settings than
that tries each setting once instead.

Resuming: trial runs live in `<study dir>/runs` under their run ids, so a trial asked again with the same settings
reuses its finished runs. A trial left RUNNING by a tune process that no longer exists (killed) is re-run with its
settings and told; one whose process is alive (another tune on the same study) is counted and left alone.
Output: `tuned/<task>.toml` (`write_tuned`), each method's best settings and its study's summary, which
`bnnbench run --tuned` applies.
"""

from __future__ import annotations

import json
import math
import os
import socket
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnnbench.errors import UsageError, unknown_choice
from bnnbench.tuned import TuneOutcome
from bnnbench.types import Dimension, MethodSpec, TaskSpec

__all__ = ["search_space", "study_name", "tune"]

TIE = 1e-3  # relative: trials whose objectives differ by less than this are a tie
STUDY_FILE = "{task}.db"


def study_name(task: TaskSpec, method: str) -> str:
    return f"{task.name}.v{task.version}:{method}"


def search_space(spec: MethodSpec, task: TaskSpec) -> list[Dimension]:
    """The method's declared dimensions, each replaced or joined by the task's `[tune.<method>]`, less the ones a
    fidelity task's `[posterior]` fixes (they are the posterior, not a setting). UsageError when nothing is left."""
    dimensions = {dimension.name: dimension for dimension in spec.search_space}
    dimensions.update(task.tune.get(spec.name, {}))
    if task.posterior and spec.posterior_settings is not None:
        for name in spec.posterior_settings(task.posterior):
            dimensions.pop(name, None)
    if not dimensions:
        raise UsageError(f"method '{spec.name}' has no search space on task '{task.name}'; declare one in the "
                         f"task's [tune.{spec.name}] table")
    return list(dimensions.values())


def _suggest(trial: Any, dimension: Dimension, kind: type) -> Any:
    if dimension.distribution == "categorical":
        return trial.suggest_categorical(dimension.name, list(dimension.choices))
    log = dimension.distribution == "log-uniform"
    if kind is int:
        return trial.suggest_int(dimension.name, int(dimension.low), int(dimension.high), log=log)
    return trial.suggest_float(dimension.name, float(dimension.low), float(dimension.high), log=log)


def _direction(metric: str, task: TaskSpec) -> str:
    """Optuna's direction for a validation metric of the task; UsageError for one the validation split lacks."""
    from bnnbench.metrics import HMC_METRICS, METRICS, POSTERIOR_METRICS
    from bnnbench.runner import metric_names

    test_only = set(POSTERIOR_METRICS) | {name for names in HMC_METRICS.values() for name in names}
    valid = [name for name in metric_names(task) if name not in test_only]
    if metric not in valid:
        raise unknown_choice(f"objective for task '{task.name}' (a metric of its validation split)", metric, valid,
                             "--objective")
    definition = METRICS.get(metric)
    if definition.optimum is not None:
        raise UsageError(f"--objective {metric} has an optimum ({definition.optimum:g}), not a direction; choose "
                         f"one of: {', '.join(name for name in valid if METRICS.get(name).optimum is None)}")
    return "maximize" if definition.higher_is_better else "minimize"


@dataclass
class _Trial:
    method: str
    number: int
    params: dict[str, Any]
    jobs: list[Any]
    waiting: set[str]
    executed: set[str] = field(default_factory=set)  # the runs this trial submitted (a shared run costs once)
    error: str = ""


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_gone(owner: str | None) -> bool:
    """Whether the tune process that holds a RUNNING trial is known to be dead (same host, no such process)."""
    if not owner:
        return True
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return False  # another machine's tune: it may well be alive
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def _storage(study_dir: Path, task: TaskSpec):
    import optuna

    study_dir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{(study_dir / STUDY_FILE.format(task=task.name)).resolve()}"
    # two tune processes on one file wait for each other's writes instead of failing at once
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})


def tune(task: TaskSpec, methods: list[str], trials: int, seeds: list[int], objective: str, study_dir: Path,
         options: dict[str, Any], run_jobs: Callable[..., Any], workers: int, sampler_seed: int = 0,
         budget_seconds: float | None = None, on_trial: Callable[[str, int, str, float | None], None] | None = None,
         ) -> TuneOutcome:
    """Run the studies of `methods` on `task` until each has `trials` finished trials (or `budget_seconds` of its
    runs' time). `options` are `runner.prepare`'s keyword arguments for the trial runs (budget, device, ...);
    `run_jobs(jobs, on_done=...)` executes jobs (`sweep.run_local` or `run_ray`, bound to their pool); `workers`
    trials are in flight at once. `on_trial(method, number, state, value)` reports each trial that ends."""
    import optuna
    from optuna.trial import TrialState

    from bnnbench.methods import build_method, find_method
    from bnnbench.sweep import expand, job_ended_ok

    if trials < 1 or workers < 1:
        raise UsageError(f"--trials and --workers must be >= 1, got {trials} and {workers}")
    specs = {name: find_method(name)[0] for name in methods}
    direction = _direction(objective, task)
    spaces = {name: search_space(spec, task) for name, spec in specs.items()}
    kinds = {name: typing.get_type_hints(spec.hparams_class) for name, spec in specs.items()}
    options = {**options, "results_dir": study_dir / "runs", "validation_only": True}
    for name in methods:  # every configuration must load before anything runs: bad names fail here, exit 2
        defaults = {dimension.name: _default(dimension, kinds[name][dimension.name]) for dimension in spaces[name]}
        expand([str(task.path)], [name], seeds[:1], [defaults], options)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _storage(study_dir, task)
    studies = {}
    for name in methods:
        studies[name] = optuna.create_study(study_name=study_name(task, name), storage=storage, direction=direction,
                                            load_if_exists=True)
    targets = {name: trials for name in methods}
    for name in methods:  # a categorical space no larger than the budget: each setting once, not TPE's repeats
        grid = _grid(spaces[name])
        if grid is not None and len(grid) <= trials:
            targets[name] = len(grid)
            existing = studies[name].get_trials(deepcopy=False)
            tried = {json.dumps(t.params, sort_keys=True) for t in existing}
            untried = [params for params in grid if json.dumps(params, sort_keys=True) not in tried]
            for params in untried[:max(0, len(grid) - len(existing))]:  # never past the budget a study already spent
                studies[name].enqueue_trial(params)
    study_ids = {name: storage.get_study_id_from_name(study_name(task, name)) for name in methods}
    in_flight: dict[str, list[_Trial]] = {}  # run_id -> the trials waiting for it (a repeated setting shares a run)
    open_trials: list[_Trial] = []

    def jobs_for(name: str, params: dict[str, Any]) -> list[Any]:
        return expand([str(task.path)], [name], seeds, [params], options)

    def spent(name: str) -> tuple[int, float]:
        """Trials of the method that count against its budget (finished, or running in a live process) and
        the seconds its finished trials' runs took."""
        count, seconds = 0, 0.0
        for frozen in studies[name].get_trials(deepcopy=False):
            if frozen.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED):
                count += 1
                seconds += float(frozen.user_attrs.get("seconds", 0.0))
            elif frozen.state == TrialState.RUNNING and not _owner_gone(frozen.user_attrs.get("owner")):
                count += 1
        return count, seconds

    def start(name: str, number: int, params: dict[str, Any]) -> list[Any]:
        jobs = jobs_for(name, params)
        trial = _Trial(name, number, params, jobs, {job.run_id for job in jobs})
        submit = []
        for job in jobs:
            if job_ended_ok(job):  # a resumed or repeated configuration: its run is already there
                trial.waiting.discard(job.run_id)
            elif job.run_id in in_flight:  # another trial with these settings is running it
                in_flight[job.run_id].append(trial)
            else:
                in_flight[job.run_id] = [trial]
                trial.executed.add(job.run_id)
                submit.append(job)
        open_trials.append(trial)
        return submit

    def ask(name: str) -> list[Any]:
        trial = studies[name].ask()
        # the sampler is seeded per trial number, which the storage hands out once: a resumed study, or two tunes
        # started at once on one study, draw new settings, and one tune of a fresh study draws the same ones again
        studies[name].sampler = optuna.samplers.TPESampler(
            seed=_sampler_seed(sampler_seed, f"{task.name}:{name}", trial.number))
        trial.set_user_attr("owner", _owner())
        params = {d.name: _suggest(trial, d, kinds[name][d.name]) for d in spaces[name]}
        return start(name, trial.number, params)

    def next_jobs() -> list[Any]:
        """Ask trials round-robin until `workers` are in flight or every budget is spent; settle the ones whose
        runs all exist already (a repeated configuration) at once."""
        jobs: list[Any] = []
        while len(open_trials) < workers:
            used = {name: spent(name) for name in methods}  # one read of each study per trial asked
            candidates = [name for name in methods if used[name][0] < targets[name]
                          and (budget_seconds is None or used[name][1] < budget_seconds)]
            if not candidates:
                break
            jobs += ask(min(candidates, key=lambda name: (used[name][0], methods.index(name))))
            settle()
        return jobs

    def settle() -> None:
        for trial in [t for t in open_trials if not t.waiting]:
            open_trials.remove(trial)
            _tell(studies[trial.method], storage, study_ids[trial.method], trial, objective, on_trial)

    def on_done(run_id: str, status: str, error: str) -> list[Any]:
        for trial in in_flight.pop(run_id, []):
            trial.waiting.discard(run_id)
            if status != "ok" and not trial.error:
                trial.error = error or status
        settle()
        return next_jobs()

    first: list[Any] = []
    for name in methods:  # trials a killed tune left RUNNING: run their settings again, then tell them
        for frozen in studies[name].get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if _owner_gone(frozen.user_attrs.get("owner")):
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_ids[name], frozen.number)
                if set(frozen.params) != {dimension.name for dimension in spaces[name]}:  # killed mid-ask
                    storage.set_trial_user_attr(trial_id, "error", "interrupted before its settings were drawn")
                    studies[name].tell(frozen.number, state=TrialState.FAIL)
                    continue
                storage.set_trial_user_attr(trial_id, "owner", _owner())
                first += start(name, frozen.number, dict(frozen.params))
    settle()
    first += next_jobs()
    if first:
        run_jobs(first, on_done=on_done)
    settle()
    outcome = TuneOutcome(task.name, objective, direction, storage=str(storage.url))
    for name in methods:
        defaults = {d.name: getattr(build_method(name, task).hparams, d.name) for d in spaces[name]}
        outcome.summaries[name], outcome.best[name] = _summary(studies[name], spaces[name], seeds, options, defaults)
    return outcome


def _grid(space: list[Dimension]) -> list[dict[str, Any]] | None:
    """Every setting of an all-categorical space, in order; None when some dimension is continuous. (TPE repeats
    settings of a small categorical space: measured on digits-mlp, laplace-subnet spent 10 of its 24 trials on one
    failing setting, and Optuna's BruteForceSampler calls `study.stop()`, which ask-and-tell does not allow.)"""
    import itertools

    if any(dimension.distribution != "categorical" for dimension in space):
        return None
    names = [dimension.name for dimension in space]
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(d.choices for d in space))]


def _sampler_seed(seed: int, study: str, trial_number: int) -> int:
    """The TPE seed for one trial of a study. Seeded once per process by (seed, method), a resumed study drew the
    settings its first trials had drawn (digits-mlp: mc-dropout, swag and rank1 repeated trial 0), and seeded by the
    study's progress at start, two tunes started together on one study drew the same settings."""
    import hashlib

    digest = hashlib.sha256(f"{seed}:{study}:{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _default(dimension: Dimension, kind: type) -> Any:
    """A value inside the dimension (of a `kind` field), to check that the method's configurations load before any
    trial."""
    if dimension.distribution == "categorical":
        return dimension.choices[0]
    value = math.sqrt(dimension.low * dimension.high) if dimension.distribution == "log-uniform" else \
        (dimension.low + dimension.high) / 2
    return round(value) if kind is int else value


def _tell(study: Any, storage: Any, study_id: int, trial: _Trial, objective: str, on_trial) -> None:
    """The trial's value, the mean over its seeds of the validation metric read from its runs, or FAIL."""
    from optuna.trial import TrialState

    seconds, values = 0.0, []
    for job in trial.jobs:
        directory = Path(job.directory)
        try:
            record = json.loads((directory / "run.json").read_text())
        except (OSError, ValueError):
            trial.error = trial.error or f"run {job.run_id} wrote no run.json"
            continue
        if job.run_id in trial.executed:
            seconds += float(record.get("duration_s", 0.0))
        if record.get("status") != "ok":
            trial.error = trial.error or record.get("error", "failed")
            continue
        values.append(_validation_value(directory, objective))
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    storage.set_trial_user_attr(trial_id, "seconds", seconds)
    storage.set_trial_user_attr(trial_id, "run_ids", [job.run_id for job in trial.jobs])
    if trial.error or not values or not all(math.isfinite(v) for v in values):
        storage.set_trial_user_attr(trial_id, "error", trial.error or "no finite validation value")
        study.tell(trial.number, state=TrialState.FAIL)
        if on_trial is not None:
            on_trial(trial.method, trial.number, "failed", None)
        return
    value = sum(values) / len(values)
    study.tell(trial.number, value)
    if on_trial is not None:
        on_trial(trial.method, trial.number, "complete", value)


def _validation_value(directory: Path, metric: str) -> float:
    """The validation value of `metric` in a run's metrics.csv (the only split a tuning run has)."""
    import csv

    with open(directory / "metrics.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["split"] == "val" and row["corruption"] == "none" and row["metric"] == metric:
                return float(row["value"])
    return math.nan


def _summary(study: Any, space: list[Dimension], seeds: list[int], options: dict[str, Any],
             defaults: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The study's record for the tuned file, and its best settings: the best trial's, or, when the method's own
    setting (`defaults`) was tried and ties the best within `TIE` (relative), that one."""
    from optuna.trial import TrialState

    from bnnbench.version import __version__

    frozen = study.get_trials(deepcopy=False)
    complete = [t for t in frozen if t.state == TrialState.COMPLETE]
    summary = {"study": study.study_name, "trials": len(complete) + sum(t.state == TrialState.FAIL for t in frozen),
               "complete": len(complete), "failed": sum(t.state == TrialState.FAIL for t in frozen),
               "seconds": round(sum(float(t.user_attrs.get("seconds", 0.0)) for t in frozen), 1),
               "seeds": list(seeds), "budget": options.get("budget_name") or "default", "sampler": "TPE",
               "search_space": {d.name: d.as_table() for d in space}, "bnnbench_version": __version__}
    if not complete:
        return summary, {}
    best = study.best_trial
    tied = [t for t in complete if abs(t.value - best.value) <= TIE * abs(best.value)]
    default = next((t for t in tied if t.params == defaults), None)
    if default is not None:  # a flat objective says nothing: keep the method's own setting rather than a tie's luck
        best = default
    summary.update(best_value=best.value, best_trial=best.number, tied_trials=len(tied),
                   chose_default=default is not None)
    return summary, dict(best.params)
