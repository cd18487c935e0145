"""Sweeps: tasks x methods x seeds x a grid of `--set` values, run by worker processes, resumable.

Each run is one `runner.run(plan, seed)`, as `bnnbench run` does it, so results are identical. A run whose
directory already holds an `ok` run.json is skipped (`force` re-runs it). Failures stay inside their run: an
error during fitting is a failed run.json (the runner's behaviour); a worker process that dies (killed, out of
memory) fails only the run it held, which leaves no directory behind (results are written atomically at the
end of a run), and a fresh worker takes its place. Workers are long-lived processes (spawned, not forked), so
the cost of importing torch is paid once per worker, not once per run. Each task file is read once, where the sweep
is expanded; its jobs carry the loaded `TaskSpec`, so no worker reads it again.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnnbench.errors import BnnbenchError, UsageError
from bnnbench.types import TaskSpec

__all__ = ["Job", "LocalPool", "SweepResult", "expand", "parse_grid", "run_local", "run_ray"]


@dataclass(frozen=True)
class Job:
    """One run of a sweep: what `bnnbench run` would be called with, for one seed."""

    task: TaskSpec  # loaded once where the sweep was expanded (a frozen dataclass: it pickles to the workers)
    method: str
    seed: int
    overrides: dict[str, Any]
    options: dict[str, Any]  # prepare()'s keyword arguments shared by the sweep (budget, device, ...)
    run_id: str = ""
    directory: str = ""
    cpus: float = 1.0  # what the run asks a scheduler for: the task's [resources] for its budget
    gpus: float = 0.0


@dataclass
class SweepResult:
    """How each run ended: "ok", "failed" (with its error) or "skipped" (an ok result was already there)."""

    status: dict[str, str] = field(default_factory=dict)  # run_id -> status
    total: int = 0  # the jobs given to run, skipped ones included
    errors: dict[str, str] = field(default_factory=dict)
    run_seconds: float = 0.0  # the runs' own durations (run.json duration_s), summed
    wall_seconds: float = 0.0

    def record(self, run_id: str, status: str, error: str, seconds: float) -> None:
        """Note how one run ended."""
        self.status[run_id] = status
        self.run_seconds += seconds
        if error:
            self.errors[run_id] = error


def parse_grid(assignments: list[str]) -> list[dict[str, Any]]:
    """`["lr=1e-3,3e-3", "rate=0.1"]` -> the cartesian product of the values, as override dicts."""
    from bnnbench.methods import parse_assignments

    axes = []
    for assignment in assignments:
        key, sep, values = assignment.partition("=")
        if not sep or not key or not values:
            raise UsageError(f"bad --set '{assignment}': expected KEY=VALUE[,VALUE...]")
        axes.append([f"{key}={value}" for value in values.split(",")])
    return [parse_assignments(list(choice)) for choice in itertools.product(*axes)]


def expand(tasks: Sequence[str | Path | TaskSpec], methods: list[str], seeds: list[int], grid: list[dict[str, Any]],
           options: dict[str, Any]) -> list[Job]:
    """Every job of the sweep, with its run id and directory; validates each configuration (bad names fail
    here, before anything runs). A task named rather than loaded is loaded here, once, found in
    `options["task_dirs"]` and checked against every method of the sweep."""
    from bnnbench.methods import find_method
    from bnnbench.results import make_run_id, run_directory
    from bnnbench.tasks import load_task, resources_for

    specs = [find_method(method)[0] for method in methods]
    loaded = [task if isinstance(task, TaskSpec) else load_task(task, options.get("task_dirs", ()), methods=specs)
              for task in tasks]
    jobs = []
    for task, method, overrides in itertools.product(loaded, methods, grid):
        plan = _plan(task, method, overrides, options)
        resources = resources_for(plan.task, options.get("budget_name"))
        gpus = 0.0 if options.get("device") == "cpu" else resources.gpus  # "auto" resolves where the run executes
        for seed in seeds:
            run_id = make_run_id(plan.task.name, plan.task.version, plan.method.name, plan.config_hash, seed)
            directory = run_directory(plan.results_dir, plan.task.name, plan.method.name, run_id)
            jobs.append(Job(task, method, seed, overrides, options, run_id, str(directory), resources.cpus, gpus))
    return jobs


def job_ended_ok(job: Job) -> bool:
    """Whether the job's run directory already holds a run that ended ok."""
    from bnnbench.results import run_ended_ok

    return run_ended_ok(Path(job.directory))


def _to_run(jobs: list[Job], force: bool, result: SweepResult) -> list[Job]:
    """The jobs still to run; the others are marked skipped in `result`."""
    pending = []
    result.total += len(jobs)
    for job in jobs:
        if not force and job_ended_ok(job):
            result.status[job.run_id] = "skipped"
        else:
            pending.append(job)
    return pending


_PLANS: dict[str, Any] = {}  # this process's prepared plans: seeds of one configuration share one, as in `bnnbench run`


def _plan(task: TaskSpec, method: str, overrides: dict[str, Any], options: dict[str, Any]):
    """`runner.prepare` of one configuration, once per process (the worker that expands the sweep reuses its
    plans for its runs)."""
    from bnnbench.runner import prepare

    key = json.dumps([task, method, overrides, options], sort_keys=True, default=str)
    if key not in _PLANS:
        _PLANS[key] = prepare(task, method, overrides=overrides, show_progress=False, **options)
    return _PLANS[key]


def _execute(job: Job) -> tuple[str, str, float]:
    """(status, error, the run's own seconds) of one job; an exception (a configuration the worker cannot load,
    say) is this run's failure, not the sweep's."""
    from bnnbench.runner import run

    try:
        outcome = run(_plan(job.task, job.method, job.overrides, job.options), job.seed)
    except Exception as failure:
        return "failed", f"{type(failure).__name__}: {failure}", 0.0
    return outcome.status, outcome.error, float(outcome.record.get("duration_s", 0.0))


@dataclass(frozen=True)
class _Expand:
    """A request to a worker: expand the sweep there, so that the supervising process never imports torch."""

    tasks: list[str | Path | TaskSpec]
    methods: list[str]
    seeds: list[int]
    grid: list[dict[str, Any]]
    options: dict[str, Any]


def _worker(inbox, outbox, threads: int, supervisor: int) -> None:
    """A long-lived worker: runs the jobs sent on `inbox`; exits when told (None) or when `supervisor`, the
    process that started it, is gone (killed before it could say so, even during this worker's start-up)."""
    try:
        import torch

        import bnnbench.runner  # noqa: F401  (each worker warms up while the first one expands the sweep)

        torch.set_num_threads(threads)
        while True:
            try:
                message = inbox.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != supervisor:  # the supervisor was killed: nothing more will come, do not linger
                    os._exit(0)  # at once: a normal exit would wait to flush the queue to a reader that is gone
                continue
            if message is None:
                break
            if isinstance(message, _Expand):
                try:
                    outbox.put(("expanded", expand(message.tasks, message.methods, message.seeds, message.grid,
                                                   message.options), None))
                except Exception as failure:  # bad input: the supervisor raises it
                    outbox.put(("expanded", None, failure))
                continue
            outbox.put(("done", message.run_id, *_execute(message)))
    except KeyboardInterrupt:  # Ctrl-C reaches the workers too: the run in hand unwinds (writing nothing), quietly
        return


@dataclass
class _Worker:
    process: Any
    inbox: Any
    job: Job | None = None


class LocalPool:
    """Spawned worker processes and the queue they answer on. The first worker also expands the sweep
    (`expand`), while the others start up."""

    def __init__(self, workers: int, threads: int = 1) -> None:
        self.threads = threads
        self.context = multiprocessing.get_context("spawn")
        self.outbox = self.context.Queue()
        self.workers = [self.start_worker() for _ in range(workers)]

    def start_worker(self) -> _Worker:
        inbox = self.context.Queue()
        env_threads = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = str(self.threads)  # inherited by the spawned interpreter
        process = self.context.Process(target=_worker, args=(inbox, self.outbox, self.threads, os.getpid()),
                                       daemon=True)
        process.start()
        if env_threads is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
        return _Worker(process, inbox)

    def expand(self, tasks: list[str | Path | TaskSpec], methods: list[str], seeds: list[int],
               grid: list[dict[str, Any]], options: dict[str, Any]) -> list[Job]:
        """`expand(...)`, done by the first worker: it imports torch and loads the data there, which its runs need
        anyway, while this process stays a light supervisor. Raises what expansion raises (bad input)."""
        first = self.workers[0]
        first.inbox.put(_Expand(tasks, methods, seeds, grid, options))
        while True:
            try:
                _, jobs, failure = self.outbox.get(timeout=0.2)
            except queue.Empty:
                if not first.process.is_alive():
                    raise BnnbenchError(f"the worker expanding the sweep died (exit code {first.process.exitcode})"
                                        ) from None
                continue
            if failure is not None:
                raise failure
            return jobs

    def busy(self) -> int:
        return sum(worker.job is not None for worker in self.workers)

    def close(self) -> None:
        """Stop the workers. An idle one holds nothing unwritten, so it is killed rather than left to tear torch
        down (about a second); one still in a run (an interrupted sweep) is asked to stop, then killed."""
        for worker in self.workers:
            if worker.job is None:
                worker.process.kill()
            elif worker.process.is_alive():
                worker.inbox.put(None)
        for worker in self.workers:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()


OnDone = Callable[[str, str, str], list[Job]]  # (run_id, status, error) of a finished run -> more jobs to run


def run_local(jobs: list[Job], workers: int = 1, force: bool = False, threads: int = 1,
              on_update: Callable[[SweepResult, int], None] | None = None,
              pool: LocalPool | None = None, on_done: OnDone | None = None) -> SweepResult:
    """Run `jobs` on `workers` processes (or on `pool`, started earlier, which this closes); `on_update(result,
    running)` is called whenever something changes; `on_done`, when given, after each run that ran, and the jobs
    it returns join the queue (how `bnnbench tune` asks for its next trial while others still run)."""
    result, start = SweepResult(), time.perf_counter()
    pending = _to_run(jobs, force, result)
    if pool is None:
        pool = LocalPool(max(1, min(workers, len(pending))) if pending else 0, threads)

    def notify() -> None:
        if on_update is not None:
            on_update(result, pool.busy())

    notify()
    try:
        while pending or pool.busy():
            for worker in pool.workers:
                if worker.job is None and pending:
                    worker.job = pending.pop(0)
                    worker.inbox.put(worker.job)
            notify()
            try:
                _, run_id, status, error, seconds = pool.outbox.get(timeout=0.2)
            except queue.Empty:
                for index, worker in enumerate(pool.workers):
                    if worker.job is not None and not worker.process.is_alive():
                        died = (f"worker process died (exit code {worker.process.exitcode}) during the run; nothing "
                                "was written for it")
                        result.record(worker.job.run_id, "failed", died, 0.0)
                        if on_done is not None:
                            pending.extend(_to_run(on_done(worker.job.run_id, "failed", died), force, result))
                        pool.workers[index] = pool.start_worker()
                        notify()
                continue
            for worker in pool.workers:
                if worker.job is not None and worker.job.run_id == run_id:
                    worker.job = None
            result.record(run_id, status, error, seconds)
            if on_done is not None:
                pending.extend(_to_run(on_done(run_id, status, error), force, result))
            notify()
    finally:
        pool.close()
    result.wall_seconds = time.perf_counter() - start
    return result


def _check_feasible(cluster: dict[str, float], asks: dict[str, tuple[float, float]], jobs: list[Job]) -> None:
    """Refuse runs no node of the cluster could ever take (Ray would keep them pending forever)."""
    for job in jobs:
        job_cpus, job_gpus = asks[job.run_id]
        for name, wanted in (("CPU", job_cpus), ("GPU", job_gpus)):
            if wanted > cluster.get(name, 0.0):
                flag = "--gpus-per-run 0 or --device cpu" if name == "GPU" else "--threads"
                raise UsageError(f"run '{job.run_id}' asks for {wanted:g} {name}(s) (task {job.task.name}'s "
                                 f"[resources]) but the Ray cluster has {cluster.get(name, 0.0):g}; pass {flag}")


def _ray_execute(job: Job, threads: int) -> tuple[str, str, float]:
    import torch

    torch.set_num_threads(threads)
    return _execute(job)


def run_ray(jobs: list[Job], address: str | None = None, cpus: int | None = None, cpus_per_run: float | None = None,
            gpus_per_run: float | None = None, force: bool = False,
            on_update: Callable[[SweepResult, int], None] | None = None,
            on_done: OnDone | None = None) -> SweepResult:
    """Run `jobs` as Ray tasks: on the cluster at `address` ("auto" or HOST:PORT), else on a local Ray started
    with `cpus` CPUs. Each task asks for its job's CPUs and GPUs (the task's [resources]) unless `cpus_per_run` /
    `gpus_per_run` say otherwise, uses that many torch threads, and writes its run to the shared results
    directory; a task whose worker dies fails only its run. `on_done` as in `run_local`."""
    try:
        import ray
    except ImportError:
        raise UsageError("the ray executor needs Ray: pip install 'bnnbench[ray]'") from None

    result, start = SweepResult(), time.perf_counter()
    pending = _to_run(jobs, force, result)
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=cpus, log_to_driver=False, include_dashboard=False)
    try:
        runs = _RayRuns(ray, cpus_per_run, gpus_per_run)
        waiting = runs.submit(pending)
        if on_update is not None:
            on_update(result, len(waiting))
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            job, (status, error, seconds) = runs.outcome(done[0])
            result.record(job.run_id, status, error, seconds)
            if on_done is not None:
                waiting += runs.submit(_to_run(on_done(job.run_id, status, error), force, result))
            if on_update is not None:
                on_update(result, len(waiting))
    finally:
        if started_here:
            ray.shutdown()
    result.wall_seconds = time.perf_counter() - start
    return result


class _RayRuns:
    """The Ray tasks of a sweep: what each job asks the cluster for, and which job each future runs."""

    def __init__(self, ray: Any, cpus_per_run: float | None, gpus_per_run: float | None) -> None:
        self.ray, self.cpus_per_run, self.gpus_per_run = ray, cpus_per_run, gpus_per_run
        self.remote = ray.remote(max_retries=0)(_ray_execute)
        self.asks: dict[str, tuple[float, float]] = {}  # run_id -> (CPUs, GPUs)
        self.jobs: dict[Any, Job] = {}  # future -> its job

    def submit(self, jobs: list[Job]) -> list[Any]:
        """Futures of `jobs`; UsageError, before any is submitted, for one no node could take."""
        for job in jobs:
            self.asks.setdefault(job.run_id, (job.cpus if self.cpus_per_run is None else self.cpus_per_run,
                                              job.gpus if self.gpus_per_run is None else self.gpus_per_run))
        _check_feasible(self.ray.cluster_resources(), self.asks, jobs)
        futures = []
        for job in jobs:
            job_cpus, job_gpus = self.asks[job.run_id]
            threads = max(1, int(job_cpus))
            env = {"env_vars": {"OMP_NUM_THREADS": str(threads)}}
            future = self.remote.options(num_cpus=job_cpus, num_gpus=job_gpus, runtime_env=env).remote(job, threads)
            self.jobs[future] = job
            futures.append(future)
        return futures

    def outcome(self, future: Any) -> tuple[Job, tuple[str, str, float]]:
        """The job of a finished future and its (status, error, seconds); a worker that died fails the run."""
        try:
            return self.jobs[future], self.ray.get(future)
        except self.ray.exceptions.RayError as failure:  # the worker died, or Ray could not run the task
            return self.jobs[future], ("failed", f"{type(failure).__name__}: {str(failure).splitlines()[0]}", 0.0)
