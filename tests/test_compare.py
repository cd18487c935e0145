"""Aggregation, leaderboards and every mark of the regression check, on hand-made frames."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bnnbench import tomlfile
from bnnbench.comparison import (
    DEFAULT_CHECK,
    CheckConfig,
    Tolerance,
    aggregate,
    check,
    check_failed,
    leaderboard,
    load_baseline,
    load_check_config,
)
from bnnbench.errors import UsageError

CONFIG = CheckConfig(gate=("nll", "ece"), sigmas=2.0,
                     tolerances={"nll": Tolerance(0.01, 0.05), "ece": Tolerance(0.005, 0.0), "acc": Tolerance(0.01)})


def runs_and_metrics(values: dict[tuple[str, str], list[float]], status=None, version=1, config="aaa"):
    """Runs of method m on task t: values[(method, metric)] lists one value per seed."""
    runs, metrics = [], []
    for (method, metric), seeds in values.items():
        for seed, value in enumerate(seeds):
            run_id = f"t.{method}.s{seed}"
            state = (status or {}).get((method, seed), "ok")
            if not any(r["run_id"] == run_id for r in runs):
                runs.append({"run_id": run_id, "task": "t", "task_version": version, "method": method,
                             "config_hash": config, "seed": seed, "status": state, "fit_seconds": 1.0 + seed,
                             "peak_rss_mb": 100.0})
            if state == "ok":
                metrics.append({"run_id": run_id, "task": "t", "task_version": version, "method": method,
                                "seed": seed, "split": "test", "corruption": "none", "severity": 0,
                                "metric": metric, "value": value, "config_hash": config, "status": state})
    return pd.DataFrame(runs), pd.DataFrame(metrics)


def test_aggregate_mean_stderr_n():
    table = aggregate(*runs_and_metrics({("m", "nll"): [0.1, 0.2, 0.6]}))
    row = table.iloc[0]
    assert row["mean"] == pytest.approx(0.3)
    assert row["stderr"] == pytest.approx(np.std([0.1, 0.2, 0.6], ddof=1) / math.sqrt(3))
    assert (row["n"], row["n_failed"]) == (3, 0)


def marks(base_values, new_values, **kwargs):
    base_kwargs = {k[5:]: v for k, v in kwargs.items() if k.startswith("base_")}
    new_kwargs = {k[4:]: v for k, v in kwargs.items() if k.startswith("new_")}
    base = aggregate(*runs_and_metrics(base_values, **base_kwargs))
    new = aggregate(*runs_and_metrics(new_values, **new_kwargs))
    result = check(base, new, CONFIG)
    return dict(zip(result["metric"], result["mark"], strict=True)), result


def test_unchanged_within_tolerance():
    found, result = marks({("m", "nll"): [0.50, 0.51, 0.49]}, {("m", "nll"): [0.52, 0.51, 0.50]})
    assert found == {"nll": " "}
    assert not check_failed(result)


def test_worse_beyond_tolerance_and_interval_is_a_regression():
    found, result = marks({("m", "nll"): [0.50, 0.51, 0.49]}, {("m", "nll"): [0.60, 0.61, 0.59]})
    assert found == {"nll": "+"}
    assert check_failed(result)


def test_direction_higher_is_better():
    worse, _ = marks({("m", "acc"): [0.90, 0.91, 0.89]}, {("m", "acc"): [0.80, 0.81, 0.79]})
    better, _ = marks({("m", "acc"): [0.80, 0.81, 0.79]}, {("m", "acc"): [0.90, 0.91, 0.89]})
    assert worse == {"acc": "+"} and better == {"acc": "-"}


def test_regression_on_ungated_metric_does_not_fail():
    _, result = marks({("m", "acc"): [0.90, 0.91, 0.89]}, {("m", "acc"): [0.80, 0.81, 0.79]})
    assert not check_failed(result)


def test_better_is_minus():
    found, result = marks({("m", "nll"): [0.60, 0.61, 0.59]}, {("m", "nll"): [0.50, 0.51, 0.49]})
    assert found == {"nll": "-"}
    assert not check_failed(result)


def test_overlapping_intervals_are_not_significant():
    found, result = marks({("m", "nll"): [0.3, 0.5, 0.7]}, {("m", "nll"): [0.4, 0.6, 0.8]})
    assert found == {"nll": "~"}
    assert not check_failed(result)


def test_single_seed_uses_tolerance_alone():
    found, _ = marks({("m", "nll"): [0.5]}, {("m", "nll"): [0.6]})
    assert found == {"nll": "+"}


def test_newly_failing_is_bang_and_fails():
    found, result = marks({("m", "nll"): [0.5, 0.5]}, {("m", "nll"): [0.5, 0.5]}, new_status={("m", 1): "failed"})
    assert found == {"nll": "!"}
    assert check_failed(result)


def test_all_runs_failing_is_bang():
    found, result = marks({("m", "nll"): [0.5, 0.5]}, {("m", "nll"): [0.5, 0.5]},
                          new_status={("m", 0): "failed", ("m", 1): "failed"})
    assert found == {"nll": "!"}
    assert check_failed(result)


def test_fixed_is_star():
    found, result = marks({("m", "nll"): [0.5, 0.5]}, {("m", "nll"): [0.5, 0.5]},
                          base_status={("m", 0): "failed", ("m", 1): "failed"})
    assert set(found.values()) == {"*"}
    assert not check_failed(result)


def test_other_task_version_or_configuration_is_not_comparable():
    version, result = marks({("m", "nll"): [0.5]}, {("m", "nll"): [0.9]}, new_version=2)
    config, _ = marks({("m", "nll"): [0.5]}, {("m", "nll"): [0.9]}, new_config="bbb")
    assert version == {"nll": "x"} and config == {"nll": "x"}
    assert not check_failed(result)


def test_missing_from_new_results():
    base = aggregate(*runs_and_metrics({("m", "nll"): [0.5]}))
    new = aggregate(*runs_and_metrics({("other", "nll"): [0.5]}))
    assert list(check(base, new, CONFIG)["mark"]) == ["?"]


def test_relative_tolerance():
    assert Tolerance(abs=0.01, rel=0.05).of(2.0) == pytest.approx(0.1)
    found, _ = marks({("m", "nll"): [2.0]}, {("m", "nll"): [2.09]})
    assert found == {"nll": " "}


def test_leaderboard_ranks_best_and_costs():
    runs, metrics = runs_and_metrics({("good", "nll"): [0.1, 0.2], ("bad", "nll"): [0.5, 0.6],
                                      ("good", "acc"): [0.9, 0.9], ("bad", "acc"): [0.95, 0.97]})
    board = leaderboard(runs, aggregate(runs, metrics))
    cell = board.set_index(["method", "column"])
    assert cell.loc[("good", "nll"), "best"] and not cell.loc[("bad", "nll"), "best"]
    assert cell.loc[("bad", "acc"), "best"]
    assert cell.loc[("good", "nll"), "mean"] == pytest.approx(0.15)
    assert cell.loc[("good", "fit s"), "mean"] == pytest.approx(1.5)
    assert cell.loc[("good", "nll"), "rank"] == pytest.approx(1.5)  # 1st in nll, 2nd in acc


def test_repository_check_settings_equal_packaged_defaults():
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    assert load_check_config(pyproject) == DEFAULT_CHECK
    table = tomlfile.loads(pyproject.read_text())["tool"]["bnnbench"]["check"]
    assert tuple(table["gate"]) == ("nll", "ece")


def test_baseline_with_missing_columns_is_rejected(tmp_path):
    path = tmp_path / "base.csv"
    path.write_text("task,method,metric,mean\nt,m,nll,0.5\n")
    with pytest.raises(UsageError, match="lacks columns task_version, config_hash"):
        load_baseline(path)


def test_data_variants_never_mix_in_aggregates_or_the_check():
    """Official and generated CIFAR-10-C runs of one task version: separate groups, never compared."""
    official_runs, official_metrics = runs_and_metrics({("m", "nll"): [0.5, 0.5]})
    generated_runs, generated_metrics = runs_and_metrics({("m", "nll"): [0.9, 0.9]})
    generated_runs["run_id"] = generated_metrics["run_id"] = generated_runs["run_id"] + ".gen"
    official_runs["data_variant"], generated_runs["data_variant"] = "c-official", "c-generated"
    official_metrics["data_variant"], generated_metrics["data_variant"] = "c-official", "c-generated"
    table = aggregate(pd.concat([official_runs, generated_runs]), pd.concat([official_metrics, generated_metrics]))
    assert dict(zip(table["data_variant"], table["mean"], strict=True)) == {"c-official": 0.5, "c-generated": 0.9}
    result = check(table[table["data_variant"] == "c-official"], table[table["data_variant"] == "c-generated"],
                   CONFIG)
    assert result["mark"].tolist() == ["?"]
    board = leaderboard(pd.concat([official_runs, generated_runs]), table)
    assert sorted(board[board["column"] == "nll"]["data_variant"]) == ["c-generated", "c-official"]


def test_a_rerun_matches_a_baseline_rounded_to_its_written_digits():
    """A metric with no configured tolerance still matches its own re-run: the baseline file keeps 6 significant
    digits, and a difference inside that rounding is no change; one just outside is."""
    from bnnbench.comparison import Tolerance

    assert Tolerance().of(14.7132) == pytest.approx(5e-5)
    assert Tolerance().of(0.000712345) == pytest.approx(5e-10)
    assert Tolerance().of(0.0) == 0.0
    assert abs(14.71318 - 14.7132) <= Tolerance().of(14.7132) < abs(14.71326 - 14.7132)


def test_pivot_by_task_and_latex_show_the_per_task_leaderboard_numbers(cli, results_dir):
    """Written results (the pivot reads what runs wrote; training them cost this test 19 s of make test)."""
    import io

    import pandas as pd

    from bnnbench.results import make_run_id, run_directory, write_run

    nll = {("digits-mlp", "map"): (0.31, 0.33), ("digits-mlp", "swag"): (0.27, 0.30),
           ("ts-co2-mlp", "map"): (2.5, 2.7), ("ts-co2-mlp", "swag"): (2.9, 2.6)}
    for (task, method), values in nll.items():
        for seed, value in enumerate(values):
            run_id = make_run_id(task, 1, method, "abcdef0123", seed)
            record = {"run_id": run_id, "task": task, "task_version": 1, "method": method, "seed": seed,
                      "status": "ok", "config_hash": "abcdef0123", "identity": 2, "fit_seconds": 1.0}
            rows = [{"run_id": run_id, "task": task, "task_version": 1, "method": method, "seed": seed,
                     "split": "test", "corruption": "none", "severity": 0, "metric": "nll", "value": value}]
            write_run(run_directory(results_dir, task, method, run_id), record, rows)
    per_task = pd.read_csv(io.StringIO(cli("compare", "--results-dir", str(results_dir), "--metric", "nll",
                                           "--format", "csv").stdout))
    pivoted = pd.read_csv(io.StringIO(cli("compare", "--results-dir", str(results_dir), "--metric", "nll",
                                          "--pivot", "task", "--format", "csv").stdout))
    for row in per_task[per_task["column"] == "nll"].itertuples():
        [match] = pivoted[(pivoted["method"] == row.method) & (pivoted["column"] == row.task)]["mean"]
        assert match == row.mean
    latex = cli("compare", "--results-dir", str(results_dir), "--metric", "nll", "--pivot", "task",
                "--format", "latex").stdout
    assert r"\toprule" in latex and "ts-co2-mlp" in latex and r"$\pm$" in latex and r"\textbf{" in latex
    best = per_task[(per_task["column"] == "nll") & per_task["best"] & (per_task["task"] == "digits-mlp")]
    assert f"{best['mean'].item():.4f}" in latex
    refused = cli("compare", "--results-dir", str(results_dir), "--pivot", "task")
    assert refused.code == 2 and "exactly one --metric" in refused.stderr
