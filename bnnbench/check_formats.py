"""Renderings of a regression check's result (`comparison.check`) for CI systems: JUnit XML for test-report tools,
Markdown for a pull-request comment or job summary, and GitHub Actions workflow commands for annotations.

Every format judges a row the same way (`outcome`) and states the same verdict (`verdict`) as the exit code of
`bnnbench check`: a row is a failure exactly when it fails the gate (a `+` or `!` on a gated metric), and a check
that fails because nothing matches the baseline adds one failed case of its own to the JUnit report, so a report
is red exactly when the check exits 1.
"""

from __future__ import annotations

import html
import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from enum import Enum
from typing import Any

import pandas as pd

from bnnbench.comparison import MARKS, CheckConfig, check_failed

__all__ = ["FAILURE", "PASSED", "SKIPPED", "Verdict", "case_name", "check_github", "check_junit", "check_markdown",
           "failures_first", "outcome", "tally", "task_label", "verdict"]

FAILURE, SKIPPED, PASSED = "failure", "skipped", "passed"
FAILING_MARKS = ("+", "!")  # on a gated metric these fail the check (`comparison.check_failed`)
SKIPPED_MARKS = ("?", "x")  # no number to judge: missing from the new results, or not comparable
WARNING_MARKS = ("+", "!", "~", "x")  # worth a reviewer's look even where they do not fail the check


class Verdict(str, Enum):
    """The check's outcome, which decides the exit code: 0 for `passed`, 1 otherwise."""

    passed = "passed"
    regression = "regression"  # a gated metric regressed (+) or a run newly fails (!)
    nothing_matched = "nothing matched"  # every baseline row is missing from the new results

    @property
    def failed(self) -> bool:
        return self is not Verdict.passed


def verdict(result: pd.DataFrame) -> Verdict:
    """The verdict of a check result; nothing matching the baseline fails, as a check of nothing proves nothing."""
    if (result["mark"] == "?").all():
        return Verdict.nothing_matched
    return Verdict.regression if check_failed(result) else Verdict.passed


def outcome(mark: str, gated: bool) -> str:
    """FAILURE, SKIPPED or PASSED: how a test report shows a row. An ungated regression passes, since it does not
    fail the check."""
    if gated and mark in FAILING_MARKS:
        return FAILURE
    return SKIPPED if mark in SKIPPED_MARKS else PASSED


def _outcomes(result: pd.DataFrame) -> pd.Series:
    return pd.Series([outcome(str(mark), bool(gated)) for mark, gated in zip(result["mark"], result["gated"],
                                                                             strict=True)],
                     index=result.index, dtype=object)


def tally(result: pd.DataFrame) -> dict[str, int]:
    """Rows per outcome, and in all (`tests`): the counts every format reports."""
    counts = Counter(_outcomes(result))
    return {"tests": len(result), "failures": counts[FAILURE], "skipped": counts[SKIPPED], "passed": counts[PASSED]}


def failures_first(result: pd.DataFrame) -> pd.DataFrame:
    """`result` with the gate's failures first, the rest in the order `comparison.check` gave (`!`, `+`, `~`, ...),
    so that a report opens with what failed the check rather than with an ungated change."""
    failing = _outcomes(result) == FAILURE
    return pd.concat([result[failing], result[~failing]])


def case_name(row: dict[str, Any]) -> str:
    """`nll [test, clean]`, `ece [test, corruption mean]`, `acc [test, corruption mean, severity 3]`: a row's
    metric and where it was measured (severity 0 on a `mean` row is the mean over all severities)."""
    corruption = str(row["corruption"])
    where = {"none": "clean", "mean": "corruption mean"}.get(corruption, corruption)
    severity = _integer_text(row["severity"])
    parts = [str(row["split"]), where, *([f"severity {severity}"] if corruption != "none" and severity != "0" else [])]
    return f"{row['metric']} [{', '.join(parts)}]"


def task_label(row: dict[str, Any]) -> str:
    """The task, with its data variant where that is not the standard one (variants are never compared)."""
    variant = str(row["data_variant"])
    return str(row["task"]) if variant == "standard" else f"{row['task']} ({variant})"


def _integer_text(value: Any) -> str:
    try:
        return str(int(value))
    except (TypeError, ValueError):  # NaN or text: as it is
        return str(value)


def _number(value: Any, digits: int = 4) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.{digits}f}" if math.isfinite(number) else "n/a"


def _numbers(row: dict[str, Any]) -> str:
    return f"base {_number(row['base'])}, new {_number(row['new'])}, ratio {_number(row['ratio'], 3)}"


# Why a row without a judged change got its mark: the reason a report gives next to MARKS' word for it
_REASONS = {"!": "a new run of this task and method failed where the baseline's did not",
            "*": "the baseline's runs of this task and method failed, the new ones did not",
            "x": "the new runs have another task version or configuration (hyper-parameters, budget, bnnbench or "
                 "plugin version); refresh the baseline with `bnnbench baseline` if the change is intended",
            "?": "no new run of this task and method has this row"}


def _tolerance_width(row: dict[str, Any], config: CheckConfig) -> str:
    base = float(row["base"]) if pd.notna(row["base"]) else math.nan
    return f"±{config.tolerance(str(row['metric'])).of(base):.4g}" if math.isfinite(base) else "n/a"


def _tolerance_text(row: dict[str, Any], config: CheckConfig) -> str:
    """The band within which a change is noise, as `comparison._mark` applies it."""
    tolerance = config.tolerance(str(row["metric"]))
    return (f"tolerance {_tolerance_width(row, config)} (max of abs {tolerance.abs:g}, rel {tolerance.rel:g}·|base|); "
            f"with ≥ 2 seeds on each side a change within {config.sigmas:g}·stderr is not significant")


def _explanation(row: dict[str, Any], config: CheckConfig) -> str:
    """One sentence: the numbers, what the mark means and why: for a change the tolerance it was judged by, for
    the other marks the reason."""
    mark = str(row["mark"])
    gated = "gated" if row["gated"] else "not gated"
    line = f"{task_label(row)} / {row['method']} / {case_name(row)}: {_numbers(row)}; '{mark}' {MARKS[mark]} ({gated})"
    if mark in ("+", "-", "~"):
        return f"{line}; {_tolerance_text(row, config)}"
    return f"{line}: {_REASONS[mark]}" if mark in _REASONS else line


def _records(result: pd.DataFrame) -> list[dict[str, Any]]:
    return result.to_dict("records")


# --- JUnit XML ---------------------------------------------------------------------------------------------------

_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    """`text` with U+FFFD for each character XML 1.0 cannot hold at all (ElementTree escapes `<` and `&`, but
    would write a control character as it is, and the file would not parse)."""
    return _NOT_XML.sub("\ufffd", text)


def _counts_attributes(rows: pd.DataFrame) -> dict[str, str]:
    counts = tally(rows)
    return {"tests": str(counts["tests"]), "failures": str(counts["failures"]), "errors": "0",
            "skipped": str(counts["skipped"])}


def check_junit(result: pd.DataFrame, config: CheckConfig, *, name: str = "bnnbench check") -> str:
    """JUnit XML: a `<testsuite>` per task (and data variant) holding a `<testcase>` per check row, classname
    `bnnbench.<task>.<method>`, name `<metric> [<split>, <where>]`. A gate failure is a `<failure>`, a row without
    a comparable number `<skipped>`; every case carries its mark and numbers in `<system-out>`."""
    root = ET.Element("testsuites", {"name": _xml_text(name), **_counts_attributes(result)})
    labels = pd.Series([task_label(row) for row in _records(result)], index=result.index, dtype=object)
    for label in labels.unique():  # tasks in the order the result first names them
        rows = result[labels == label]
        suite = ET.SubElement(root, "testsuite", {"name": _xml_text(label), **_counts_attributes(rows)})
        for row in _records(rows):
            _add_case(suite, row, config)
    if verdict(result) is Verdict.nothing_matched:  # the check fails with every row skipped: one case says why
        _add_nothing_matched(root)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _add_nothing_matched(root: ET.Element) -> None:
    """A suite of one failed case for a check that failed because no new result matches the baseline, so that a
    test report is red exactly when the check exits 1 (its rows are all skipped)."""
    root.set("tests", str(int(root.get("tests")) + 1))
    root.set("failures", str(int(root.get("failures")) + 1))
    suite = ET.SubElement(root, "testsuite", {"name": "bnnbench check", "tests": "1", "failures": "1", "errors": "0",
                                              "skipped": "0"})
    case = ET.SubElement(suite, "testcase", {"classname": "bnnbench.check", "name": "new results match the baseline",
                                             "time": "0"})
    message = "no new result matches any baseline row (every row is '?'): a check of nothing proves nothing"
    ET.SubElement(case, "failure", {"type": "nothing matched", "message": message}).text = message


def _add_case(suite: ET.Element, row: dict[str, Any], config: CheckConfig) -> None:
    classname = f"bnnbench.{row['task']}" + ("" if row["data_variant"] == "standard" else f".{row['data_variant']}")
    case = ET.SubElement(suite, "testcase", {"classname": _xml_text(f"{classname}.{row['method']}"),
                                             "name": _xml_text(case_name(row)), "time": "0"})
    mark, explanation = str(row["mark"]), _xml_text(_explanation(row, config))
    kind = outcome(mark, bool(row["gated"]))
    if kind == FAILURE:
        why = f"beyond tolerance {_tolerance_width(row, config)}" if mark == "+" else _REASONS[mark]
        message = f"'{mark}' {MARKS[mark]}, {why}: {_numbers(row)}"
        failure = ET.SubElement(case, "failure", {"type": "newly failing" if mark == "!" else "regression",
                                                  "message": _xml_text(message)})
        failure.text = explanation
    elif kind == SKIPPED:
        ET.SubElement(case, "skipped", {"message": _xml_text(f"'{mark}' {MARKS[mark]}: {_REASONS[mark]}")})
    ET.SubElement(case, "system-out").text = explanation


# --- Markdown ----------------------------------------------------------------------------------------------------

def _cell(value: Any) -> str:
    """Table-cell text: HTML escaped (GitHub renders raw HTML in comments) and `|` kept from ending the cell."""
    return html.escape(str(value)).replace("|", "\\|")


def _mark_code(mark: str) -> str:
    return "unchanged" if mark == " " else f"`{mark}`"


def _mark_phrase(mark: str) -> str:
    """`` `+` worse ``; the blank mark is its meaning alone (a code span of a space shows nothing)."""
    return MARKS[mark] if mark == " " else f"`{mark}` {MARKS[mark]}"


def _verdict_text(result: pd.DataFrame, config: CheckConfig) -> str:
    gate = ", ".join(config.gate)
    return {Verdict.passed: f"passed: no regression in gated metrics ({gate})",
            Verdict.regression: f"failed: regression in a gated metric ({gate})",
            Verdict.nothing_matched: "failed: no new result matches the baseline"}[verdict(result)]


def _counts_text(result: pd.DataFrame) -> str:
    counts = tally(result)
    return (f"{counts['tests']} rows: {counts['failures']} failing, {counts['skipped']} skipped, "
            f"{counts['passed']} passing")


def check_markdown(result: pd.DataFrame, config: CheckConfig) -> str:
    """A pull-request comment: the verdict, the count of each mark, a table of the rows that moved (gate failures
    first, then the result's own order), the legend, and the unchanged rows as a count in a collapsed block."""
    found = verdict(result)
    marks = result["mark"].value_counts().to_dict()
    lines = [f"**bnnbench check {'❌' if found.failed else '✅'} {_verdict_text(result, config)}**", "",
             f"{_counts_text(result)}. Marks: "
             + ", ".join(f"{_mark_phrase(mark)} {marks[mark]}" for mark in MARKS if mark in marks) + ".",
             ""]
    moved = failures_first(result[result["mark"] != " "])
    if moved.empty:
        lines.append("No row differs from the baseline.")
    else:
        lines += ["| mark | task | method | split | corruption | severity | metric | base | new | ratio | gated |",
                  "|:-:|---|---|---|---|--:|---|--:|--:|--:|:-:|"]
        for row in _records(moved):
            cells = [_mark_code(str(row["mark"])), _cell(task_label(row)),
                     *(_cell(row[key]) for key in ("method", "split", "corruption")),
                     _integer_text(row["severity"]), _cell(row["metric"]), _number(row["base"]), _number(row["new"]),
                     _number(row["ratio"], 3), "yes" if row["gated"] else ""]
            lines.append("| " + " | ".join(cells) + " |")
    legend = "; ".join(_mark_phrase(mark) for mark in MARKS if mark != " ")
    unchanged = int((result["mark"] == " ").sum())
    lines += ["", f"Legend: {legend}. Only a `+` or `!` on a gated metric fails the check.", "",
              f"<details><summary>{unchanged} unchanged row{'s' * (unchanged != 1)}</summary>", "",
              f"{unchanged} row{'s' * (unchanged != 1)} within tolerance of the baseline, not listed.", "",
              "</details>"]
    return "\n".join(lines) + "\n"


# --- GitHub Actions workflow commands ----------------------------------------------------------------------------

def _escape_data(text: str) -> str:
    """A workflow command's message, escaped as the runner unescapes it."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    """A workflow command's property value (`title=`): a message's escapes, and `:` and `,`, which end it."""
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _command(level: str, title: str, message: str) -> str:
    return f"::{level} title={_escape_property(title)}::{_escape_data(message)}"


def check_github(result: pd.DataFrame, config: CheckConfig) -> str:
    """GitHub Actions workflow commands, a line each: `::error` for every gate failure, then `::warning` for a change
    a reviewer should see that does not fail the check (ungated `+` or `!`, `~`, `x`), then a `::notice` summary.
    Rows missing from the new results (`?`) are only counted: a baseline of many methods checked against runs of a
    few would otherwise bury the annotations that matter."""
    lines = []
    for row in _records(failures_first(result)):
        mark = str(row["mark"])
        if mark not in WARNING_MARKS:
            continue
        level = "error" if outcome(mark, bool(row["gated"])) == FAILURE else "warning"
        title = f"bnnbench: {row['metric']} {MARKS[mark]} ({task_label(row)}, {row['method']})"
        lines.append(_command(level, title, _explanation(row, config)))
    lines.append(_command("notice", "bnnbench check", f"{_verdict_text(result, config)}; {_counts_text(result)}"))
    return "\n".join(lines) + "\n"
