"""The command line: help texts, listing speed, and one-line errors (exit 2, nothing written) on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from assertions import assert_usage_error

COMMANDS = ["list", "validate", "run", "compare", "check", "baseline", "bench", "doctor"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(cli, command):
    result = cli(command, "--help")
    assert result.code == 0
    assert "Example" in result.stdout and f"bnnbench {command}" in result.stdout


def test_help_and_list_are_fast():
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    for args in (["--help"], ["list", "methods"], ["list", "tasks"]):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "bnnbench", *args], capture_output=True, text=True, env=env)
        elapsed = time.perf_counter() - start
        assert done.returncode == 0, done.stderr
        assert elapsed < 1.5, f"bnnbench {' '.join(args)} took {elapsed:.2f} s"
    assert "digits-mlp" in done.stdout


def test_list_shows_registered_names(cli):
    assert "map" in cli("list", "methods").stdout
    assert "ece" in cli("list", "metrics").stdout


CLICK_USAGE_ERRORS = [
    (["run", "--task", "digits-mlp", "--method", "map", "--epochs", "abc"], ["'--epochs'", "valid integer", "'abc'"]),
    (["compare", "--format", "bogus"], ["'--format'", "'bogus'", "'table', 'markdown', 'csv', 'json', 'latex'"]),
    (["list", "bogus"], ["'what'", "'bogus'", "'tasks', 'methods', 'metrics'"]),
    (["list"], ["Missing argument 'what'", "tasks, methods, metrics"]),
    (["sweep", "--tasks", "digits-mlp", "--methods", "map", "--executor", "slurm"], ["'slurm'", "'local', 'ray'"]),
    (["run", "--task", "digits-mlp"], ["Missing option '--method'"]),
    (["run", "--tsk", "digits-mlp", "--method", "map"], ["No such option: --tsk", "--task"]),
    (["list", "tasks", "extra"], ["unexpected extra argument", "extra"]),
    (["compare", "--results-dir"], ["'--results-dir' requires an argument"]),
]


@pytest.mark.parametrize(("args", "fragments"), CLICK_USAGE_ERRORS)
def test_click_usage_errors_are_one_line(cli, args, fragments):
    """click's own errors (a bad value, choice, missing or unknown option, an extra argument) as bnnbench's: one
    line naming the value and the choices, without click's usage block and help hint."""
    result = cli(*args)
    assert_usage_error(result, "error: ", *fragments)
    assert "Usage:" not in result.stderr + result.stdout and "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "fragments"), [CLICK_USAGE_ERRORS[0], CLICK_USAGE_ERRORS[1]])
def test_click_usage_errors_are_one_line_from_the_installed_command(args, fragments):
    done = subprocess.run([sys.executable, "-m", "bnnbench", *args], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("error: ") and all(fragment in line for fragment in fragments), line
    assert "Usage:" not in done.stdout + done.stderr


def test_help_is_still_click_s(cli):
    """The one-line errors leave help alone: `--help` exits 0, a bare group shows its help and exits 2."""
    assert cli("--help").code == 0 and "Usage:" in cli("--help").stdout
    bare = cli("data")
    assert bare.code == 2 and "download" in bare.stdout + bare.stderr


def test_help_texts_keep_their_angle_bracket_placeholders_out():
    """The help is rendered as markdown, which drops `<task>` as an HTML tag: `tuned/<task>.toml` read
    `tuned/.toml`. Placeholders are written in capitals (TASK) instead."""
    import re

    import click
    import typer

    from bnnbench.cli import app

    def texts(command: click.Command):
        yield command.help or ""
        for parameter in command.params:
            yield getattr(parameter, "help", None) or ""
        for sub in getattr(command, "commands", {}).values():
            yield from texts(sub)

    tags = [text for text in texts(typer.main.get_command(app)) if re.search(r"<[A-Za-z_]+>", text)]
    assert tags == []


def test_validate_all_tasks(cli):
    result = cli("validate")
    assert result.code == 0
    assert "ok digits-vit v1" in result.stdout


BAD_TASK = """name = "broken"
version = 1
description = "x"
likelihood = "categorical"
[data]
source = "digits"
[model]
name = "mlp"
[budget]
max_epochs = 1
[eval]
metrics = ["acc"
"""


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--task", "nope", "--method", "map"], ["unknown task 'nope'", "valid choices: ", "digits-mlp", "digits-vit"]),
        (["--task", "digits-mlp", "--method", "mpa"], ["unknown method 'mpa'", "did you mean 'map'", "map"]),
        (["--task", "digits-mlp", "--method", "map", "--set", "lrr=0.1"],
         ["unknown hyper-parameter of method 'map' 'lrr'", "did you mean 'lr'", "weight_decay"]),
        (["--task", "digits-mlp", "--method", "map", "--set", "lr"], ["--set expects key=value, got 'lr'"]),
        (["--task", "digits-mlp", "--method", "map", "--seed", "x"], ["--seed expects an integer", "'x'"]),
        (["--task", "digits-mlp", "--method", "map", "--budget", "huge"], ["unknown budget", "'huge'", "ci, default"]),
        (["--task", "digits-mlp", "--method", "map", "--device", "tpu"], ["unknown device 'tpu'", "auto, cpu, cuda"]),
    ],
)
def test_run_rejects_bad_input_without_writing(cli, results_dir, args, fragments):
    result = cli("run", *args, "--results-dir", str(results_dir))
    assert_usage_error(result, *fragments)
    assert not results_dir.exists()


def test_malformed_task_file_names_file(cli, results_dir, tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text(BAD_TASK)
    result = cli("run", "--task", str(path), "--method", "map", "--results-dir", str(results_dir))
    assert_usage_error(result, str(path), "malformed TOML")
    assert not results_dir.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(cli, results_dir):
    result = cli("run", "--task", "digits-mlp", "--method", "map", "--device", "cuda",
                    "--results-dir", str(results_dir))
    assert_usage_error(result, "--device cuda", "valid choices here: auto, cpu")
    assert not results_dir.exists()


def test_unwritable_results_dir(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = cli("run", "--task", "digits-mlp", "--method", "map", "--results-dir", str(blocker / "sub"))
    assert_usage_error(result, f"results dir '{blocker / 'sub'}' is not writable")


def test_baseline_with_missing_columns(cli, tmp_path):
    path = tmp_path / "base.csv"
    path.write_text("task,method,metric,mean\nt,m,nll,0.5\n")
    result = cli("check", "--baseline", str(path), "--results-dir", str(tmp_path))
    assert_usage_error(result, str(path), "lacks columns", "task_version")


BASELINE = Path(__file__).resolve().parents[1] / "results" / "baselines" / "ci-cpu.csv"


@pytest.mark.parametrize("command", ["check", "compare", "baseline", "report"])
@pytest.mark.parametrize("made", [True, False], ids=["empty", "missing"])
def test_read_commands_without_runs_exit_2_with_one_line(cli, tmp_path, command, made):
    """Nothing to read is bad input for every command that reads results: the same exit code and one line."""
    results = tmp_path / "results"
    if made:
        results.mkdir()
    written = tmp_path / "written"
    options = {"check": ["--baseline", str(BASELINE)], "compare": [], "baseline": ["--out", str(written)],
               "report": ["--out", str(written)]}[command]
    result = cli(command, *options, "--results-dir", str(results))
    assert_usage_error(result, f"no runs found under '{results}'")
    assert not written.exists()


def test_diverging_run_is_recorded_as_failed(cli, results_dir):
    result = cli("run", "--task", "digits-mlp", "--method", "map", "--budget", "ci", "--quiet",
                    "--set", "lr=1e30", "--results-dir", str(results_dir))
    assert result.code == 1
    assert "training loss is nan" in result.stderr
    [run_json] = results_dir.glob("digits-mlp/map/*/run.json")
    record = json.loads(run_json.read_text())
    assert record["status"] == "failed" and "DivergenceError" in record["error"]
    assert not run_json.with_name("metrics.csv").exists()


def test_a_run_whose_predictive_is_not_finite_fails_in_one_line(results_dir):
    """SWAG with an absurd covariance scale trains fine and predicts NaN: the evaluator's numpy computes on NaN
    (ECE casts it to a bin index), and its RuntimeWarnings must not add lines above the run's failure line. A
    subprocess, as pytest would otherwise capture the warnings itself."""
    done = subprocess.run([sys.executable, "-m", "bnnbench", "run", "--task", "digits-mlp", "--method", "swag",
                           "--budget", "ci", "--set", "scale=1e30", "--device", "cpu", "--quiet",
                           "--results-dir", str(results_dir)],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("failed digits-mlp.v1.swag.") and "a metric is not finite" in line, line
