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

The pieces: `Tuner` checks a tune's arguments and runs it; `SearchSpace` is a method's dimensions, the settings a
trial draws and its categorical grid; `_MethodStudy` is a method's Optuna study and its budget; `_Scheduler` keeps
trials in flight and resumes killed ones; `_Objective` scores a trial from its runs; `_summary` is what the tuned
file records.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import socket
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnnbench.errors import UsageError, unknown_choice
from bnnbench.pruning import DIVERGENCE_FACTOR, REDUCTION_FACTOR, TrialLink, check_options, make_pruner, min_epochs_for
from bnnbench.tuned import TuneOutcome
from bnnbench.types import Dimension, MethodSpec, TaskSpec

__all__ = ["SearchSpace", "Tuner", "search_space", "study_name", "tune"]

TIE = 1e-3  # relative: trials whose objectives differ by less than this are a tie
MAX_INVALID = 100  # settings a method may refuse in a row before the tune gives up on its space
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


def _storage_url(study_dir: Path, task: TaskSpec) -> str:
    return f"sqlite:///{(study_dir / STUDY_FILE.format(task=task.name)).resolve()}"


def _storage(study_dir: Path, task: TaskSpec):
    import optuna

    study_dir.mkdir(parents=True, exist_ok=True)
    url = _storage_url(study_dir, task)
    # two tune processes on one file wait for each other's writes instead of failing at once
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})


def tune(task: TaskSpec, methods: list[str], trials: int, seeds: list[int], objective: str, study_dir: Path,
         options: dict[str, Any], run_jobs: Callable[..., Any], workers: int, sampler_seed: int = 0,
         budget_seconds: float | None = None, on_trial: Callable[[str, int, str, float | None], None] | None = None,
         pruner: str = "sha", divergence_factor: float = DIVERGENCE_FACTOR, min_epochs: int | None = None,
         ) -> TuneOutcome:
    """Run the studies of `methods` on `task` until each has `trials` finished trials (or `budget_seconds` of its
    runs' time). `options` are `runner.prepare`'s keyword arguments for the trial runs (budget, device, ...);
    `run_jobs(jobs, on_done=...)` executes jobs (`sweep.run_local` or `run_ray`, bound to their pool); `workers`
    trials are in flight at once. `on_trial(method, number, state, value)` reports each trial that ends.
    `pruner` ("sha", "hyperband", "none") stops trials whose validation NLL trails; `divergence_factor` stops a
    run whose validation NLL exceeds its best by that factor; `min_epochs` is the pruner's first rung
    (`bnnbench.pruning`)."""
    return Tuner(task, methods, trials, seeds, objective, study_dir, options, run_jobs, workers, sampler_seed,
                 budget_seconds, on_trial, pruner, divergence_factor, min_epochs).run()


class Tuner:
    """One `bnnbench tune` (`tune`'s arguments): checked whole when built (UsageError, before any study opens or
    run starts), run by `run()`: open the studies, schedule their trials, summarise them."""

    def __init__(self, task: TaskSpec, methods: list[str], trials: int, seeds: list[int], objective: str,
                 study_dir: Path, options: dict[str, Any], run_jobs: Callable[..., Any], workers: int,
                 sampler_seed: int = 0, budget_seconds: float | None = None,
                 on_trial: Callable[[str, int, str, float | None], None] | None = None, pruner: str = "sha",
                 divergence_factor: float = DIVERGENCE_FACTOR, min_epochs: int | None = None) -> None:
        from bnnbench.map_store import STORE_DIRECTORY
        from bnnbench.methods import find_method

        if trials < 1 or workers < 1:
            raise UsageError(f"--trials and --workers must be >= 1, got {trials} and {workers}")
        if min_epochs is not None and min_epochs < 1:
            raise UsageError(f"--min-epochs must be >= 1, got {min_epochs}")
        check_options(pruner, divergence_factor)
        specs = {name: find_method(name)[0] for name in methods}
        self.task, self.methods, self.trials, self.seeds, self.objective = task, methods, trials, seeds, objective
        self.direction = _direction(objective, task)
        self.spaces = {name: SearchSpace.of(spec, task) for name, spec in specs.items()}
        self.study_dir, self.run_jobs, self.workers = study_dir, run_jobs, workers
        self.sampler_seed, self.budget_seconds, self.on_trial = sampler_seed, budget_seconds, on_trial
        self.pruner, self.divergence_factor, self.min_epochs = pruner, divergence_factor, min_epochs
        # post-hoc methods' trials share the MAP they start from (one training per seed, not one per trial)
        self.options = {**options, "results_dir": study_dir / "runs", "validation_only": True,
                        "map_store": study_dir / "runs" / STORE_DIRECTORY}
        for name in methods:  # every configuration must load before anything runs: bad names fail here, exit 2
            self.jobs(name, self._accepted_midpoint(name), self.seeds[:1])

    def jobs(self, method: str, params: dict[str, Any], seeds: list[int] | None = None,
             number: int | None = None) -> list[Any]:
        """The runs of one trial: one per seed (`sweep.expand`, which checks that the configuration loads); with the
        trial's `number`, each run is linked to it (its epochs are reported; the first seed's are the trial's)."""
        from bnnbench.sweep import expand

        seeds = self.seeds if seeds is None else seeds
        options = self.options
        if number is not None:
            storage = _storage_url(self.study_dir, self.task)
            options = {**options, "trial": {seed: TrialLink(storage, study_name(self.task, method), number,
                                                             seed == seeds[0], self.pruner, self._epochs(),
                                                             self.divergence_factor, self.min_epochs)
                                          for seed in seeds}}
        return expand([self.task], [method], seeds, [params], options)

    def _epochs(self) -> int | None:
        """The trial runs' epochs (Hyperband's largest resource), from their budget."""
        from bnnbench.runner import resolve_budget

        return resolve_budget(self.task, self.options.get("budget_name"), self.options.get("epochs"))[0].max_epochs

    def pruning(self) -> dict[str, Any]:
        """How trials were stopped early, for the tuned file."""
        return {"pruner": self.pruner, "first_rung_epochs": self.min_epochs or min_epochs_for(self._epochs()),
                "reduction_factor": REDUCTION_FACTOR, "divergence_factor": self.divergence_factor}

    def _accepted_midpoint(self, method: str) -> dict[str, Any]:
        """A setting inside the space that the method accepts (the midpoint, with categorical choices varied until
        one is), to check that its configurations load; the first refusal's UsageError when none is accepted."""
        why = self.refusal(method)
        candidates = self.spaces[method].midpoints()
        first = next(candidates)
        for params in itertools.chain([first], itertools.islice(candidates, MAX_INVALID)):
            if why(params) is None:
                return params
        return first  # refused: loading it raises the method's own one-line error

    def refusal(self, method: str) -> Callable[[dict[str, Any]], str | None]:
        """Why the method refuses a trial's settings (its hyper-parameters' own checks), or None."""
        from bnnbench.methods import build_method

        def why(params: dict[str, Any]) -> str | None:
            try:
                build_method(method, self.task, params)
            except UsageError as error:
                return str(error)
            return None

        return why

    def run(self) -> TuneOutcome:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = _storage(self.study_dir, self.task)
        studies = {}
        for name in self.methods:
            studies[name] = _MethodStudy.open(storage, self.task, self.spaces[name], self.direction, self.trials,
                                              make_pruner(self.pruner, self._epochs(), self.min_epochs))
        for name in self.methods:
            studies[name].enqueue_grid(self.trials)
            studies[name].enqueue_first(self.defaults(name))
        scheduler = _Scheduler(self, studies, storage, _Objective(self.objective, storage, self.on_trial))
        first = scheduler.resume()
        scheduler.settle()
        first += scheduler.next_jobs()
        if first:
            self.run_jobs(first, on_done=scheduler.on_done)
        scheduler.settle()
        return self.outcome(studies, storage)

    def defaults(self, method: str) -> dict[str, Any]:
        """The method's own setting (its defaults under the task's table) of each searched dimension."""
        from bnnbench.methods import build_method

        hparams = build_method(method, self.task).hparams
        return {d.name: getattr(hparams, d.name) for d in self.spaces[method].dimensions}

    def outcome(self, studies: dict[str, _MethodStudy], storage: Any) -> TuneOutcome:
        """Each study's summary and best settings, for `tuned.write_tuned`."""
        outcome = TuneOutcome(self.task.name, self.objective, self.direction, storage=str(storage.url),
                              seeds=list(self.seeds))
        for name in self.methods:
            outcome.summaries[name], outcome.best[name] = _summary(studies[name].study, self.spaces[name].dimensions,
                                                                   self.seeds, self.options, self.defaults(name),
                                                                   self.pruning())
        return outcome


@dataclass(frozen=True)
class SearchSpace:
    """One method's search space on a task: its dimensions and the types of the fields they set (an int field
    samples integers)."""

    method: str
    dimensions: list[Dimension]
    kinds: dict[str, type]

    @classmethod
    def of(cls, spec: MethodSpec, task: TaskSpec) -> SearchSpace:
        return cls(spec.name, search_space(spec, task), typing.get_type_hints(spec.hparams_class))

    @property
    def names(self) -> set[str]:
        return {dimension.name for dimension in self.dimensions}

    def suggest(self, trial: Any) -> dict[str, Any]:
        """The settings an Optuna trial draws, one per dimension."""
        return {dimension.name: self._suggest(trial, dimension) for dimension in self.dimensions}

    def _suggest(self, trial: Any, dimension: Dimension) -> Any:
        if dimension.distribution == "categorical":
            return trial.suggest_categorical(dimension.name, list(dimension.choices))
        log = dimension.distribution == "log-uniform"
        if self.kinds[dimension.name] is int:
            return trial.suggest_int(dimension.name, int(dimension.low), int(dimension.high), log=log)
        return trial.suggest_float(dimension.name, float(dimension.low), float(dimension.high), log=log)

    def midpoint(self) -> dict[str, Any]:
        """A setting inside every dimension, to check that the method's configurations load before any trial."""
        return {dimension.name: self._midpoint(dimension) for dimension in self.dimensions}

    def holds(self, params: dict[str, Any]) -> bool:
        """Whether every dimension's value in `params` lies in its range or choices."""
        for dimension in self.dimensions:
            value = params.get(dimension.name)
            if dimension.distribution == "categorical":
                if value not in dimension.choices:
                    return False
            elif not (isinstance(value, int | float) and dimension.low <= value <= dimension.high):
                return False
        return True

    def midpoints(self) -> Iterator[dict[str, Any]]:
        """`midpoint()`, then the same with every other combination of the categorical choices."""
        categorical = [d for d in self.dimensions if d.distribution == "categorical"]
        for values in itertools.product(*(d.choices for d in categorical)):
            yield self.midpoint() | {d.name: value for d, value in zip(categorical, values, strict=True)}

    def _midpoint(self, dimension: Dimension) -> Any:
        if dimension.distribution == "categorical":
            return dimension.choices[0]
        value = math.sqrt(dimension.low * dimension.high) if dimension.distribution == "log-uniform" else \
            (dimension.low + dimension.high) / 2
        return round(value) if self.kinds[dimension.name] is int else value

    def grid(self) -> list[dict[str, Any]] | None:
        """Every setting of an all-categorical space, in order; None when some dimension is continuous. (TPE repeats
        settings of a small categorical space: measured on digits-mlp, laplace-subnet spent 10 of its 24 trials on
        one failing setting, and Optuna's BruteForceSampler calls `study.stop()`, which ask-and-tell does not
        allow.)"""
        if any(dimension.distribution != "categorical" for dimension in self.dimensions):
            return None
        names = [dimension.name for dimension in self.dimensions]
        return [dict(zip(names, values, strict=True))
                for values in itertools.product(*(d.choices for d in self.dimensions))]


@dataclass
class _MethodStudy:
    """One method's Optuna study, its space, and `target`, the trials it may spend."""

    task: str
    space: SearchSpace
    study: Any
    study_id: int
    target: int

    @classmethod
    def open(cls, storage: Any, task: TaskSpec, space: SearchSpace, direction: str, trials: int,
             pruner: Any) -> _MethodStudy:
        import optuna

        name = study_name(task, space.method)
        study = optuna.create_study(study_name=name, storage=storage, direction=direction, load_if_exists=True,
                                    pruner=pruner)
        return cls(task.name, space, study, storage.get_study_id_from_name(name), trials)

    def enqueue_grid(self, trials: int) -> None:
        """A categorical space no larger than the budget: each setting once, not TPE's repeats."""
        grid = self.space.grid()
        if grid is None or len(grid) > trials:
            return
        self.target = len(grid)
        existing = self.study.get_trials(deepcopy=False)
        tried = {json.dumps(t.params, sort_keys=True) for t in existing}
        untried = [params for params in grid if json.dumps(params, sort_keys=True) not in tried]
        for params in untried[:max(0, len(grid) - len(existing))]:  # never past the budget a study already spent
            self.study.enqueue_trial(params)

    def enqueue_first(self, defaults: dict[str, Any]) -> None:
        """A fresh study's first trial is the method's own setting, where the space holds it: the study then always
        measures what it would replace (a tie keeps it, `_summary`), and TPE starts from a setting that works."""
        if self.study.get_trials(deepcopy=False) or self.space.grid() is not None or not self.space.holds(defaults):
            return
        self.study.enqueue_trial(defaults)

    def spent(self) -> tuple[int, float]:
        """Trials that count against the budget (finished, or running in a live process) and the seconds the
        finished trials' runs took."""
        from optuna.trial import TrialState

        count, seconds = 0, 0.0
        for frozen in self.study.get_trials(deepcopy=False):
            if "invalid" in frozen.user_attrs:  # a combination the method refuses: no run, no cost
                continue
            if frozen.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED):
                count += 1
                seconds += float(frozen.user_attrs.get("seconds", 0.0))
            elif frozen.state == TrialState.RUNNING and not _owner_gone(frozen.user_attrs.get("owner")):
                count += 1
        return count, seconds

    def ask(self, sampler_seed: int, valid: Callable[[dict[str, Any]], str | None]) -> tuple[int, dict[str, Any]]:
        """A new trial's number and settings. A combination the method refuses (`valid` returns why: antithetic
        pairs with an odd sample count) is told failed, marked invalid and not counted, and another is asked."""
        import optuna
        from optuna.trial import TrialState

        for _ in range(MAX_INVALID):
            trial = self.study.ask()
            # the sampler is seeded per trial number, which the storage hands out once: a resumed study, or two
            # tunes started at once on one study, draw new settings, and one tune of a fresh study draws the same
            # ones again
            self.study.sampler = optuna.samplers.TPESampler(
                seed=_sampler_seed(sampler_seed, f"{self.task}:{self.space.method}", trial.number))
            trial.set_user_attr("owner", _owner())
            params = self.space.suggest(trial)
            reason = valid(params)
            if reason is None:
                return trial.number, params
            trial.set_user_attr("invalid", reason)
            self.study.tell(trial.number, state=TrialState.FAIL)
        raise UsageError(f"{self.space.method}: {MAX_INVALID} settings in a row were refused by the method; "
                         f"narrow its search space ({reason})")

    def orphans(self) -> list[Any]:
        """The trials a killed tune left RUNNING (their owner process is gone)."""
        from optuna.trial import TrialState

        return [frozen for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if _owner_gone(frozen.user_attrs.get("owner"))]


@dataclass
class _Trial:
    method: str
    number: int
    params: dict[str, Any]
    jobs: list[Any]
    waiting: set[str]
    executed: set[str] = field(default_factory=set)  # the runs this trial submitted (a shared run costs once)
    error: str = ""


class _Scheduler:
    """Keeps `workers` trials in flight: asks them round-robin while budgets last, hands their runs to the executor,
    and tells each trial once all its runs have ended. A run id is run once, however many trials wait for it."""

    def __init__(self, tuner: Tuner, studies: dict[str, _MethodStudy], storage: Any, objective: _Objective) -> None:
        self.tuner, self.studies, self.storage, self.objective = tuner, studies, storage, objective
        self.in_flight: dict[str, list[_Trial]] = {}  # run_id -> its waiting trials (a repeated setting shares a run)
        self.open_trials: list[_Trial] = []

    def resume(self) -> list[Any]:
        """Trials a killed tune left RUNNING: run their settings again (they are told when their runs end); one
        killed before its settings were drawn fails."""
        from optuna.trial import TrialState

        jobs: list[Any] = []
        for name in self.tuner.methods:
            method = self.studies[name]
            for frozen in method.orphans():
                trial_id = self.storage.get_trial_id_from_study_id_trial_number(method.study_id, frozen.number)
                if set(frozen.params) != method.space.names:  # killed mid-ask
                    self.storage.set_trial_user_attr(trial_id, "error", "interrupted before its settings were drawn")
                    method.study.tell(frozen.number, state=TrialState.FAIL)
                    continue
                self.storage.set_trial_user_attr(trial_id, "owner", _owner())
                jobs += self.start(name, frozen.number, dict(frozen.params))
        return jobs

    def start(self, method: str, number: int, params: dict[str, Any]) -> list[Any]:
        """Open a trial; returns the runs to submit (not those that exist or another trial is running)."""
        from bnnbench.sweep import job_ended_ok

        jobs = self.tuner.jobs(method, params, number=number)
        trial = _Trial(method, number, params, jobs, {job.run_id for job in jobs})
        submit = []
        for job in jobs:
            if job_ended_ok(job):  # a resumed or repeated configuration: its run is already there
                trial.waiting.discard(job.run_id)
            elif job.run_id in self.in_flight:  # another trial with these settings is running it
                self.in_flight[job.run_id].append(trial)
            else:
                self.in_flight[job.run_id] = [trial]
                trial.executed.add(job.run_id)
                submit.append(job)
        self.open_trials.append(trial)
        return submit

    def next_jobs(self) -> list[Any]:
        """Ask trials round-robin until `workers` are in flight or every budget is spent; settle the ones whose
        runs all exist already (a repeated configuration) at once."""
        jobs: list[Any] = []
        while len(self.open_trials) < self.tuner.workers:
            name = self._next_method()
            if name is None:
                break
            jobs += self.start(name, *self.studies[name].ask(self.tuner.sampler_seed, self.tuner.refusal(name)))
            self.settle()
        return jobs

    def _next_method(self) -> str | None:
        """The method with budget left that has spent the fewest trials (the first named on a tie)."""
        methods, budget_seconds = self.tuner.methods, self.tuner.budget_seconds
        used = {name: self.studies[name].spent() for name in methods}  # one read of each study per trial asked
        candidates = [name for name in methods if used[name][0] < self.studies[name].target
                      and (budget_seconds is None or used[name][1] < budget_seconds)]
        if not candidates:
            return None
        return min(candidates, key=lambda name: (used[name][0], methods.index(name)))

    def settle(self) -> None:
        """Tell the trials that wait for no run."""
        for trial in [t for t in self.open_trials if not t.waiting]:
            self.open_trials.remove(trial)
            self.objective.tell(self.studies[trial.method], trial)

    def on_done(self, run_id: str, status: str, error: str) -> list[Any]:
        """The executor's report of an ended run; returns the runs of the trials asked next."""
        for trial in self.in_flight.pop(run_id, []):
            trial.waiting.discard(run_id)
            if status != "ok" and not trial.error:
                trial.error = error or status
        self.settle()
        return self.next_jobs()


@dataclass(frozen=True)
class _Objective:
    """A trial's value: the mean over its seeds of the validation `metric` read from its runs, or FAIL."""

    metric: str
    storage: Any
    on_trial: Callable[[str, int, str, float | None], None] | None

    def tell(self, method: _MethodStudy, trial: _Trial) -> None:
        """Tell Optuna the trial's value (or that it was pruned, diverged or failed), and keep with the trial its
        runs' ids, seconds, the seconds a full run of it costs, and the MAP trainings it paid for."""
        from optuna.trial import TrialState

        costs = _TrialCosts()
        values = self._read_runs(trial, costs)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(method.study_id, trial.number)
        for name, value in dataclasses.asdict(costs).items():
            self.storage.set_trial_user_attr(trial_id, name, value)
        self.storage.set_trial_user_attr(trial_id, "run_ids", [job.run_id for job in trial.jobs])
        if costs.pruned_epoch is not None:
            self.storage.set_trial_user_attr(trial_id, "error", trial.error)
            method.study.tell(trial.number, state=TrialState.PRUNED)
            self._report(trial, "pruned", None)
            return
        if trial.error or not values or not all(math.isfinite(v) for v in values):
            self.storage.set_trial_user_attr(trial_id, "error", trial.error or "no finite validation value")
            method.study.tell(trial.number, state=TrialState.FAIL)
            self._report(trial, "failed", None)
            return
        value = sum(values) / len(values)
        method.study.tell(trial.number, value)
        self._report(trial, "complete", value)

    def _read_runs(self, trial: _Trial, costs: _TrialCosts) -> list[float]:
        """The validation values of the trial's runs that ended ok, and into `costs` what its runs cost; the first
        failure (or pruning) becomes the trial's error."""
        values = []
        for job in trial.jobs:
            directory = Path(job.directory)
            try:
                record = json.loads((directory / "run.json").read_text())
            except (OSError, ValueError):
                trial.error = trial.error or f"run {job.run_id} wrote no run.json"
                continue
            costs.add(record, executed=job.run_id in trial.executed)
            if record.get("status") != "ok":
                trial.error = trial.error or record.get("error", "failed")
                continue
            values.append(_validation_value(directory, self.metric))
        return values

    def _report(self, trial: _Trial, state: str, value: float | None) -> None:
        if self.on_trial is not None:
            self.on_trial(trial.method, trial.number, state, value)


@dataclass
class _TrialCosts:
    """What a trial's runs cost: `seconds` (the runs it executed), `full_run_seconds` (what each of its runs would
    have cost trained whole: its seconds plus those of any MAP it loaded from the store; for a complete trial, a
    full run), `map_trainings` (MAPs it trained and stored), `epochs` (the furthest epoch its runs reached),
    `pruned_epoch` (set when its runs were pruned) and `diverged` (a non-finite training loss, or a validation NLL
    past the divergence factor)."""

    seconds: float = 0.0
    full_run_seconds: list[float] = field(default_factory=list)
    map_trainings: int = 0
    epochs: int = 0
    pruned_epoch: int | None = None
    diverged: bool = False

    def add(self, record: dict[str, Any], executed: bool) -> None:
        lookups = record.get("map_store", {}).get("lookups", [])
        reused = sum(float(lookup["train_seconds"]) for lookup in lookups if lookup["reused"])
        self.full_run_seconds.append(float(record.get("duration_s", 0.0)) + reused)
        self.epochs = max(self.epochs, int(record.get("trial", {}).get("epochs", 0)))
        if record.get("status") == "pruned":
            self.pruned_epoch = int(record.get("pruned_epoch", 0))
        self.diverged = self.diverged or str(record.get("error", "")).startswith("DivergenceError")
        if executed:  # a run shared with another trial costs once
            self.seconds += float(record.get("duration_s", 0.0))
            self.map_trainings += sum(not lookup["reused"] for lookup in lookups)


def _sampler_seed(seed: int, study: str, trial_number: int) -> int:
    """The TPE seed for one trial of a study. Seeded once per process by (seed, method), a resumed study drew the
    settings its first trials had drawn (digits-mlp: mc-dropout, swag and rank1 repeated trial 0), and seeded by the
    study's progress at start, two tunes started together on one study drew the same settings."""
    import hashlib

    digest = hashlib.sha256(f"{seed}:{study}:{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _validation_value(directory: Path, metric: str) -> float:
    """The validation value of `metric` in a run's metrics.csv (the only split a tuning run has)."""
    import csv

    with open(directory / "metrics.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["split"] == "val" and row["corruption"] == "none" and row["metric"] == metric:
                return float(row["value"])
    return math.nan


def _cost(complete: list[Any], trials: list[Any], seconds: float, n_seeds: int) -> dict[str, Any]:
    """A study's cost in full-run equivalents: its runs' seconds over the median seconds of one full run (a
    complete trial's run, with the MAP it loaded from the store counted as trained), and its MAP trainings per
    seed. Without a complete trial there is no full run to measure against."""
    import statistics

    full = [value for t in complete for value in t.user_attrs.get("full_run_seconds", [])]
    cost = {"map_trainings_per_seed": round(sum(int(t.user_attrs.get("map_trainings", 0)) for t in trials) /
                                            n_seeds, 2)}
    if full:
        cost.update(full_run_seconds=round(statistics.median(full), 2),
                    full_runs=round(seconds / statistics.median(full), 2))
    return cost


def _summary(study: Any, space: list[Dimension], seeds: list[int], options: dict[str, Any],
             defaults: dict[str, Any], pruning: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The study's record for the tuned file, and its best settings: the best trial's, or, when the method's own
    setting (`defaults`) was tried and ties the best within `TIE` (relative), that one."""
    from optuna.trial import TrialState

    from bnnbench.version import __version__

    frozen = [t for t in study.get_trials(deepcopy=False) if "invalid" not in t.user_attrs]
    complete = [t for t in frozen if t.state == TrialState.COMPLETE]
    pruned = [t for t in frozen if t.state == TrialState.PRUNED]
    failed = [t for t in frozen if t.state == TrialState.FAIL]
    seconds = sum(float(t.user_attrs.get("seconds", 0.0)) for t in frozen)
    summary = {"study": study.study_name, "trials": len(complete) + len(failed) + len(pruned),
               "complete": len(complete), "failed": len(failed), "pruned": len(pruned),
               "diverged": sum(bool(t.user_attrs.get("diverged")) for t in frozen),
               "pruned_epochs": sorted(int(t.user_attrs.get("pruned_epoch", 0)) for t in pruned),
               "seconds": round(seconds, 1), **_cost(complete, frozen, seconds, len(seeds)),
               "seeds": list(seeds), "budget": options.get("budget_name") or "default", "sampler": "TPE",
               **pruning, "search_space": {d.name: d.as_table() for d in space},
               "bnnbench_version": __version__}
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
