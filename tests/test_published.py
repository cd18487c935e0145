"""Published figures in `bnnbench compare`: the tables are checked strictly, the shipped one holds the paper's nine
numbers, and compare shows them as marked, unranked reference rows in every format without touching the runs' ranks,
the baseline or the check."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd
import pytest

from bnnbench.comparison import aggregate, leaderboard, with_published
from bnnbench.errors import UsageError
from bnnbench.published import load_published, shipped_tables
from bnnbench.render import leaderboard_html
from bnnbench.results import load_results, make_run_id, run_directory, write_run

FOOTNOTE = "† Kim 2026, score-based variational inference: third-party extraction; backbone, horizon and method not " \
           "stated — not a bnnbench run"
LABEL = "Kim 2026 (published)†"

# Tiny: one figure on task "t", better than every run, so a ranked or "best" figure would show in the runs' ranks
TINY_TABLE = """
source = "Paper 2026"
label = "Paper 2026"
provenance = "read off a figure"

[[figure]]
dataset = "tiny"
tasks = ["t"]
measure = "error rate"
value = 1.0
unit = "%"
metric = "acc"
"""


def write_results(results_dir: Path, task: str, methods: dict[str, dict[str, list[float]]]) -> None:
    """Runs as bnnbench writes them: methods[method][metric] lists one clean-test value per seed."""
    for method, metrics in methods.items():
        for seed in range(len(next(iter(metrics.values())))):
            run_id = make_run_id(task, 1, method, "abcdef0123", seed)
            record = {"run_id": run_id, "task": task, "task_version": 1, "method": method, "seed": seed,
                      "status": "ok", "config_hash": "abcdef0123", "identity": 2, "fit_seconds": 10.0 + seed,
                      "peak_rss_mb": 500.0}
            rows = [{"run_id": run_id, "task": task, "task_version": 1, "method": method, "seed": seed,
                     "split": "test", "corruption": "none", "severity": 0, "metric": metric, "value": values[seed]}
                    for metric, values in metrics.items()]
            write_run(run_directory(results_dir, task, method, run_id), record, rows)


RUNS = {"map": {"acc": [0.90, 0.91, 0.905], "nll": [0.40, 0.42, 0.41]},
        "score-vi": {"acc": [0.93, 0.925, 0.935], "nll": [0.30, 0.31, 0.29]}}


@pytest.fixture
def tiny_table(tmp_path) -> Path:
    path = tmp_path / "paper.toml"
    path.write_text(TINY_TABLE)
    return path


def csv_board(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), keep_default_na=True)


# --- the shipped table ---------------------------------------------------------------------------------------------

def test_the_shipped_table_holds_the_nine_published_figures_as_printed():
    [path] = shipped_tables()
    table = load_published(path)
    assert table.source == "Kim 2026, score-based variational inference"
    assert table.provenance == "third-party extraction; backbone, horizon and method not stated"
    printed = {figure.dataset: (figure.measure, figure.value, figure.unit, figure.metric) for figure in table.figures}
    assert printed == {
        "pets": ("error rate", 7.746, "%", "acc"), "flowers": ("error rate", 11.97, "%", "acc"),
        "aircraft": ("error rate", 44.196, "%", "acc"), "dtd": ("error rate", 32.498, "%", "acc"),
        "etth2": ("mse", 0.2375, "", "mse_std"), "ecl": ("mse", 0.1228, "", "mse_std"),
        "traffic": ("mse", 0.429, "", "mse_std"), "weather": ("mse", 0.1265, "", "mse_std"),
        "ili": ("mae", 0.8862, "", "mae_std")}
    tasks = {figure.dataset: figure.tasks for figure in table.figures}
    for dataset in ("pets", "flowers", "aircraft", "dtd"):
        assert tasks[dataset] == (f"{dataset}-vitl32", f"{dataset}-resnet101")
    for dataset in ("etth2", "ecl", "traffic", "weather", "ili"):
        assert tasks[dataset] == (f"{dataset}-koopa",)
    shown = {figure.dataset: figure.shown for figure in table.figures}
    assert shown["pets"] == pytest.approx(0.92254) and shown["aircraft"] == pytest.approx(0.55804)
    assert shown["traffic"] == 0.429 and shown["ili"] == 0.8862  # MSE and MAE are shown as printed


def test_the_shipped_table_is_not_taken_for_a_task():
    from bnnbench.tasks import list_tasks

    [path] = shipped_tables()
    assert path.parent.name == "references" and path.stem not in list_tasks()


# --- checking a table ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("edit", "says"), [
    (('metric = "acc"', 'metric = "error"'), "is shown as metric 'acc', not 'error'"),
    (('metric = "acc"', 'metrc = "acc"'), "unknown figure key 'metrc' (did you mean 'metric'?)"),
    (("value = 1.0", ""), "lacks value; a figure needs dataset, tasks, measure, value, unit, metric"),
    (("value = 1.0", 'value = "1.0"'), "value '1.0' is not a finite number"),
    (("value = 1.0", "value = nan"), "value nan is not a finite number"),
    (("value = 1.0", "value = true"), "value True is not a finite number"),
    (('unit = "%"', 'unit = ""'), "no known way to show measure 'error rate' in unit ''"),
    (('tasks = ["t"]', "tasks = []"), "tasks must be a non-empty list of task names"),
    (('provenance = "read off a figure"', ""), "provenance must be a non-empty string"),
    (('label = "Paper 2026"', 'label = "Paper 2026"\nlabels = "x"'), "unknown key 'labels' (did you mean 'label'?)"),
    (('metric = "acc"\n', 'metric = "acc"\n\n' + TINY_TABLE[TINY_TABLE.index("[[figure]]"):]),
     "figures tiny and tiny both give acc of task t"),
])
def test_a_bad_table_is_one_line_naming_the_key(tmp_path, edit, says):
    path = tmp_path / "paper.toml"
    old, new = edit
    assert old in TINY_TABLE
    path.write_text(TINY_TABLE.replace(old, new, 1))
    with pytest.raises(UsageError) as raised:
        load_published(path)
    message = str(raised.value)
    assert says in message and message.startswith(str(path)) and "\n" not in message


def test_an_unreadable_table_is_one_line(tmp_path):
    path = tmp_path / "paper.toml"
    path.write_text("source = \n")
    with pytest.raises(UsageError, match=r"cannot read published figures .*paper\.toml': ") as raised:
        load_published(path)
    assert "\n" not in str(raised.value)


def test_a_figure_in_a_metric_bnnbench_lacks_is_refused(tmp_path):
    path = tmp_path / "paper.toml"
    path.write_text(TINY_TABLE.replace('measure = "error rate"', 'measure = "accuracy"')
                    .replace('unit = "%"', 'unit = ""').replace('metric = "acc"', 'metric = "accuracy"'))
    with pytest.raises(UsageError, match=r"paper\.toml: figure 1 \(tiny\): unknown metric 'accuracy'.*; valid choices: "
                                         r"acc, ") as raised:
        load_published(path)
    assert "\n" not in str(raised.value)
    path.write_text(TINY_TABLE.replace('measure = "error rate"', 'measure = "nll"')
                    .replace('unit = "%"', 'unit = ""').replace('metric = "acc"', 'metric = "nll"'))
    [figure] = load_published(path).figures  # a metric's own name, unitless: shown as printed
    assert (figure.metric, figure.shown, figure.formula) == ("nll", 1.0, "")


# --- compare -------------------------------------------------------------------------------------------------------

def test_compare_shows_the_figure_as_an_unranked_marked_row_and_keeps_the_runs_ranks(cli, results_dir, tiny_table):
    write_results(results_dir, "t", RUNS)
    common = ("compare", "--results-dir", str(results_dir), "--format", "csv")
    shown = csv_board(cli(*common, "--published-table", str(tiny_table)).stdout)
    plain = csv_board(cli(*common, "--no-published").stdout)
    assert "kind" not in plain
    published = shown[shown["kind"] == "published"]
    assert list(published["method"]) == ["Paper 2026 (published)†"] and list(published["column"]) == ["acc"]
    [row] = published.itertuples()
    assert row.mean == pytest.approx(0.99) and not row.best
    assert math.isnan(row.rank) and math.isnan(row.stderr) and math.isnan(row.n)  # no rank, no seeds
    assert row.note.startswith("† Paper 2026: read off a figure — not a bnnbench run")
    runs = shown[shown["kind"] == "run"].drop(columns=["kind", "note"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(runs, plain, check_dtype=False)  # the runs' ranks, bests, n: as without it
    assert set(shown.loc[(shown["column"] == "acc") & shown["best"], "method"]) == {"score-vi"}

    table = cli("compare", "--results-dir", str(results_dir), "--published-table", str(tiny_table))
    assert table.code == 0 and "Paper 2026 (published)†" in table.stdout and "not a bnnbench run" in table.stdout


def test_the_shipped_figures_are_shown_by_default_for_the_tasks_they_name(cli, results_dir):
    write_results(results_dir, "pets-vitl32", RUNS)
    write_results(results_dir, "digits-mlp", {"map": {"acc": [0.95, 0.96], "nll": [0.2, 0.21]}})
    markdown = cli("compare", "--results-dir", str(results_dir), "--format", "markdown").stdout
    pets, digits = markdown.split("### digits-mlp v1")[1].split("### pets-vitl32 v1")[::-1]
    assert f"| *{LABEL}* | *0.9225* |" in pets and FOOTNOTE in pets and "(error rate 7.746 %)" in pets
    assert "published" not in digits and "†" not in digits  # a task the table does not name: no reference row
    table = cli("compare", "--results-dir", str(results_dir), "--task", "pets-vitl32")
    assert LABEL in table.stdout and "not a bnnbench run" in table.stdout
    hidden = cli("compare", "--results-dir", str(results_dir), "--task", "pets-vitl32", "--no-published")
    assert hidden.code == 0 and "published" not in hidden.stdout and "†" not in hidden.stdout
    refused = cli("compare", "--results-dir", str(results_dir), "--no-published", "--published-table", "x.toml")
    assert refused.code == 2 and "--no-published" in refused.stderr


def test_a_task_the_table_does_not_name_gets_no_row_and_the_same_output(cli, results_dir, tiny_table):
    write_results(results_dir, "u", RUNS)
    for format_ in ("csv", "markdown", "latex"):
        common = ("compare", "--results-dir", str(results_dir), "--format", format_)
        assert cli(*common, "--published-table", str(tiny_table)).stdout == cli(*common, "--no-published").stdout


def test_a_metric_filter_leaves_out_figures_of_other_metrics(cli, results_dir, tiny_table):
    write_results(results_dir, "t", RUNS)
    board = csv_board(cli("compare", "--results-dir", str(results_dir), "--metric", "nll", "--format", "csv",
                          "--published-table", str(tiny_table)).stdout)
    assert "kind" not in board and "published" not in " ".join(board["method"])


def test_markdown_latex_html_and_the_task_pivot_carry_the_marker(cli, results_dir, tiny_table):
    write_results(results_dir, "t", RUNS)
    args = ("compare", "--results-dir", str(results_dir), "--published-table", str(tiny_table))
    markdown = cli(*args, "--format", "markdown").stdout
    assert "| *Paper 2026 (published)†* | *0.9900* |  |" in markdown
    assert "\n\n† Paper 2026: read off a figure — not a bnnbench run" in markdown
    latex = cli(*args, "--format", "latex").stdout
    assert r"\midrule" + "\n" + r"\textit{Paper 2026 (published)\textsuperscript{\dag}} & \textit{0.9900}" in latex
    assert r"{\footnotesize \textsuperscript{\dag} Paper 2026: read off a figure --- not a bnnbench run" in latex
    assert "†" not in latex and "—" not in latex

    runs, metrics = load_results(results_dir)
    board = with_published(leaderboard(runs, aggregate(runs, metrics)), [load_published(tiny_table)])
    page = leaderboard_html(board)
    assert '<tr class="published"><th>Paper 2026 (published)†</th><td><em>0.9900</em></td>' in page
    assert "<tfoot>" in page and "† Paper 2026: read off a figure — not a bnnbench run" in page

    pivot = csv_board(cli(*args, "--pivot", "task", "--metric", "acc", "--format", "csv").stdout)
    ranks = dict(zip(pivot["method"], pivot["rank"], strict=True))
    assert ranks["score-vi"] == 1 and ranks["map"] == 2 and math.isnan(ranks["Paper 2026 (published)†"])


def test_check_and_baseline_never_see_published_figures(cli, results_dir, tmp_path):
    write_results(results_dir, "pets-vitl32", RUNS)
    baseline = tmp_path / "baseline.csv"
    assert cli("baseline", "--results-dir", str(results_dir), "--out", str(baseline)).code == 0
    written = pd.read_csv(baseline)
    assert set(written["method"]) == {"map", "score-vi"} and set(written["n"]) == {3}
    checked = cli("check", "--baseline", str(baseline), "--results-dir", str(results_dir))
    assert checked.code == 0 and "published" not in checked.stdout and "Kim" not in checked.stdout
    # compare's CSV, which does hold the published rows, is not a baseline: check refuses it whole
    board = tmp_path / "board.csv"
    board.write_text(cli("compare", "--results-dir", str(results_dir), "--format", "csv").stdout)
    assert "published" in board.read_text()
    refused = cli("check", "--baseline", str(board), "--results-dir", str(results_dir))
    assert refused.code == 2 and "lacks columns" in refused.stderr
