"""The command line: help texts, listing speed, and one-line errors (exit 2, nothing written) on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

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


def test_missing_argument_is_a_usage_error_not_a_traceback(cli):
    result = cli("list")
    assert result.code == 2 and "Missing argument 'what'" in result.stderr and "Traceback" not in result.stderr


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


def test_compare_without_results(cli, results_dir):
    assert_usage_error(cli("compare", "--results-dir", str(results_dir)), "no runs found")


def test_diverging_run_is_recorded_as_failed(cli, results_dir):
    result = cli("run", "--task", "digits-mlp", "--method", "map", "--budget", "ci", "--quiet",
                    "--set", "lr=1e30", "--results-dir", str(results_dir))
    assert result.code == 1
    assert "training loss is nan" in result.stderr
    [run_json] = results_dir.glob("digits-mlp/map/*/run.json")
    record = json.loads(run_json.read_text())
    assert record["status"] == "failed" and "DivergenceError" in record["error"]
    assert not run_json.with_name("metrics.csv").exists()
