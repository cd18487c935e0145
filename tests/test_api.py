"""The Python API runs the command line's code path: the same rows, the same skip rule, the same leaderboard."""

from __future__ import annotations

import pandas as pd
import pytest

import bnnbench
from bnnbench.errors import UsageError


def test_run_returns_the_rows_the_cli_writes_and_compare_the_cli_leaderboard(cli, tmp_path):
    rows = bnnbench.run("digits-mlp", "map", seeds=[0, 1], budget="ci", device="cpu", results_dir=tmp_path / "api")
    assert cli("run", "--task", "digits-mlp", "--method", "map", "--seed", "0..1", "--budget", "ci", "--quiet",
               "--device", "cpu", "--results-dir", str(tmp_path / "cli")).code == 0
    written = pd.concat([pd.read_csv(p, dtype={"corruption": str, "split": str})
                         for p in sorted((tmp_path / "cli").glob("*/*/*/metrics.csv"))], ignore_index=True)
    key = ["seed", "split", "corruption", "severity", "metric"]
    pd.testing.assert_frame_equal(rows.sort_values(key, ignore_index=True), written.sort_values(key, ignore_index=True))
    board = bnnbench.compare(tmp_path / "api", task="digits-mlp")
    nll = board[(board["method"] == "map") & (board["column"] == "nll")].iloc[0]
    clean = rows[(rows["split"] == "test") & (rows["corruption"] == "none") & (rows["metric"] == "nll")]["value"]
    assert nll["n"] == 2 and nll["mean"] == pytest.approx(clean.mean())
    cli_board = cli("compare", "--results-dir", str(tmp_path / "cli"), "--format", "csv")
    assert f"{clean.mean():.4f}"[:5] in cli_board.stdout  # the same number on the command line's board


def test_a_finished_seed_is_read_not_re_run_and_bad_input_raises(tmp_path, monkeypatch):
    first = bnnbench.run("digits-mlp", "map", budget="ci", device="cpu", results_dir=tmp_path)

    def must_not_run(*args, **kwargs):
        raise AssertionError("re-ran a finished seed")

    monkeypatch.setattr("bnnbench.runner.run", must_not_run)
    pd.testing.assert_frame_equal(bnnbench.run("digits-mlp", "map", budget="ci", device="cpu", results_dir=tmp_path),
                                  first)
    with pytest.raises(UsageError, match="did you mean 'score-vi'"):
        bnnbench.run("digits-mlp", "scorevi", results_dir=tmp_path)
    runs, metrics = bnnbench.load_results(tmp_path)
    assert len(runs) == 1 and len(metrics) == len(first)


def test_the_api_functions_survive_every_submodule_import():
    import importlib
    import pkgutil

    for module in pkgutil.walk_packages(bnnbench.__path__, "bnnbench."):
        if module.name.endswith("__main__"):
            continue
        importlib.import_module(module.name)
    assert all(callable(getattr(bnnbench, name)) for name in ("run", "compare", "load_results"))
