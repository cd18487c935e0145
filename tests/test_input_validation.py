"""Bad input is refused before any work (issue 19, items 5 and 6): one line naming the bad value and what it must
be, exit 2, nothing written. Task tables are type-checked by `validate`, `--set` and seeds are bounded, and data
files (CIFAR-10-C .npy, forecasting CSVs) are checked when they are loaded, before the first fit."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_data import write_cifar10, write_cifar10c

from bnnbench.cli import parse_seeds
from bnnbench.data import load_data
from bnnbench.data.timeseries import Config, read_series
from bnnbench.errors import UsageError
from bnnbench.package_files import builtin_tasks_dir

CPU = ("--device", "cpu", "--quiet")


def assert_refused(result, results_dir: Path | None, *fragments: str) -> str:
    """Exit 2, one line holding every fragment, no traceback, no result written; returns the line."""
    assert result.code == 2, result
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    if results_dir is not None:
        assert not results_dir.exists() or not any(results_dir.rglob("*")), list(results_dir.rglob("*"))
    return lines[0]


# ------------------------------------------------------------------------------------------ task tables

DIGITS = """name = "{name}"
version = 1
description = "digits with a bad value"
likelihood = "categorical"
[data]
source = "digits"
split_seed = 0
[model]
name = "mlp"
hidden = [16]
[train]
lr = 1e-3
batch_size = 64
[budget]
max_epochs = 1
[eval]
metrics = ["acc", "nll"]
corruptions = "none"
"""


@pytest.mark.parametrize(
    ("old", "new", "fragments"),
    [
        ("lr = 1e-3", 'lr = "fast"', ["'train.lr'", "'fast'", "a finite number"]),
        ("lr = 1e-3", "lr = nan", ["'train.lr'", "nan", "a finite number"]),
        ("lr = 1e-3", "lr = 1e-3\nweight_decay = -inf", ["'train.weight_decay'", "-inf", "a finite number"]),
        ("batch_size = 64", "batch_size = 100000000000000000000", ["'train.batch_size'", "100000000000000000000",
                                                                   "an integer between"]),
        ("batch_size = 64", 'batch_size = "64"', ["'train.batch_size'", "'64'", "an integer"]),
        ("split_seed = 0", 'split_seed = "zero"', ["'data.split_seed'", "'zero'", "an integer"]),
        ("split_seed = 0", "split_seed = 1.5", ["'data.split_seed'", "1.5", "an integer"]),
        ('metrics = ["acc", "nll"]', 'metrics = "acc"', ["'eval.metrics'", "'acc'", "a list of strings"]),
        ('corruptions = "none"', "corruptions = 3", ["'eval.corruptions'", "3", "a string or a list of strings"]),
        ('corruptions = "none"', 'corruptions = "none"\nbatch_size = "big"', ["'eval.batch_size'", "'big'",
                                                                             "an integer"]),
        ('corruptions = "none"', 'corruptions = "none"\nbatch_size = 0', ["'eval.batch_size'", "at least 1"]),
        ("hidden = [16]", "hidden = 16", ["'model.hidden'", "16", "a list of integers"]),
        ("hidden = [16]", 'hidden = [16, "wide"]', ["'model.hidden'", "'wide'", "a list of integers"]),
        ("max_epochs = 1", "max_epochs = 1.5", ["'budget.max_epochs'", "1.5", "an integer"]),
        ("max_epochs = 1", "max_epochs = 1\nmax_seconds = nan", ["'budget.max_seconds'", "nan", "finite"]),
    ],
)
def test_validate_type_checks_every_table(cli, tmp_path, old, new, fragments):
    path = tmp_path / "typo.toml"
    assert old in DIGITS
    path.write_text(DIGITS.format(name="typo").replace(old, new, 1))
    line = assert_refused(cli("validate", str(path)), None, str(path), *fragments)
    assert "must be" in line


def test_a_bad_train_value_fails_in_run_before_anything_is_written(cli, tmp_path, results_dir):
    path = tmp_path / "typo.toml"
    path.write_text(DIGITS.format(name="typo").replace("lr = 1e-3", 'lr = "fast"'))
    result = cli("run", "--task", str(path), "--method", "map", "--results-dir", str(results_dir), *CPU)
    assert_refused(result, results_dir, "'train.lr'", "'fast'")


def test_a_bad_method_table_value_is_refused(cli, tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text(DIGITS.format(name="typo") + "[methods.swag]\nswa_lr = inf\n")
    assert_refused(cli("validate", str(path)), None, "'swa_lr'", "'swag'", "inf", "a finite number")


def test_shipped_tasks_still_validate(cli):
    assert cli("validate").code == 0


def test_hyper_parameters_meet_their_field_annotation_at_the_door_and_their_ranges_when_built():
    from bnnbench.methods import check_spec_overrides, find_method
    from bnnbench.train import TrainConfig

    with pytest.raises(UsageError, match=r"--set: hyper-parameter 'lr' of method 'map' must be a finite number, "
                                         r"got 'fast'"):
        check_spec_overrides(find_method("map")[0], {"lr": "fast"}, "--set")
    with pytest.raises(UsageError, match=r"hyper-parameter 'rank' of method 'swag' must be an integer, got 2\.5"):
        check_spec_overrides(find_method("swag")[0], {"rank": 2.5}, "t.toml")
    with pytest.raises(UsageError, match=r"hyper-parameter 'batch_size' must be at least 1, got 0"):
        TrainConfig(batch_size=0)
    assert check_spec_overrides(find_method("map")[0], {"lr": 1}, "t.toml") == {"lr": 1.0}  # TOML writes 1 for 1.0


# ----------------------------------------------------------------------------------------------- --set


@pytest.mark.parametrize(
    ("assignment", "fragments"),
    [
        ("lr=nan", ["'lr'", "got nan", "a finite number"]),
        ("lr=inf", ["'lr'", "got inf", "a finite number"]),
        ("lr=-inf", ["'lr'", "got -inf", "a finite number"]),
        ("lr=1e400", ["'lr'", "got inf", "a finite number"]),  # TOML reads it as inf
        ("batch_size=100000000000000000000", ["batch_size", "100000000000000000000", "an integer between"]),
        ("weight_decay=-nan", ["'weight_decay'", "got nan", "a finite number"]),
        ("model.hidden=[16, 100000000000]", ["model.hidden", "100000000000", "an integer between"]),
    ],
)
def test_set_refuses_non_finite_and_absurd_values(cli, results_dir, assignment, fragments):
    result = cli("run", "--task", "digits-mlp", "--method", "map", "--budget", "ci", "--set", assignment,
                 "--results-dir", str(results_dir), *CPU)
    assert_refused(result, results_dir, "--set", *fragments)


def test_set_in_a_sweep_grid_is_refused_before_workers_start(cli, results_dir):
    result = cli("sweep", "--tasks", "digits-mlp", "--methods", "map", "--set", "lr=1e-3,nan", "--budget", "ci",
                 "--results-dir", str(results_dir), "--quiet", "--device", "cpu")
    assert_refused(result, results_dir, "--set", "'lr'", "got nan", "a finite number")


# ----------------------------------------------------------------------------------------------- seeds


@pytest.mark.parametrize(
    ("seed", "fragments"),
    [
        ("18446744073709551616", ["18446744073709551616", "0..18446744073709551615"]),  # 2**64
        ("0,18446744073709551616", ["18446744073709551616", "0..18446744073709551615"]),
        ("2**64", ["'2**64'", "an integer or a range"]),
        ("5..2", ["'5..2'", "empty", "2..5"]),
    ],
)
def test_run_refuses_seeds_outside_64_bits(cli, results_dir, seed, fragments):
    result = cli("run", "--task", "digits-mlp", "--method", "map", "--budget", "ci", "--seed", seed,
                 "--results-dir", str(results_dir), *CPU)
    assert_refused(result, results_dir, *fragments)


def test_sweep_refuses_seeds_outside_64_bits(cli, results_dir):
    result = cli("sweep", "--tasks", "digits-mlp", "--methods", "map", "--seeds", "0-2,18446744073709551616",
                 "--budget", "ci", "--results-dir", str(results_dir), "--quiet", "--device", "cpu")
    assert_refused(result, results_dir, "18446744073709551616", "0..18446744073709551615")


def test_the_largest_seed_is_accepted_and_seeds_keep_their_first_order():
    assert parse_seeds(["18446744073709551615"]) == [2**64 - 1]
    assert parse_seeds(["3,1..4", "2", "0-1"]) == [3, 1, 2, 4, 0]
    assert parse_seeds(["7", "7..7", "7"]) == [7]


def test_seed_ranges_parse_in_linear_time():
    start = time.perf_counter()
    seeds = parse_seeds(["0..80000", "40000..80001"])
    elapsed = time.perf_counter() - start
    assert seeds == list(range(80002))
    assert elapsed < 1.0, f"parsing 80,002 seeds took {elapsed:.2f} s"


def test_a_range_of_too_many_seeds_is_refused_without_building_it():
    # in a subprocess with a time limit: a parser that builds the range first would run out of memory or time
    code = "from bnnbench.cli import parse_seeds\nparse_seeds(['0..18446744073709551615'])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "too many seeds" in done.stderr and "1,000,000" in done.stderr


# ------------------------------------------------------------------------------------------ CIFAR-10-C

N_TEST = 12


@pytest.fixture
def cifar_root(tmp_path) -> Path:
    """CIFAR-10 (1 training batch of 100, 12 test images) and official gaussian_noise and fog files."""
    root = tmp_path / "data"
    written = write_cifar10(root, batches=(1,), n=100, n_test=N_TEST)
    write_cifar10c(root, ["gaussian_noise", "fog"], n=N_TEST, labels=written["test_labels"])
    return root


BAD_CORRUPTION_FILES = [
    (np.zeros((5 * N_TEST, 32, 32, 1), np.uint8), ["uint8 (60, 32, 32, 1)", "(60, 32, 32, 3)"]),
    (np.zeros((5 * N_TEST, 32, 32, 3), np.float32), ["float32 (60, 32, 32, 3)", "uint8 of shape (60, 32, 32, 3)"]),
    (np.zeros((5 * N_TEST + 5, 32, 32, 3), np.uint8), ["uint8 (65, 32, 32, 3)", "(60, 32, 32, 3)", "labels.npy"]),
    (np.zeros((5 * N_TEST + 1, 32, 32, 3), np.uint8), ["uint8 (61, 32, 32, 3)", "(60, 32, 32, 3)", "labels.npy"]),
]


@pytest.mark.parametrize(("array", "fragments"), BAD_CORRUPTION_FILES)
def test_cifar10c_files_are_checked_when_the_data_load(cifar_root, array, fragments):
    path = cifar_root / "CIFAR-10-C" / "fog.npy"
    np.save(path, array)
    with pytest.raises(UsageError) as error:
        load_data({"source": "cifar10"}, root=cifar_root)
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_a_pickled_cifar10c_file_is_refused_without_unpickling(cifar_root):
    path = cifar_root / "CIFAR-10-C" / "fog.npy"
    np.save(path, np.array([{"not": "images"}] * 60, dtype=object), allow_pickle=True)
    with pytest.raises(UsageError, match=r"fog\.npy: not a numpy \.npy array"):
        load_data({"source": "cifar10"}, root=cifar_root)


def test_a_bad_cifar10c_file_stops_run_before_training(cli, cifar_root, tmp_path, results_dir):
    np.save(cifar_root / "CIFAR-10-C" / "fog.npy", np.zeros((5 * N_TEST, 32, 32, 3), np.float32))
    task = tmp_path / "cifar10-tiny.toml"
    task.write_text(f'include = "{builtin_tasks_dir() / "cifar10-vit.toml"}"\nname = "cifar10-tiny"\nversion = 1\n'
                    '[model]\nname = "vit"\npatch_size = 8\nembed_dim = 16\ndepth = 1\nnum_heads = 2\n'
                    '[eval]\ncorruptions = ["gaussian_noise", "fog"]\nseverities = [1]\n')
    result = cli("run", "--task", str(task), "--method", "map", "--budget", "ci", "--data-dir", str(cifar_root),
                 "--results-dir", str(results_dir), *CPU)
    assert_refused(result, results_dir, "fog.npy", "float32 (60, 32, 32, 3)", "uint8")


# ----------------------------------------------------------------------------------- forecasting CSVs

ROWS = 120


def write_ettm1(root: Path, bad_row: int | None = None, bad_value: object = None) -> Path:
    """An ETTm1.csv in the release's layout (date, HUFL, ..., OT), with `bad_value` in OT at 0-based `bad_row`."""
    t = np.arange(ROWS)
    target: list[object] = list(20 + 5 * np.sin(2 * np.pi * t / 24))
    if bad_row is not None:
        target[bad_row] = bad_value
    frame = pd.DataFrame({"date": pd.date_range("2016-07-01", periods=ROWS, freq="15min").strftime("%Y-%m-%d %H:%M:%S"),
                          "HUFL": np.ones(ROWS), "OT": target})
    (root / "ltsf").mkdir(parents=True, exist_ok=True)
    path = root / "ltsf" / "ETTm1.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("bad_value", "shown"),
    [(float("nan"), "nan"), ("", "nan"), (float("inf"), "inf"), (float("-inf"), "-inf"), ("n/a?", "'n/a?'"),
     ("12,5", "'12,5'")],
)
def test_ltsf_target_must_be_finite_numbers(tmp_path, bad_value, shown):
    path = write_ettm1(tmp_path, bad_row=41, bad_value=bad_value)
    with pytest.raises(UsageError) as error:
        read_series(Config(dataset="ETTm1", context_length=8, prediction_length=4), tmp_path)
    message = str(error.value)
    assert "\n" not in message
    for fragment in (str(path), "column 'OT'", "data row 42", "2016-07-01 10:15:00", f"holds {shown}"):
        assert fragment in message, message


def test_a_good_ltsf_csv_still_reads(tmp_path):
    write_ettm1(tmp_path)
    [series] = read_series(Config(dataset="ETTm1", context_length=8, prediction_length=4), tmp_path)
    assert series.values.dtype == np.float64 and np.isfinite(series.values).all() and len(series.values) == ROWS


def test_a_nan_in_the_csv_stops_run_before_training(cli, tmp_path, results_dir):
    write_ettm1(tmp_path / "data", bad_row=100, bad_value=float("nan"))
    task = tmp_path / "ettm1-tiny.toml"
    task.write_text(f'include = "{builtin_tasks_dir() / "ts-co2-mlp.toml"}"\nname = "ettm1-tiny"\nversion = 1\n'
                    '[data]\nsource = "timeseries"\ndataset = "ETTm1"\ncontext_length = 8\nprediction_length = 4\n'
                    'test_windows = 2\nval_windows = 1\nseasonality = 4\n'
                    '[model]\nname = "forecast-mlp"\nhidden = [8]\n')
    result = cli("run", "--task", str(task), "--method", "map", "--budget", "ci", "--data-dir", str(tmp_path / "data"),
                 "--results-dir", str(results_dir), *CPU)
    assert_refused(result, results_dir, "ETTm1.csv", "column 'OT'", "data row 101", "holds nan")
