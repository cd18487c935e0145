"""Ranks of methods across tasks (`bnnbench.ranking`): average ranks against a hand computation, rank 1 is best
whatever the metric's direction, autorank's Friedman p-value and Nemenyi CD against scipy and Demšar's formulas, the
missing-result report, the UsageErrors of inputs autorank cannot rank, the CD diagram and the report's section."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bnnbench.comparison import BASELINE_COLUMNS
from bnnbench.errors import UsageError
from bnnbench.ranking import AcrossTasks, Gap, cd_figure, rank_across_tasks

# Clean-test nll of four methods on six tasks; the ranks per task are in the comment (1 is the lowest nll).
NLL = {
    "t1": {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4},  # a1 b2 c3 d4
    "t2": {"a": 0.2, "b": 0.1, "c": 0.3, "d": 0.4},  # a2 b1 c3 d4
    "t3": {"a": 0.1, "b": 0.3, "c": 0.2, "d": 0.4},  # a1 b3 c2 d4
    "t4": {"a": 0.1, "b": 0.2, "c": 0.4, "d": 0.3},  # a1 b2 c4 d3
    "t5": {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4},  # a1 b2 c3 d4
    "t6": {"a": 0.3, "b": 0.2, "c": 0.1, "d": 0.4},  # a3 b2 c1 d4
}
HAND_RANKS = {"a": 9 / 6, "b": 12 / 6, "c": 16 / 6, "d": 23 / 6}  # the comments' ranks summed over six tasks


def table_of(values: dict[str, dict[str, float]], metric: str = "nll", failed: tuple[tuple[str, str], ...] = (),
             version: int = 1) -> pd.DataFrame:
    """An `aggregate` table: values[task][method] is the clean-test mean over three seeds; each (task, method) in
    `failed` is a group whose three runs all failed (mean NaN, n 0), as `aggregate` leaves it."""
    rows = []
    for task, by_method in values.items():
        for method, mean in by_method.items():
            rows.append({"task": task, "task_version": version, "data_variant": "standard", "method": method,
                         "config_hash": f"hash-{method}", "split": "test", "corruption": "none", "severity": 0,
                         "metric": metric, "mean": mean, "stderr": 0.01, "n": 3, "n_failed": 0})
    for task, method in failed:
        rows.append({"task": task, "task_version": version, "data_variant": "standard", "method": method,
                     "config_hash": f"hash-{method}", "split": "test", "corruption": "none", "severity": 0,
                     "metric": metric, "mean": math.nan, "stderr": math.nan, "n": 0, "n_failed": 3})
    return pd.DataFrame(rows, columns=BASELINE_COLUMNS)


def without(values: dict[str, dict[str, float]], *pairs: tuple[str, str]) -> dict[str, dict[str, float]]:
    return {task: {m: v for m, v in by_method.items() if (task, m) not in pairs} for task, by_method in values.items()}


def test_average_ranks_equal_the_hand_computation_best_first():
    result = rank_across_tasks(table_of(NLL), "nll")
    assert result.methods == ("a", "b", "c", "d")
    assert result.average_ranks == pytest.approx(HAND_RANKS)
    assert list(result.average_ranks) == ["a", "b", "c", "d"]
    assert result.tasks == tuple(NLL)
    assert result.task_ranks.loc["t6"].to_dict() == {"a": 3.0, "b": 2.0, "c": 1.0, "d": 4.0}
    assert result.task_ranks.mean().to_dict() == pytest.approx(HAND_RANKS)
    assert not result.gaps and not result.dropped_methods and not result.dropped_tasks


# nll: lower is better; acc: higher is better (1 - nll keeps the order of goodness); var_ratio: closer to 1 is
# better, the methods sitting on alternate sides of 1 at the same distances as the nll values.
DIRECTIONS = {"nll": lambda value, index: value, "acc": lambda value, index: 1.0 - value,
              "var_ratio": lambda value, index: 1.0 + value * (-1) ** index}


@pytest.mark.parametrize("metric", sorted(DIRECTIONS))
def test_rank_one_is_the_best_value_whatever_the_metric_direction(metric):
    values = {task: {m: DIRECTIONS[metric](v, i) for i, (m, v) in enumerate(by.items())} for task, by in NLL.items()}
    result = rank_across_tasks(table_of(values, metric), metric)
    assert result.average_ranks == pytest.approx(HAND_RANKS)
    assert result.methods[0] == "a"
    best = {"nll": min, "acc": max, "var_ratio": lambda xs: min(xs, key=lambda x: abs(x - 1.0))}[metric]
    for task in result.tasks:
        winner = result.task_ranks.loc[task].idxmin()
        assert result.task_ranks.loc[task, winner] == 1.0
        assert result.task_values.loc[task, winner] == best(values[task].values())


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_friedman_and_critical_difference_equal_scipy_and_demsars_formula(alpha):
    result = rank_across_tasks(table_of(NLL), "nll", alpha=alpha)
    columns = [[NLL[task][method] for task in NLL] for method in "abcd"]
    scipy_test = stats.friedmanchisquare(*columns)
    k, n = 4, len(NLL)
    # Demšar (2006) eq. for the Friedman statistic from average ranks (no ties in NLL), chi2 with k - 1 df
    chi2 = 12 * n / (k * (k + 1)) * (sum(r ** 2 for r in HAND_RANKS.values()) - k * (k + 1) ** 2 / 4)
    assert chi2 == pytest.approx(11.0)
    assert result.friedman_statistic == pytest.approx(scipy_test.statistic) == pytest.approx(chi2)
    assert result.friedman_pvalue == pytest.approx(scipy_test.pvalue, rel=1e-9)
    assert result.friedman_pvalue == pytest.approx(stats.chi2.sf(chi2, k - 1), rel=1e-9)
    assert result.significant
    q_alpha = stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    assert result.cd == pytest.approx(q_alpha * math.sqrt(k * (k + 1) / (6 * n)), rel=1e-3)  # qsturng: a fit


def test_ties_share_the_mean_rank_and_friedman_corrects_for_them():
    values = {**NLL, "t6": {"a": 0.2, "b": 0.2, "c": 0.1, "d": 0.4}}  # a and b tie for ranks 2 and 3
    result = rank_across_tasks(table_of(values), "nll")
    assert result.task_ranks.loc["t6"].to_dict() == {"a": 2.5, "b": 2.5, "c": 1.0, "d": 4.0}
    expected = {**HAND_RANKS, "a": (9 - 3 + 2.5) / 6, "b": (12 - 2 + 2.5) / 6}
    assert result.average_ranks == pytest.approx(expected)
    columns = [[values[task][method] for task in values] for method in "abcd"]
    assert result.friedman_pvalue == pytest.approx(stats.friedmanchisquare(*columns).pvalue, rel=1e-9)


def test_cliques_join_methods_whose_average_ranks_lie_within_the_cd():
    result = rank_across_tasks(table_of(NLL), "nll")
    assert result.cd == pytest.approx(1.915, abs=2e-3)  # a-d (2.33) and b-d (1.83): only a-d differ
    assert result.cliques == (("a", "b", "c"), ("b", "c", "d"))
    ranks = result.average_ranks
    for clique in result.cliques:
        assert ranks[clique[-1]] - ranks[clique[0]] <= result.cd
    assert ranks["d"] - ranks["a"] > result.cd


def test_a_method_missing_on_one_task_is_reported_with_that_task():
    result = rank_across_tasks(table_of(without(NLL, ("t3", "d"))), "nll")
    # 4 methods on 5 tasks (20 results) keep more than 3 methods on 6 tasks (18): the task goes, reported
    assert result.methods == ("a", "b", "c", "d") and "t3" not in result.tasks and len(result.tasks) == 5
    assert result.gaps == (Gap("t3", "d", failed=False),)
    assert "d" in result.dropped_tasks["t3"] and "failed" not in result.dropped_tasks["t3"]
    assert result.missing_lines() == [f"task t3 left out: {result.dropped_tasks['t3']}"]


def test_a_method_missing_on_most_tasks_is_dropped_and_reported_with_each_task():
    sparse = without(NLL, *(("t" + str(i), "d") for i in range(1, 5)))  # d only on t5 and t6
    result = rank_across_tasks(table_of(sparse), "nll")
    assert result.methods == ("a", "b", "c") and len(result.tasks) == 6
    assert result.dropped_methods == ("d",) and not result.dropped_tasks
    assert result.missing_lines() == ["method d left out: no clean-test nll on t1, t2, t3, t4"]


def test_the_complete_design_keeps_the_most_results_not_the_most_methods():
    eight = {**NLL, "t7": NLL["t1"], "t8": NLL["t2"]}
    values = {task: {**by_method, "e": 0.5} for task, by_method in eight.items()}
    values = without(values, ("t1", "e"), ("t2", "e"), ("t3", "e"))
    result = rank_across_tasks(table_of(values), "nll")
    # 4 methods on 8 tasks (32 results) beat 5 methods on 5 tasks (25)
    assert result.methods == ("a", "b", "c", "d") and len(result.tasks) == 8
    assert result.missing_lines() == ["method e left out: no clean-test nll on t1, t2, t3"]


def test_failed_groups_count_as_missing_and_are_named_failed():
    table = table_of(without(NLL, ("t3", "d")), failed=(("t3", "d"),))
    result = rank_across_tasks(table, "nll")
    assert "t3" not in result.tasks
    assert result.gaps == (Gap("t3", "d", failed=True),)
    assert result.dropped_tasks["t3"] == "lacks a clean-test nll of d (failed)"


def test_older_task_versions_are_reported_not_counted_twice():
    table = pd.concat([table_of(NLL, version=2), table_of({"t1": NLL["t1"]}, version=1)], ignore_index=True)
    result = rank_across_tasks(table, "nll")
    assert len(result.tasks) == 6 and result.average_ranks == pytest.approx(HAND_RANKS)
    assert list(result.dropped_tasks) == ["t1 v1"]


def test_tasks_and_methods_restrict_the_ranking():
    table = table_of({**NLL, "t7": NLL["t1"]})
    result = rank_across_tasks(table, "nll", tasks=list(NLL), methods=["a", "b", "c"])
    assert result.tasks == tuple(NLL) and result.methods == ("a", "b", "c")
    with pytest.raises(UsageError, match="unknown method 'e'"):
        rank_across_tasks(table, "nll", methods=["a", "e"])
    with pytest.raises(UsageError, match="unknown task 't9'"):
        rank_across_tasks(table, "nll", tasks=["t9"])


@pytest.mark.parametrize(("table", "metric", "alpha", "message"), [
    (table_of({t: NLL[t] for t in ("t1", "t2", "t3", "t4")}), "nll", 0.05, "at least 5 tasks .* hold 4: t1, t2"),
    (table_of({t: {"a": v["a"], "b": v["b"]} for t, v in NLL.items()}), "nll", 0.05, "at least 3 methods .* hold 2"),
    (table_of(without(NLL, ("t1", "c"), ("t2", "c"), ("t3", "b"), ("t4", "b"))), "nll", 0.05,
     "largest complete set is"),
    (table_of({t: dict.fromkeys("abcd", 0.5) for t in NLL}), "nll", 0.05, "ties all 4 methods"),
    (table_of(NLL), "ece", 0.05, "unknown metric 'ece'.*valid choices: nll"),
    (table_of(NLL), "nll", 0.95, "alpha 0.95 .* from 0.001 up to"),
    (table_of(NLL).iloc[:0], "nll", 0.05, "table is empty"),
])
def test_inputs_autorank_cannot_rank_are_usage_errors(table, metric, alpha, message):
    with pytest.raises(UsageError, match=message) as caught:
        rank_across_tasks(table, metric, alpha=alpha)
    assert "\n" not in str(caught.value)


def test_frames_for_csv_hold_every_method_and_task():
    result = rank_across_tasks(table_of(NLL), "nll")
    tidy = result.to_frame()
    assert list(tidy.columns) == ["metric", "method", "average_rank", "task", "mean", "rank"]
    assert len(tidy) == 4 * 6 and tidy["method"].iloc[0] == "a"
    assert tidy.groupby("method")["rank"].mean().to_dict() == pytest.approx(HAND_RANKS)
    row = tidy[(tidy["method"] == "c") & (tidy["task"] == "t4")].iloc[0]
    assert (row["mean"], row["rank"]) == (0.4, 4.0)
    wide = result.rank_table()
    assert list(wide.index) == ["a", "b", "c", "d"] and list(wide.columns) == ["average rank", *NLL]
    assert any("Friedman chi2 = 11.000" in line for line in result.summary_lines())


def test_cd_figure_writes_a_png_that_opens(tmp_path):
    import matplotlib.image

    result = rank_across_tasks(table_of(NLL), "nll")
    png = cd_figure(result, tmp_path / "figures" / "cd.png")
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 150 and image.shape[1] > 600 and image.shape[2] in (3, 4)
    assert (image[..., :3] < 0.2).any()  # something was drawn in black


def write_results(root: Path, values: dict[str, dict[str, float]]) -> Path:
    """A results directory of one finished seed per (task, method), without training: run.json and metrics.csv as
    the runner writes them, with clean-test nll, ece and acc."""
    from bnnbench.results import run_directory, write_run

    for task, by_method in values.items():
        for method, nll in by_method.items():
            run_id = f"{task}.v1.{method}.00000000.s0"
            record = {"run_id": run_id, "task": task, "task_version": 1, "method": method, "seed": 0,
                      "config_hash": "0" * 64, "status": "ok", "identity": 2}
            rows = [{"run_id": run_id, "task": task, "task_version": 1, "method": method, "seed": 0, "split": "test",
                     "corruption": "none", "severity": 0, "metric": metric, "value": value}
                    for metric, value in (("nll", nll), ("ece", nll / 10), ("acc", 1 - nll))]
            write_run(run_directory(root, task, method, run_id), record, rows)
    return root


def test_report_draws_the_ranks_across_tasks(tmp_path):
    from bnnbench.report import build_report

    results = write_results(tmp_path / "results", NLL)
    report = build_report(results, tmp_path / "report")
    page = report.page.read_text()
    assert "ranks-across-tasks" in report.sections and "<h2>Ranks across tasks</h2>" in page
    drawn = [image for image in report.images if image.name.startswith("ranks-across-tasks")]
    assert sorted(image.name for image in drawn) == ["ranks-across-tasks-ece.png", "ranks-across-tasks-nll.png"]
    assert all(image.is_file() for image in drawn)
    assert 'src="figures/ranks-across-tasks-nll.png"' in page
    assert "p = 0.0117" in page and "CD = 1.915" in page  # Friedman chi2 11 on 3 df; the Nemenyi CD above
    assert "<td>1.50</td>" in page  # a's average rank in the rank table


def test_report_says_in_one_line_why_it_cannot_rank(tmp_path):
    from bnnbench.report import build_report

    results = write_results(tmp_path / "results", {"t1": NLL["t1"], "t2": NLL["t2"]})
    report = build_report(results, tmp_path / "report")
    page = report.page.read_text()
    assert "ranks-across-tasks" in report.sections
    assert not [image for image in report.images if image.name.startswith("ranks-across-tasks")]
    assert page.count('<p class="missing">Not drawn: ranking methods across tasks needs') == 2  # nll and ece
    assert any(note.startswith("ranks across tasks (nll): ") for note in report.notes)


def test_result_is_a_plain_dataclass():
    result = rank_across_tasks(table_of(NLL), "nll")
    assert isinstance(result, AcrossTasks)
    assert result.diagram().ranks[0] == ("a", pytest.approx(1.5))


def test_compare_across_tasks_prints_the_ranks_and_the_tests(tmp_path, cli):
    results = write_results(tmp_path / "results", without(NLL, ("t6", "d")))
    shown = cli("compare", "--results-dir", str(results), "--across-tasks", "--metric", "nll")
    assert shown.code == 0, shown.stderr
    assert "Friedman chi2" in shown.stdout and "Nemenyi critical difference CD" in shown.stdout
    assert "task t6 left out: lacks a clean-test nll of d" in shown.stdout
    tidy = cli("compare", "--results-dir", str(results), "--across-tasks", "--format", "csv")
    frame = pd.read_csv(io.StringIO(tidy.stdout))
    assert frame.groupby("method")["average_rank"].first().idxmin() == "a"
    refused = cli("compare", "--results-dir", str(results), "--across-tasks", "--against", "a")
    assert refused.code == 2 and "--across-tasks" in refused.stderr
