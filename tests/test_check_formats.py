"""`bnnbench check --format junit|markdown|github`: on one small baseline holding every kind of row, each format
counts what the check decided (failures are the gate's failures, nothing more), and the CLI's exit code is the
same in every format."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from junitparser import Failure, JUnitXml, Skipped

from bnnbench.check_formats import FAILURE, SKIPPED, Verdict, check_github, check_junit, check_markdown, tally, verdict
from bnnbench.comparison import CheckConfig, Tolerance, aggregate, check, check_failed, summary_rows
from bnnbench.results import IDENTITY, run_directory, write_run

CONFIG = CheckConfig(gate=("nll", "ece"), sigmas=2.0,
                     tolerances={"nll": Tolerance(0.01, 0.05), "ece": Tolerance(0.005, 0.0), "acc": Tolerance(0.01)})
PYPROJECT = """\
[tool.bnnbench.check]
gate = ["nll", "ece"]
sigmas = 2.0
tolerance.nll = { abs = 0.01, rel = 0.05 }
tolerance.ece = { abs = 0.005, rel = 0.0 }
tolerance.acc = { abs = 0.01, rel = 0.0 }
"""

# (task, method): {metric: one value per seed}, plus failed seeds, configuration and task version
BASELINE_GROUPS = {
    ("t", "steady"): {"nll": [0.50, 0.51, 0.49]},
    ("t", "worse"): {"nll": [0.50, 0.51, 0.49], "acc": [0.90, 0.91, 0.89]},
    ("t", "noisy"): {"nll": [0.3, 0.5, 0.7]},
    ("t", "broken"): {"nll": [0.5, 0.5]},
    ("u", "better"): {"nll": [0.60, 0.61, 0.59]},
    ("u", "retuned"): {"nll": [0.5]},
    ("u", "gone"): {"nll": [0.5]},
}
NEW_GROUPS = {
    ("t", "steady"): {"nll": [0.52, 0.51, 0.50]},  # ' ' within tolerance
    ("t", "worse"): {"nll": [0.60, 0.61, 0.59], "acc": [0.80, 0.81, 0.79]},  # '+' gated nll, '+' ungated acc
    ("t", "noisy"): {"nll": [0.4, 0.6, 0.8]},  # '~' within the seeds' intervals
    ("t", "broken"): {"nll": [0.5, 0.5]},  # '!' seed 1 fails (FAILED_SEEDS)
    ("u", "better"): {"nll": [0.50, 0.51, 0.49]},  # '-'
    ("u", "retuned"): {"nll": [0.9]},  # 'x' another configuration (CONFIGS)
}  # ("u", "gone"): '?' missing
FAILED_SEEDS = {("t", "broken"): {1}}
CONFIGS = {("u", "retuned"): "bbb"}
EXPECTED_MARKS = {("t", "steady", "nll"): " ", ("t", "worse", "nll"): "+", ("t", "worse", "acc"): "+",
                  ("t", "noisy", "nll"): "~", ("t", "broken", "nll"): "!", ("u", "better", "nll"): "-",
                  ("u", "retuned", "nll"): "x", ("u", "gone", "nll"): "?"}


def runs_and_metrics(groups, failed=None, configs=None):
    """run.json records and metric rows of `groups`, as `load_results` would return them."""
    runs, metrics = [], []
    for (task, method), values in groups.items():
        seeds = max(len(per_seed) for per_seed in values.values())
        for seed in range(seeds):
            run_id = f"{task}.v1.{method}.s{seed}"
            status = "failed" if seed in (failed or {}).get((task, method), ()) else "ok"
            runs.append({"run_id": run_id, "task": task, "task_version": 1, "method": method, "seed": seed,
                         "config_hash": (configs or {}).get((task, method), "aaa"), "status": status,
                         "identity": IDENTITY, "fit_seconds": 1.0})
            if status == "ok":
                metrics += [{"run_id": run_id, "task": task, "task_version": 1, "method": method, "seed": seed,
                             "split": "test", "corruption": "none", "severity": 0, "metric": metric,
                             "value": per_seed[seed]} for metric, per_seed in values.items()]
    return runs, metrics


def as_frames(runs, metrics):
    runs_frame, metrics_frame = pd.DataFrame(runs), pd.DataFrame(metrics)
    status = runs_frame[["run_id", "config_hash", "status"]]
    return runs_frame, metrics_frame.merge(status, on="run_id", how="left")


def baseline_frame() -> pd.DataFrame:
    return summary_rows(aggregate(*as_frames(*runs_and_metrics(BASELINE_GROUPS))))


def new_frame() -> pd.DataFrame:
    return aggregate(*as_frames(*runs_and_metrics(NEW_GROUPS, FAILED_SEEDS, CONFIGS)))


@pytest.fixture
def result() -> pd.DataFrame:
    found = check(baseline_frame(), new_frame(), CONFIG)
    assert {(row.task, row.method, row.metric): row.mark for row in found.itertuples()} == EXPECTED_MARKS
    return found


def test_every_format_counts_what_the_gate_decided(result):
    assert tally(result) == {"tests": 8, "failures": 2, "skipped": 2, "passed": 4}
    assert verdict(result) is Verdict.regression and check_failed(result)
    ungated = result[(result["mark"] == "+") & ~result["gated"]]
    assert len(ungated) == 1  # the acc regression: shown, but not a failure


def test_junit_has_a_case_per_row_failures_only_for_the_gate(result):
    xml = JUnitXml.fromstring(check_junit(result, CONFIG))
    suites = {suite.name: suite for suite in xml}
    assert list(suites) == ["t", "u"]
    cases = [case for suite in xml for case in suite]
    assert len(cases) == len(result) == 8
    failed = {(case.classname, case.name) for case in cases if any(isinstance(r, Failure) for r in case.result)}
    skipped = {(case.classname, case.name) for case in cases if any(isinstance(r, Skipped) for r in case.result)}
    assert failed == {("bnnbench.t.worse", "nll [test, clean]"), ("bnnbench.t.broken", "nll [test, clean]")}
    assert skipped == {("bnnbench.u.retuned", "nll [test, clean]"), ("bnnbench.u.gone", "nll [test, clean]")}
    assert (suites["t"].tests, suites["t"].failures, suites["t"].skipped, suites["t"].errors) == (5, 2, 0, 0)
    assert (suites["u"].tests, suites["u"].failures, suites["u"].skipped, suites["u"].errors) == (3, 0, 2, 0)
    assert (xml.tests, xml.failures, xml.skipped) == (8, 2, 2)
    [regression] = [r for case in cases if case.classname == "bnnbench.t.worse" and case.name.startswith("nll")
                    for r in case.result]
    assert "base 0.5000, new 0.6000, ratio 1.200" in regression.message and "'+' worse" in regression.message
    assert "tolerance ±0.025" in regression.text  # max(0.01, 0.05 * 0.5)
    [acc] = [case for case in cases if case.name == "acc [test, clean]"]
    assert acc.is_passed and "'+' worse (not gated)" in acc.system_out


def test_junit_escapes_names_and_drops_characters_xml_cannot_hold():
    odd = 'm<&>"\x01'
    base = baseline_frame().assign(method=odd)
    new = new_frame().assign(method=odd)
    found = check(base[base["task"] == "t"], new[new["task"] == "t"].drop_duplicates(
        subset=["task", "data_variant", "method", "split", "corruption", "severity", "metric"]), CONFIG)
    [suite] = JUnitXml.fromstring(check_junit(found, CONFIG, name="a & b"))
    assert {case.classname for case in suite} == {"bnnbench.t.m<&>\"\ufffd"}


def test_markdown_shows_the_verdict_the_moved_rows_and_counts_the_rest(result):
    text = check_markdown(result, CONFIG)
    lines = text.splitlines()
    assert lines[0] == "**bnnbench check ❌ failed: regression in a gated metric (nll, ece)**"
    rows = [line for line in lines if line.startswith("| `")]
    assert len(rows) == 7  # every row but the unchanged one
    assert [row.split(" | ")[2] for row in rows[:2]] == ["broken", "worse"]  # gate failures first
    assert "| `+` | t | worse | test | none | 0 | acc | 0.9000 | 0.8000 | 0.889 |  |" in rows
    assert "8 rows: 2 failing, 2 skipped, 4 passing." in text
    assert "<details><summary>1 unchanged row</summary>" in text and "steady" not in text
    assert "`?` missing from new results" in text


def test_markdown_of_a_passing_check():
    same = check(baseline_frame(), aggregate(*as_frames(*runs_and_metrics(BASELINE_GROUPS))), CONFIG)
    assert verdict(same) is Verdict.passed and not check_failed(same) and tally(same)["failures"] == 0
    text = check_markdown(same, CONFIG)
    assert text.startswith("**bnnbench check ✅ passed: no regression in gated metrics (nll, ece)**")
    assert "No row differs from the baseline." in text and "<summary>8 unchanged rows</summary>" in text


COMMAND = re.compile(r"^::(error|warning|notice) title=([^:]*)::(.*)$")


def test_github_commands_errors_for_the_gate_warnings_for_the_rest(result):
    lines = check_github(result, CONFIG).splitlines()
    parsed = [COMMAND.match(line) for line in lines]
    assert all(parsed), lines
    levels = [match[1] for match in parsed]
    assert levels == ["error", "error", "warning", "warning", "warning", "notice"]  # !, +; ungated +, ~, x; summary
    assert parsed[0][2] == "bnnbench%3A nll newly failing (t%2C broken)"  # ':' and ',' escaped in a title
    assert parsed[-1][3] == "failed: regression in a gated metric (nll, ece); 8 rows: 2 failing, 2 skipped, 4 passing"


def test_github_escapes_percent_and_newlines():
    base, new = baseline_frame(), new_frame()
    rename = {"worse": "50%\r\nworse"}
    found = check(base.replace({"method": rename}), new.replace({"method": rename}), CONFIG)
    error = next(line for line in check_github(found, CONFIG).splitlines() if "50%25%0D%0Aworse" in line)
    assert error.startswith("::error title=bnnbench%3A nll worse (t%2C 50%25%0D%0Aworse)::")
    assert "\r" not in error and "\n" not in error


def test_nothing_matching_the_baseline_fails_in_one_case_of_its_own():
    found = check(baseline_frame(), new_frame().assign(method="other"), CONFIG)
    assert verdict(found) is Verdict.nothing_matched
    xml = JUnitXml.fromstring(check_junit(found, CONFIG))
    assert (xml.tests, xml.failures, xml.skipped) == (9, 1, 8)  # the 8 rows skipped, and the check's own case
    suites = {suite.name: suite for suite in xml}
    assert (suites["bnnbench check"].tests, suites["bnnbench check"].failures) == (1, 1)
    [case] = list(suites["bnnbench check"])
    assert case.name == "new results match the baseline" and "every row is '?'" in case.result[0].message
    matched = JUnitXml.fromstring(check_junit(check(baseline_frame(), new_frame(), CONFIG), CONFIG))
    assert "bnnbench check" not in {suite.name for suite in matched}
    assert check_markdown(found, CONFIG).startswith("**bnnbench check ❌ failed: no new result matches the baseline")


# --- the CLI, end to end -----------------------------------------------------------------------------------------

@pytest.fixture
def on_disk(tmp_path) -> tuple[Path, Path, Path]:
    """(baseline CSV, results directory, pyproject.toml) holding the rows of EXPECTED_MARKS."""
    baseline = tmp_path / "baseline.csv"
    baseline_frame().to_csv(baseline, index=False)
    results = tmp_path / "results"
    runs, metrics = runs_and_metrics(NEW_GROUPS, FAILED_SEEDS, CONFIGS)
    for record in runs:
        rows = [row for row in metrics if row["run_id"] == record["run_id"]]
        write_run(run_directory(results, record["task"], record["method"], record["run_id"]), record, rows)
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(PYPROJECT)
    return baseline, results, pyproject


def run_check(cli, on_disk, *options):
    baseline, results, pyproject = on_disk
    return cli("check", "--baseline", str(baseline), "--results-dir", str(results), "--config", str(pyproject),
               *options)


def test_cli_formats_agree_with_the_text_table_and_its_exit_code(cli, on_disk, tmp_path):
    text = run_check(cli, on_disk)
    assert text.code == 1 and "regression in a gated metric (nll, ece)" in text.stderr
    table_rows = [line for line in text.stdout.splitlines() if re.match(r"^│ [-+~!x?* ] ", line)]
    assert len(table_rows) == 8

    junit = run_check(cli, on_disk, "--format", "junit")
    assert junit.code == 1
    xml = JUnitXml.fromstring(junit.stdout)  # stdout is the report alone
    assert (xml.tests, xml.failures, xml.skipped) == (len(table_rows), 2, 2)
    assert "regression in a gated metric" in junit.stderr and "marks:" in junit.stderr

    markdown = run_check(cli, on_disk, "--format", "markdown")
    assert markdown.code == 1 and markdown.stdout.startswith("**bnnbench check ❌ failed")
    github = run_check(cli, on_disk, "--format", "github")
    assert github.code == 1 and all(COMMAND.match(line) for line in github.stdout.splitlines())

    report = tmp_path / "out" / "check.xml"
    written = run_check(cli, on_disk, "--format", "junit", "--output", str(report))
    assert written.code == 1 and written.stdout == ""
    assert report.read_text() == junit.stdout


def test_cli_passing_check_exits_0_in_every_format(cli, on_disk):
    baseline, results, pyproject = on_disk
    base = pd.read_csv(baseline, dtype={"config_hash": str})
    base[base["metric"] != "nll"].to_csv(baseline, index=False)  # only the ungated acc row: a '+' that passes
    for format_ in ("text", "junit", "markdown", "github"):
        checked = run_check(cli, on_disk, "--format", format_)
        assert checked.code == 0, (format_, checked.stderr)
        assert "no regression in gated metrics" in (checked.stdout if format_ == "text" else checked.stderr)
    xml = JUnitXml.fromstring(run_check(cli, on_disk, "--format", "junit").stdout)
    assert (xml.tests, xml.failures, xml.skipped) == (1, 0, 0)


@pytest.mark.parametrize("bad", ["dir", "text"])
def test_cli_refuses_a_bad_output_before_reading(cli, on_disk, tmp_path, bad):
    target = tmp_path if bad == "dir" else tmp_path / "check.txt"
    format_ = "junit" if bad == "dir" else "text"
    refused = run_check(cli, on_disk, "--format", format_, "--output", str(target))
    assert refused.code == 2 and refused.stdout == ""
    assert refused.stderr.startswith("error: --output") and len(refused.stderr.splitlines()) == 1


def test_outcomes_partition_the_rows(result):
    from bnnbench.check_formats import outcome

    kinds = [outcome(row.mark, row.gated) for row in result.itertuples()]
    assert kinds.count(FAILURE) == 2 and kinds.count(SKIPPED) == 2 and len(kinds) == 8


# --- docs/ci.md: its workflows are YAML and name only options the commands have ----------------------------------

CI_PAGE = Path(__file__).resolve().parents[1] / "docs" / "ci.md"


def test_the_ci_page_workflows_parse_and_use_real_options():
    import typer

    from bnnbench.cli import CheckFormat, app

    yaml = pytest.importorskip("yaml")
    text = CI_PAGE.read_text()
    github, gitlab = (yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S))
    assert "mikepenz/action-junit-report@v4" in [step.get("uses") for step in github["jobs"]["gate"]["steps"]]
    assert gitlab["bnnbench"]["artifacts"]["reports"]["junit"] == "check.xml"

    commands = typer.main.get_command(app).commands
    shell = "\n".join(re.findall(r"```(?:yaml|bash)\n(.*?)```", text, re.S)).replace("\\\n", " ")
    shell = shell.replace("$CHECK", "bnnbench check")
    calls = re.findall(r"\bbnnbench (run|check|baseline)\b([^\n|>]*)", shell)
    assert {name for name, _ in calls} == {"run", "check", "baseline"}
    for name, arguments in calls:
        known = {option for param in commands[name].params for option in param.opts}
        assert set(re.findall(r"--[a-z][a-z-]*", arguments)) <= known, (name, arguments)
    assert set(re.findall(r"--format (\w+)", shell)) <= {choice.value for choice in CheckFormat}
