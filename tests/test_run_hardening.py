"""Runs under failure: a bug inside a method, a kill or a concurrent writer mid-write, an ok result already
there, a results path that cannot be written. Each ends in one line and a sane results directory."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from bnnbench.results import load_results, write_run

CI = ("--task", "digits-mlp", "--method", "map", "--budget", "ci", "--quiet", "--device", "cpu")


class _BrokenNetwork(nn.Module):
    """A model whose forward pass has a bug of the kind a new method brings (a TypeError)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        raise TypeError("unsupported operand type(s) for +: 'Tensor' and 'str'")


def _break_the_model(monkeypatch) -> None:
    monkeypatch.setattr("bnnbench.models.create_model", lambda *args, **kwargs: _BrokenNetwork())


def _strict_json(path: Path):
    def refuse(constant):
        raise ValueError(f"bare {constant} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_an_unexpected_exception_in_a_method_is_a_failed_run_with_its_traceback_saved(cli, results_dir,
                                                                                        monkeypatch):
    _break_the_model(monkeypatch)
    result = cli("run", *CI, "--results-dir", str(results_dir))
    assert result.code == 1
    assert "Traceback" not in result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "TypeError: unsupported operand" in line
    [directory] = results_dir.glob("digits-mlp/map/*")
    record = _strict_json(directory / "run.json")
    assert record["status"] == "failed" and record["error"].startswith("TypeError: unsupported operand")
    trace = (directory / "traceback.txt").read_text()
    assert trace.startswith("Traceback") and "in forward" in trace


def test_a_sweep_records_the_same_failure_as_a_run(cli, results_dir, monkeypatch):
    from bnnbench.sweep import _execute, expand

    _break_the_model(monkeypatch)
    [job] = expand(["digits-mlp"], ["map"], [0], [{}], {"budget_name": "ci", "device": "cpu",
                                                        "results_dir": results_dir})
    status, error, _ = _execute(job)
    assert status == "failed" and error.startswith("TypeError: unsupported operand")
    directory = Path(job.directory)
    assert _strict_json(directory / "run.json")["status"] == "failed"
    assert (directory / "traceback.txt").read_text().startswith("Traceback")


def test_run_json_never_holds_a_bare_nan(tmp_path):
    directory = tmp_path / "t" / "m" / "r"
    write_run(directory, {"run_id": "r", "status": "failed", "fit_extra": {"loss": float("nan"),
                                                                           "grid": [1.0, float("inf")]}}, [])
    record = _strict_json(directory / "run.json")
    assert record["fit_extra"] == {"loss": None, "grid": [1.0, None]}


def test_a_seed_with_an_ok_result_is_skipped_and_force_replaces_it(cli, results_dir):
    assert cli("run", *CI, "--results-dir", str(results_dir)).code == 0
    [record_path] = results_dir.glob("digits-mlp/map/*/run.json")
    first = record_path.read_text()
    again = cli("run", *CI, "--results-dir", str(results_dir))
    assert again.code == 0 and "skipped" in again.stdout and "--force" in again.stdout
    assert record_path.read_text() == first  # not even re-written
    forced = cli("run", *CI, "--force", "--results-dir", str(results_dir))
    assert forced.code == 0 and "skipped" not in forced.stdout
    assert json.loads(record_path.read_text())["started_at"] >= json.loads(first)["started_at"]
    assert record_path.read_text() != first  # a new run (its timings differ)


def test_a_failed_rerun_does_not_replace_an_ok_run(cli, results_dir, monkeypatch):
    assert cli("run", *CI, "--results-dir", str(results_dir)).code == 0
    _break_the_model(monkeypatch)
    assert cli("run", *CI, "--results-dir", str(results_dir)).code == 0  # skipped: the ok result stands
    [directory] = results_dir.glob("digits-mlp/map/*")
    assert _strict_json(directory / "run.json")["status"] == "ok"


@pytest.mark.parametrize("blocker", ["digits-mlp", "digits-mlp/map"])
def test_a_file_where_the_run_directory_goes_is_refused_before_training(cli, results_dir, blocker):
    (results_dir / blocker).parent.mkdir(parents=True, exist_ok=True)
    (results_dir / blocker).write_text("not a directory")
    before = sorted(str(p) for p in results_dir.rglob("*"))
    result = cli("run", *CI, "--results-dir", str(results_dir))
    assert result.code == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "is not a directory" in line and blocker.split("/")[-1] in line
    assert sorted(str(p) for p in results_dir.rglob("*")) == before  # nothing written, no temp file


def test_a_results_dir_that_is_a_file_is_refused(cli, tmp_path):
    target = tmp_path / "results"
    target.write_text("a file")
    result = cli("run", *CI, "--results-dir", str(target))
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert target.read_text() == "a file"


def test_a_results_dir_with_brackets_is_printed_verbatim(cli, tmp_path):
    results_dir = tmp_path / "runs[red]" / "[/bold]"
    result = cli("run", *CI, "--results-dir", str(results_dir))
    assert result.code == 0, result.stderr
    assert "runs[red]" in result.stdout and "[/bold]" in result.stdout


RECORD = {"run_id": "r", "task": "t", "task_version": 1, "method": "m", "seed": 0, "config_hash": "c" * 64,
          "status": "ok", "error": ""}
_KILLED_WRITER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import bnnbench.atomic as atomic
    import bnnbench.results as results

    directory, mode = Path(sys.argv[1]), sys.argv[2]
    if mode == "after-exchange":  # killed after the one atomic rename, before the old run is deleted
        exchange = atomic._exchange
        def exchange_then_die(first, second):
            if exchange(first, second):
                os._exit(9)
            raise SystemExit("this filesystem cannot exchange")
        atomic._exchange = exchange_then_die
    else:  # a filesystem without exchange, killed between setting the old run aside and moving the new in
        atomic._exchange = lambda first, second: False
        replace, calls = os.replace, []
        def replace_then_die(source, target):
            calls.append(target)
            if len(calls) == 2:
                os._exit(9)
            replace(source, target)
        os.replace = replace_then_die
    results.write_run(directory, dict(eval(sys.argv[3]), which="new"), [])
""")


@pytest.mark.parametrize("mode", ["after-exchange", "between-renames"])
def test_a_writer_killed_mid_replacement_leaves_a_whole_run(tmp_path, mode):
    directory = tmp_path / "t" / "m" / "r"
    write_run(directory, dict(RECORD, which="old"), [])
    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(directory), mode, repr(RECORD)],
                            capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr
    if mode == "between-renames":
        assert not directory.exists()  # the state the old code left for good
    runs, _ = load_results(tmp_path)
    visible = runs[runs["run_id"] == "r"]
    assert len(visible) == 1
    assert visible["which"].iloc[0] == ("new" if mode == "after-exchange" else "old")
    write_run(directory, dict(RECORD, which="newer"), [])  # the next write recovers
    assert list(directory.parent.glob(".r.old.*")) == []
    assert json.loads((directory / "run.json").read_text())["which"] == "newer"


def _write_many(directory: str, writer: int, count: int) -> None:
    for index in range(count):
        write_run(Path(directory), {"run_id": "r", "status": "ok", "writer": writer, "index": index},
                  [{"run_id": "r", "task": "t", "task_version": 1, "method": "m", "seed": 0, "split": "test",
                    "corruption": "none", "severity": 0, "metric": "nll", "value": float(writer)}])


def test_concurrent_writers_of_one_run_id_each_land_whole(tmp_path):
    directory = tmp_path / "t" / "m" / "r"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_many, args=(str(directory), writer, 60)) for writer in range(6)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=120)
    assert [process.exitcode for process in writers] == [0] * 6
    assert [p.name for p in directory.parent.iterdir()] == ["r"]  # no .old or staging directory left
    record = json.loads((directory / "run.json").read_text())
    metrics = (directory / "metrics.csv").read_text()
    assert f",nll,{float(record['writer'])!r}" in metrics  # run.json and metrics.csv of one and the same write
    assert sorted(os.listdir(directory)) == ["metrics.csv", "run.json"]


@pytest.mark.parametrize("command", ["baseline", "report"])
def test_an_output_path_that_cannot_be_written_is_one_line_and_leaves_nothing(cli, tmp_path, command):
    results_dir = tmp_path / "results"
    assert cli("run", *CI, "--results-dir", str(results_dir)).code == 0
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    targets = [blocker / "out"]  # a file where a directory goes
    if command == "baseline":
        (tmp_path / "a-directory").mkdir()
        targets.append(tmp_path / "a-directory")
    for target in targets:
        result = cli(command, "--results-dir", str(results_dir), "--out", str(target))
        assert result.code == 2 and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["results", "blocker"]
                                                                + (["a-directory"] if command == "baseline" else []))
    assert command != "baseline" or list((tmp_path / "a-directory").iterdir()) == []
