"""Sweeps: expansion, resumption, the same numbers as `bnnbench run`, and a killed worker."""

from __future__ import annotations

import os
import pty
import re
import select
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


def test_a_sweep_finds_its_tasks_in_a_tasks_dir(cli, results_dir, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    digits = Path(__file__).resolve().parents[1] / "tasks" / "digits-mlp.toml"
    (tasks / "digits-quick.toml").write_text(f'include = "{digits}"\nname = "digits-quick"\n[budget]\nmax_epochs = 1\n'
                                             '[eval]\ncorruptions = "none"\n')
    result = cli("sweep", "--tasks", "digits-quick", "--methods", "map", "--tasks-dir", str(tasks),
                 "--results-dir", str(results_dir), "--quiet", *CPU)  # the spawned worker is told where to look
    assert result.code == 0 and "1 runs: 1 ok" in result.stdout, result.stderr
    assert len(list(results_dir.glob("digits-quick/map/*.s0/metrics.csv"))) == 1


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


def _alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, awaiting its parent's wait, has ended)."""
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def test_a_worker_killed_mid_training_fails_only_its_run_and_the_rerun_completes(tmp_path):
    """The worker is killed once it holds the run (the sweep's own report of a busy worker), not after a guessed
    time: on a loaded machine a fixed wait could kill the worker while it still expanded the sweep."""
    from bnnbench import api

    results = tmp_path / "results"
    killed: list[int] = []

    def kill_the_busy_worker(result, running: int) -> None:
        if running and not killed:
            (worker,) = _workers(os.getpid())
            os.kill(worker, signal.SIGKILL)
            killed.append(worker)

    outcome = api.sweep(["digits-mlp"], ["map"], seeds=[0], epochs=1000, results_dir=results, device="cpu",
                        threads=1, on_update=kill_the_busy_worker)
    assert killed, "no worker was ever busy"
    assert list(outcome.status.values()) == ["failed"], outcome.status
    (error,) = outcome.errors.values()
    assert "worker process died (exit code -9)" in error, error
    assert not list(results.glob("digits-mlp/map/*")), "a killed run left files behind"
    command = [sys.executable, "-m", "bnnbench", "sweep", "--tasks", "digits-mlp", "--methods", "map", "--seeds",
               "0", "--epochs", "1000", "--results-dir", str(results), "--quiet", *CPU]  # the same run id
    rerun = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 runs: 1 ok" in rerun.stdout
    assert len(list(results.glob("digits-mlp/map/*/metrics.csv"))) == 1


def test_workers_of_a_killed_sweep_do_not_outlive_it(tmp_path):
    """SIGKILL to the supervisor (`kill -9`, an OOM kill): its workers finish the run in hand (written whole, so a
    resumed sweep or tune reuses it) and exit, instead of waiting on their queue for ever."""
    command = [sys.executable, "-m", "bnnbench", "sweep", "--tasks", "digits-mlp", "--methods", "map", "--seeds",
               "0", "--epochs", "3", "--results-dir", str(tmp_path / "results"), "--quiet", *CPU]
    sweep = subprocess.Popen(command, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (workers := _workers(sweep.pid)) and time.time() < deadline:
        time.sleep(0.2)
    assert workers, "no worker process appeared"
    sweep.kill()
    sweep.wait(timeout=30)
    deadline = time.time() + 60
    while any(map(_alive, workers)) and time.time() < deadline:
        time.sleep(0.2)
    assert time.time() < deadline, "a worker outlived its killed sweep"


def _interruptible() -> None:
    """In the child: the session of its own (so the test can signal its process group as a terminal would) and
    SIGINT at its default, which pytest's workers may have set to ignore."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


TABLE_EDGES = "┏┃┡│└"  # first characters of the lines of rich's table (its default box)


def _screen(raw: bytes) -> list[str]:
    """What a terminal showed, as stripped lines without ANSI codes: every frame of the live table, then the rest."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.decode(errors="replace"))
    return [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]


def _running(raw: bytes) -> int:
    """The 'running' count of the sweep's latest live-table row (done, running, failed, ...), 0 before the first."""
    rows = [cells for line in _screen(raw) if line.startswith("│")
            and len(cells := [cell.strip() for cell in line.strip("│").split("│")]) == 7]
    return int(rows[-1][1]) if rows else 0


def _read(terminal: int, raw: bytearray, until, deadline: float) -> bool:
    """Read what the sweep writes to `terminal` into `raw` until `until(raw)` holds, the writers are all gone (EIO)
    or the deadline passes (the pty's buffer must be drained anyway, or the sweep would block writing)."""
    while not until(raw) and time.time() < deadline:
        if select.select([terminal], [], [], 0.1)[0]:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # EIO: no process holds the terminal any more
                break
            if not chunk:
                break
            raw += chunk
    return until(raw)


def test_ctrl_c_stops_the_sweep_and_its_workers_and_leaves_no_run(tmp_path):
    """Ctrl-C once both workers hold a run, as the sweep itself reports it (the 'running' column of its live
    table, drawn because stderr is a terminal here), not after a guessed time: on a loaded machine a fixed wait
    could land while they still imported torch or expanded the sweep."""
    results = tmp_path / "results"
    command = [sys.executable, "-m", "bnnbench", "sweep", "--tasks", "digits-mlp", "--methods", "map", "--seeds",
               "0-1", "--epochs", "1000", "--workers", "2", "--results-dir", str(results), *CPU]
    env = {key: value for key, value in os.environ.items() if not key.startswith("TTY_")}  # rich's overrides
    env |= {"OMP_NUM_THREADS": "1", "TERM": "xterm", "COLUMNS": "120"}
    terminal, its_end = pty.openpty()
    sweep = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=its_end, text=True,
                             preexec_fn=_interruptible)
    os.close(its_end)
    raw = bytearray()
    try:
        assert _read(terminal, raw, lambda seen: _running(seen) == 2, time.time() + 120), _screen(raw)[-12:]
        workers = _workers(sweep.pid)
        assert len(workers) == 2, workers
        os.killpg(sweep.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
        _read(terminal, raw, lambda seen: False, time.time() + 60)  # to the end: the sweep and its workers gone
        out, _ = sweep.communicate(timeout=60)
    finally:
        if sweep.poll() is None:  # a failed wait: leave no sweep behind
            os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait()
        os.close(terminal)
    assert sweep.returncode == 130, out + "\n".join(_screen(raw))
    # below the live table one line, "aborted": no worker's traceback
    assert [line for line in _screen(raw) if line[0] not in TABLE_EDGES and line != "sweep"] == ["aborted"]
    assert not [path for path in results.rglob("*") if path.is_dir() and path.parent.name == "map"], \
        "an interrupted run left a directory (final or staging) behind"
    deadline = time.time() + 10
    while any(map(_alive, workers)) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(map(_alive, workers)), "a worker outlived the sweep"


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


def test_jobs_ask_for_the_tasks_resources_and_infeasible_ones_are_refused(tmp_path):
    from bnnbench.package_files import builtin_tasks_dir
    from bnnbench.sweep import _check_feasible, expand

    task = tmp_path / "gpu-digits.toml"
    task.write_text(f'include = "{builtin_tasks_dir() / "digits-mlp.toml"}"\nname = "gpu-digits"\n'
                    '[resources]\ncpus = 2\ngpus = 1\n[resources.ci]\ngpus = 0.5\n')
    options = {"budget_name": None, "device": "auto", "results_dir": tmp_path / "r"}
    jobs = expand([str(task)], ["map"], [0, 1], [{}], options)
    assert [(job.cpus, job.gpus) for job in jobs] == [(2, 1), (2, 1)]
    ci = expand([str(task)], ["map"], [0], [{}], options | {"budget_name": "ci"})
    assert (ci[0].cpus, ci[0].gpus) == (2, 0.5)
    on_cpu = expand([str(task)], ["map"], [0], [{}], options | {"device": "cpu"})
    assert (on_cpu[0].cpus, on_cpu[0].gpus) == (2, 0)  # a run told to use the CPU asks for no GPU
    asks = {job.run_id: (job.cpus, job.gpus) for job in jobs}
    _check_feasible({"CPU": 16.0, "GPU": 1.0}, asks, jobs)
    with pytest.raises(UsageError, match=r"asks for 1 GPU\(s\).*cluster has 0; pass --gpus-per-run 0"):
        _check_feasible({"CPU": 16.0}, asks, jobs)
    with pytest.raises(UsageError, match=r"asks for 2 CPU\(s\).*cluster has 1"):
        _check_feasible({"CPU": 1.0, "GPU": 1.0}, asks, jobs)
    assert not (tmp_path / "r").exists()
