"""Sweeps: expansion, resumption, the same numbers as `bnnbench run`, and a killed worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnnbench.errors import UsageError
from bnnbench.sweep import parse_grid

CPU = ("--device", "cpu")


def test_grid_is_the_cartesian_product_of_set_values():
    assert parse_grid(["lr=1e-3,3e-3", "rate=0.1"]) == [{"lr": 1e-3, "rate": 0.1}, {"lr": 3e-3, "rate": 0.1}]
    assert parse_grid([]) == [{}]
    with pytest.raises(UsageError, match="bad --set 'lr'"):
        parse_grid(["lr"])


def test_local_sweep_runs_each_job_once_and_matches_bnnbench_run(cli, results_dir, tmp_path):
    args = ("sweep", "--tasks", "digits-mlp", "--methods", "map,swag", "--seeds", "0-1", "--budget", "ci",
            "--results-dir", str(results_dir), "--workers", "2", "--quiet", *CPU)
    first = cli(*args)
    assert first.code == 0, first.stderr
    assert "4 runs: 4 ok, 0 failed, 0 skipped" in first.stdout
    again = cli(*args)
    assert "4 runs: 0 ok, 0 failed, 4 skipped" in again.stdout
    single = tmp_path / "single"
    assert cli("run", "--task", "digits-mlp", "--method", "swag", "--seed", "1", "--budget", "ci", "--quiet", *CPU,
               "--results-dir", str(single)).code == 0
    [swept] = results_dir.glob("digits-mlp/swag/*.s1/metrics.csv")
    [alone] = single.glob("digits-mlp/swag/*.s1/metrics.csv")
    assert swept.read_text() == alone.read_text()


def test_unknown_method_in_a_sweep_fails_before_anything_runs(cli, results_dir):
    result = cli("sweep", "--tasks", "digits-mlp", "--methods", "map,nope", "--results-dir", str(results_dir), *CPU)
    assert result.code == 2 and "nope" in result.stderr
    assert not results_dir.exists()


def _workers(parent: int) -> list[int]:
    """The sweep's worker processes: spawned children running multiprocessing's spawn_main."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if ppid == parent and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def test_a_worker_killed_mid_training_fails_only_its_run_and_the_rerun_completes(tmp_path):
    results = tmp_path / "results"
    command = [sys.executable, "-m", "bnnbench", "sweep", "--tasks", "digits-mlp", "--methods", "map", "--seeds",
               "0", "--epochs", "1000", "--results-dir", str(results), "--quiet", *CPU]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    sweep = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (workers := _workers(sweep.pid)) and time.time() < deadline:
        time.sleep(0.2)
    assert workers, "no worker process appeared"
    time.sleep(6)  # the worker has imported torch and is training (1,000 epochs take ~13 s)
    assert sweep.poll() is None
    os.kill(workers[0], signal.SIGKILL)
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 1, out + err
    assert "1 runs: 0 ok, 1 failed" in out and "worker process died (exit code -9)" in err
    assert not list(results.glob("digits-mlp/map/*")), "a killed run left files behind"
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 runs: 1 ok" in rerun.stdout
    assert len(list(results.glob("digits-mlp/map/*/metrics.csv"))) == 1


@pytest.mark.slow  # starting a local Ray takes ~10-20 s on two cores
def test_ray_sweep_gives_the_local_executor_numbers(cli, tmp_path):
    pytest.importorskip("ray")
    local, remote = tmp_path / "local", tmp_path / "ray"
    common = ("sweep", "--tasks", "digits-mlp", "--methods", "map,mc-dropout", "--seeds", "0-1", "--budget", "ci",
              "--quiet", *CPU)
    assert cli(*common, "--results-dir", str(local)).code == 0
    result = cli(*common, "--executor", "ray", "--workers", "2", "--results-dir", str(remote))
    assert result.code == 0, result.stdout + result.stderr
    assert "4 runs: 4 ok" in result.stdout
    local_files = sorted(local.glob("digits-mlp/*/*/metrics.csv"))
    assert len(local_files) == 4
    for path in local_files:
        assert (remote / path.relative_to(local)).read_text() == path.read_text()
