"""Text renderings of leaderboards and check results: rich tables for terminals, Markdown for files, LaTeX
(booktabs) for papers, HTML for reports."""

from __future__ import annotations

import html
import math

import pandas as pd

from bnnbench.errors import UsageError

__all__ = ["check_result_table", "leaderboard_html", "leaderboard_latex", "leaderboard_markdown", "leaderboard_table",
           "mean_stderr_text", "pivot_tasks", "wide"]


def mean_stderr_text(mean: float, stderr: float, n: int) -> str:
    """`mean ± stderr` with 4 decimals (1 from 10 up); the mean alone for fewer than two seeds."""
    digits = 1 if abs(mean) >= 10 else 4
    if n < 2 or math.isnan(stderr):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {stderr:.{digits}f}"


def wide(board: pd.DataFrame) -> tuple[list[str], list[str], dict[tuple[str, str], tuple[str, bool]]]:
    """Methods (best mean rank first), columns, and {(method, column): (text, best)} of one leaderboard."""
    methods = list(dict.fromkeys(board.sort_values(["rank", "method"])["method"]))
    columns = list(dict.fromkeys(board["column"]))
    cells = {(row.method, row.column): (mean_stderr_text(row.mean, row.stderr, row.n), bool(row.best))
             for row in board.itertuples()}
    ranks = board.groupby("method")["rank"].first()
    seeds = board.groupby("method")["n"].max()
    for method in methods:
        cells[(method, "n")] = (str(int(seeds[method])), False)
        cells[(method, "rank")] = (f"{ranks[method]:.2f}" if not math.isnan(ranks[method]) else "", False)
    if "tuning" not in board:
        return methods, [*columns, "rank", "n"], cells
    tuning = board.groupby("method")["tuning"].first()
    for method in methods:
        cells[(method, "tuning")] = (tuning[method], False)
    return methods, [*columns, "rank", "n", "tuning"], cells


def leaderboard_table(board: pd.DataFrame, title: str):
    """A rich Table with the best value of each column in bold green. Names are shown as they are: a `[` in a
    task or method name is text, not rich markup."""
    from rich.markup import escape
    from rich.table import Table

    methods, columns, cells = wide(board)
    table = Table(title=escape(title), header_style="bold")
    table.add_column("method")
    for column in columns:
        table.add_column(escape(column), justify="right")
    for method in methods:
        texts = []
        for column in columns:
            text, best = cells.get((method, column), ("", False))
            texts.append(f"[bold green]{escape(text)}[/bold green]" if best else escape(text))
        table.add_row(escape(method), *texts)
    return table


def _markdown_text(text: str) -> str:
    """`text` safe inside a Markdown table cell or heading: a pipe would end the cell, `<` and `>` could open
    HTML, a line break would end the row."""
    for plain, escaped in (("\\", "\\\\"), ("|", "\\|"), ("<", "&lt;"), (">", "&gt;"), ("\r", " "),
                           ("\n", " ")):
        text = text.replace(plain, escaped)
    return text


def leaderboard_markdown(board: pd.DataFrame, title: str) -> str:
    """A Markdown table with the best value of each column in bold."""
    methods, columns, cells = wide(board)
    lines = [f"### {_markdown_text(title)}", "", "| method | " + " | ".join(map(_markdown_text, columns)) + " |",
             "|---|" + "---:|" * len(columns)]
    for method in methods:
        texts = []
        for column in columns:
            text, best = cells.get((method, column), ("", False))
            texts.append(f"**{text}**" if best else text)
        lines.append(f"| {_markdown_text(method)} | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def _latex_text(text: str) -> str:
    for plain, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(plain, escaped)
    return text.replace(" ± ", r" $\pm$ ")


def leaderboard_latex(board: pd.DataFrame, title: str) -> str:
    """A booktabs table (needs \\usepackage{booktabs}) with the best value of each column in bold."""
    methods, columns, cells = wide(board)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex_text(title)}}}",
             r"\begin{tabular}{l" + "r" * len(columns) + "}", r"\toprule",
             "method & " + " & ".join(_latex_text(column) for column in columns) + r" \\", r"\midrule"]
    for method in methods:
        texts = []
        for column in columns:
            text, best = cells.get((method, column), ("", False))
            texts.append(rf"\textbf{{{_latex_text(text)}}}" if best else _latex_text(text))
        lines.append(_latex_text(method) + " & " + " & ".join(texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def leaderboard_html(board: pd.DataFrame) -> str:
    """An HTML table (no styling of its own) with the best value of each column in <strong>."""
    methods, columns, cells = wide(board)
    head = "".join(f"<th>{html.escape(column)}</th>" for column in columns)
    lines = ['<table class="leaderboard">', f"<thead><tr><th>method</th>{head}</tr></thead>", "<tbody>"]
    for method in methods:
        texts = []
        for column in columns:
            text, best = cells.get((method, column), ("", False))
            texts.append(f"<td><strong>{html.escape(text)}</strong></td>" if best else f"<td>{html.escape(text)}</td>")
        lines.append(f"<tr><th>{html.escape(method)}</th>{''.join(texts)}</tr>")
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


def pivot_tasks(board: pd.DataFrame, column: str) -> pd.DataFrame:
    """One leaderboard column across tasks: methods as rows, one column per task (and variant), each method's
    rank the mean over tasks of its rank in that column."""
    chosen = board[board["column"] == column].copy()
    if chosen.empty:
        there = ", ".join(sorted(set(board["column"]))) or "none"
        raise UsageError(f"no leaderboard column '{column}' in these results; columns there: {there}")
    chosen["column"] = [task if variant == "standard" else f"{task} ({variant})"
                        for task, variant in zip(chosen["task"], chosen["data_variant"], strict=True)]
    signed = chosen["mean"].where(~chosen["higher_is_better"].astype(bool), -chosen["mean"])
    chosen["rank"] = signed.groupby(chosen["column"]).rank(method="min")
    chosen["rank"] = chosen.groupby("method")["rank"].transform("mean")
    return chosen


def check_result_table(result: pd.DataFrame, config):
    """A rich Table of check rows: mark, key, baseline, new, ratio; gated metrics flagged. Names are text, not
    rich markup."""
    from rich.markup import escape
    from rich.table import Table

    from bnnbench.comparison import MARKS

    colours = {"+": "red", "!": "red", "~": "yellow", "x": "magenta", "?": "magenta", "-": "green", "*": "green"}
    table = Table(title="check against baseline", header_style="bold",
                  caption="; ".join(f"'{m}' {meaning}" for m, meaning in MARKS.items()))
    for column in ("", "task", "method", "split", "corruption", "sev", "metric", "base", "new", "ratio"):
        table.add_column(column, justify="right" if column in ("base", "new", "ratio", "sev") else "left")
    for row in result.itertuples():
        colour = colours.get(row.mark)
        mark = f"[{colour}]{row.mark}[/{colour}]" if colour else row.mark
        metric = escape(f"{row.metric}*" if row.gated else str(row.metric))
        table.add_row(mark, *(escape(str(name)) for name in (row.task, row.method, row.split, row.corruption)),
                      str(row.severity), metric,
                      f"{row.base:.4f}", f"{row.new:.4f}", f"{row.ratio:.3f}")
    return table
