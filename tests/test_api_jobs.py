"""The API's `sweep` and `tune` (the command line's code path): arguments checked as strictly as the command line
checks them, a task file read once per sweep (its jobs carry the loaded task), the Ray executor's bookkeeping (with a
stand-in for Ray, which the test environment lacks), the tuned file and the trial reports; and `list --names
--built-in`, the method list scripts use."""

from __future__ import annotations

import functools
import pickle
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bnnbench import api, sweep
from bnnbench.errors import UsageError
from bnnbench.tasks import load_task

CI = {"budget": "ci", "epochs": 1, "device": "cpu"}


@pytest.mark.parametrize(("seeds", "fragment"), [
    ([-1], "seed -1 is out of range"), ([2**64], "0..18446744073709551615"), ([True], "integers, got True"),
    (["0"], "integers, got '0'"), ([1.0], "integers, got 1.0"), ("0..2", "a list of integers"), (3, "a list"),
    ([], "at least one seed"), (range(2**64), "at most 1,000,000"),
])
def test_seeds_are_checked_as_the_command_line_checks_them(seeds, fragment):
    with pytest.raises(UsageError, match=fragment) as raised:
        api.check_seeds(seeds)
    assert "\n" not in str(raised.value)


def test_seeds_keep_their_first_order_and_the_largest_is_accepted():
    assert api.check_seeds([3, 1, 3, np.int64(2)]) == [3, 1, 2]
    assert api.check_seeds(range(2**64 - 1, 2**64)) == [2**64 - 1]


@pytest.mark.parametrize(("call", "fragment"), [
    (lambda out: api.run("digits-mlp", "map", seeds=[2**64], results_dir=out), "out of range"),
    (lambda out: api.run("digits-mlp", "map", overrides=["lr=1"], results_dir=out), "overrides must be a dict"),
    (lambda out: api.sweep(["digits-mlp"], ["map"], executor="dask", results_dir=out), "unknown executor 'dask'"),
    (lambda out: api.sweep(["digits-mlp"], ["map"], workers=0, results_dir=out), "--workers and --threads"),
    (lambda out: api.sweep(["digits-mlp"], ["map"], grid={"lr": [1e-3]}, results_dir=out), "override dicts"),
    (lambda out: api.sweep([], ["map"], results_dir=out), "no tasks given"),
    (lambda out: api.tune("digits-mlp", ["map"], seeds=[-2], study_dir=out), "out of range"),
    (lambda out: api.tune("digits-mlp", ["mpa"], study_dir=out), "did you mean 'map'"),
])
def test_bad_arguments_are_one_line_before_anything_is_written(tmp_path, call, fragment):
    with pytest.raises(UsageError, match=fragment) as raised:
        call(tmp_path / "out")
    assert "\n" not in str(raised.value) and not (tmp_path / "out").exists()


def test_a_sweep_reads_each_task_file_once_and_a_worker_never(tmp_path, monkeypatch):
    import bnnbench.tasks

    reads = []
    def counted(*args, **kwargs):
        reads.append(args)
        return load_task(*args, **kwargs)

    monkeypatch.setattr(bnnbench.tasks, "load_task", counted)
    options = {"budget_name": "ci", "epochs": 1, "device": "cpu", "results_dir": tmp_path / "runs"}
    jobs = sweep.expand(["digits-mlp"], ["map", "mc-dropout"], [0, 1], [{}, {"lr": 2e-3}], options)
    assert len(jobs) == 8 and len(reads) == 1 and all(job.task.name == "digits-mlp" for job in jobs)

    def no_reading(*args, **kwargs):
        raise AssertionError("a worker read the task file")

    monkeypatch.setattr(bnnbench.tasks, "load_task", no_reading)
    monkeypatch.setattr(sweep, "_PLANS", {})  # a fresh worker's: nothing prepared yet
    status, error, _ = sweep._execute(pickle.loads(pickle.dumps(jobs[0])))  # as a spawned worker receives it
    assert (status, error) == ("ok", "")


def test_the_api_sweep_reports_progress_and_returns_each_runs_status(tmp_path):
    updates = []
    first = api.sweep("digits-mlp", ["map"], results_dir=tmp_path, **CI,
                      on_update=lambda result, running: updates.append((dict(result.status), running)))
    [(run_id, status)] = first.status.items()
    assert status == "ok" and first.total == 1 and updates[-1] == ({run_id: "ok"}, 0)
    assert any(running == 1 for _, running in updates)
    again = api.sweep(["digits-mlp"], ["map"], results_dir=tmp_path, **CI)
    assert again.status == {run_id: "skipped"} and again.total == 1


class _FakeRay:
    """What `run_ray` uses of Ray, run in this process: a future runs its task when its result is asked for."""

    class RayError(Exception):
        pass

    def __init__(self, cluster: dict[str, float], dies: set[str]) -> None:
        self.cluster, self.dies, self.up, self.asked = cluster, dies, False, {}
        self.exceptions = SimpleNamespace(RayError=self.RayError)

    def is_initialized(self) -> bool:
        return self.up

    def init(self, **kwargs) -> None:
        self.up, self.init_kwargs = True, kwargs

    def shutdown(self) -> None:
        self.up = False

    def cluster_resources(self) -> dict[str, float]:
        return self.cluster

    def remote(self, **kwargs):
        def options(function, **asks):
            def submit(job, threads):
                self.asked[job.run_id] = (asks["num_cpus"], asks["num_gpus"], threads)
                return functools.partial(function, job, threads)

            return SimpleNamespace(remote=submit)

        return lambda function: SimpleNamespace(options=functools.partial(options, function))

    def wait(self, futures: list, num_returns: int) -> tuple[list, list]:
        return futures[:num_returns], futures[num_returns:]

    def get(self, future):
        job = future.args[0]
        if job.run_id in self.dies:
            raise self.RayError(f"the worker running {job.run_id} died\nwith more lines")
        return future()


def _jobs(tmp_path: Path, *seeds: int) -> list[sweep.Job]:
    task = load_task("digits-mlp")
    return [sweep.Job(task, "map", seed, {}, {}, f"r{seed}", str(tmp_path / f"r{seed}"), 1.0, 0.0) for seed in seeds]


def test_the_ray_executor_runs_each_job_with_its_ask_and_a_dead_worker_fails_only_its_run(tmp_path, monkeypatch):
    ray = _FakeRay({"CPU": 4.0}, dies={"r1"})
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setattr(sweep, "_execute", lambda job: ("ok", "", 2.0))
    result = sweep.run_ray(_jobs(tmp_path, 0, 1), cpus=4, cpus_per_run=2,  # r0's end asks for r2, as tune does
                           on_done=lambda run_id, status, error: _jobs(tmp_path, 2) if run_id == "r0" else [])
    assert result.status == {"r0": "ok", "r1": "failed", "r2": "ok"} and result.total == 3
    assert result.errors == {"r1": "RayError: the worker running r1 died"} and result.run_seconds == 4.0
    assert ray.asked == {"r0": (2, 0.0, 2), "r1": (2, 0.0, 2), "r2": (2, 0.0, 2)}
    assert ray.init_kwargs["num_cpus"] == 4 and not ray.up  # the Ray started here is shut down

    small = _FakeRay({"CPU": 1.0}, dies=set())
    monkeypatch.setitem(sys.modules, "ray", small)
    with pytest.raises(UsageError, match=r"asks for 2 CPU\(s\) \(task digits-mlp's \[resources\]\).*--threads"):
        sweep.run_ray(_jobs(tmp_path, 0), cpus_per_run=2)
    assert not small.up and not small.asked


def test_the_api_tune_writes_the_tuned_file_and_reports_each_trial(tmp_path):
    trials = []
    tuned = api.tune("digits-mlp", ["map"], trials=1, study_dir=tmp_path / "studies", out=tmp_path / "map.toml",
                     **CI, on_trial=lambda *trial: trials.append(trial))
    assert tuned.path == tmp_path / "map.toml" and tuned.path.is_file()
    [(task, method, number, value)] = trials
    assert (task, method, number) == ("digits-mlp", "map", 0) and value == tuned.outcome.summaries["map"]["best_value"]


def test_list_names_prints_bare_names_and_built_in_leaves_plugins_out(cli, monkeypatch):
    from bnnbench import methods

    example = Path(__file__).resolve().parents[1] / "examples" / "bnnbench-temperature-scaling" / "src"
    monkeypatch.syspath_prepend(str(example))
    plugin = SimpleNamespace(name="temperature-scaling", value="bnnbench_temperature_scaling:SPEC",
                             group=methods.PLUGIN_GROUP, dist=SimpleNamespace(name="bnnbench-ts", version="0.1"))
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [plugin] if group == plugin.group else [])
    monkeypatch.setattr(methods, "METHODS", methods.method_registry())
    built_in = [name for name, _, _ in methods.BUILT_IN]
    every = cli("list", "methods", "--names")
    assert every.code == 0 and every.stdout.splitlines() == [*built_in, "temperature-scaling"]
    own = cli("list", "methods", "--names", "--built-in")
    assert own.code == 0 and own.stdout.splitlines() == built_in
    assert "digits-mlp" in cli("list", "tasks", "--names").stdout.splitlines()
    refused = cli("list", "tasks", "--built-in")
    assert refused.code == 2 and "--built-in" in refused.stderr
