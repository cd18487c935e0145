"""Text renderings of leaderboards and check results: rich tables for terminals, Markdown for files, LaTeX
(booktabs) for papers, HTML for reports.

A leaderboard's published rows (`comparison.with_published`: `kind = "published"`) are set apart in every format,
so that no reader takes a paper's number for a run: below the runs after a rule, in italics, their label ending in
"†", with blank rank and n, and the rows' footnotes under the table."""

from __future__ import annotations

import html
import math

import pandas as pd

from bnnbench.errors import UsageError

__all__ = ["check_result_table", "leaderboard_html", "leaderboard_latex", "leaderboard_markdown", "leaderboard_table",
           "mean_stderr_text", "pivot_tasks", "published_rows", "wide"]


def mean_stderr_text(mean: float, stderr: float, n: int) -> str:
    """`mean ± stderr` with 4 decimals (1 from 10 up); the mean alone for fewer than two seeds."""
    digits = 1 if abs(mean) >= 10 else 4
    if n < 2 or math.isnan(stderr):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {stderr:.{digits}f}"


def wide(board: pd.DataFrame) -> tuple[list[str], list[str], dict[tuple[str, str], tuple[str, bool]]]:
    """Methods (best mean rank first, published rows last), columns, and {(method, column): (text, best)} of one
    leaderboard. A published row has no rank, seed count or tuning: those cells are blank."""
    published, _ = published_rows(board)
    runs = board[~board["method"].isin(published)]
    methods = [*dict.fromkeys(runs.sort_values(["rank", "method"])["method"]), *published]
    columns = list(dict.fromkeys(board["column"]))
    cells = {(row.method, row.column): (mean_stderr_text(row.mean, row.stderr, 0 if pd.isna(row.n) else row.n),
                                        bool(row.best))
             for row in board.itertuples()}
    ranks = runs.groupby("method")["rank"].first()
    seeds = runs.groupby("method")["n"].max()
    for method in methods:
        if method in published:
            cells[(method, "n")] = cells[(method, "rank")] = ("", False)
            continue
        cells[(method, "n")] = (str(int(seeds[method])), False)
        cells[(method, "rank")] = (f"{ranks[method]:.2f}" if not math.isnan(ranks[method]) else "", False)
    if "tuning" not in board:
        return methods, [*columns, "rank", "n"], cells
    tuning = runs.groupby("method")["tuning"].first()
    for method in methods:
        cells[(method, "tuning")] = ("" if method in published else tuning[method], False)
    return methods, [*columns, "rank", "n", "tuning"], cells


def published_rows(board: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The method labels of a leaderboard's published rows and their footnotes, each once, in board order; none for
    a board without published figures."""
    if "kind" not in board:
        return [], []
    rows = board[board["kind"] == "published"]
    return list(dict.fromkeys(rows["method"])), list(dict.fromkeys(rows["note"]))


def leaderboard_table(board: pd.DataFrame, title: str):
    """A rich Table with the best value of each column in bold green. Names are shown as they are: a `[` in a
    task or method name is text, not rich markup."""
    from rich.markup import escape
    from rich.table import Table

    methods, columns, cells = wide(board)
    published, notes = published_rows(board)
    table = Table(title=escape(title), header_style="bold", caption="\n".join(map(escape, notes)) or None,
                  caption_justify="left")
    table.add_column("method")
    for column in columns:
        table.add_column(escape(column), justify="right")
    for method in methods:
        texts = []
        for column in columns:
            text, best = cells.get((method, column), ("", False))
            texts.append(f"[bold green]{escape(text)}[/bold green]" if best else escape(text))
        if method == (published or [None])[0]:
            table.add_section()  # a rule between the runs and the published rows
        table.add_row(escape(method), *texts, style="italic" if method in published else None)
    return table


def _markdown_text(text: str) -> str:
    """`text` safe inside a Markdown table cell or heading: a pipe would end the cell, `<` and `>` could open
    HTML, a line break would end the row."""
    for plain, escaped in (("\\", "\\\\"), ("|", "\\|"), ("<", "&lt;"), (">", "&gt;"), ("\r", " "),
                           ("\n", " ")):
        text = text.replace(plain, escaped)
    return text


def leaderboard_markdown(board: pd.DataFrame, title: str) -> str:
    """A Markdown table with the best value of each column in bold; published rows in italics, their footnotes
    under the table."""
    methods, columns, cells = wide(board)
    published, notes = published_rows(board)
    lines = [f"### {_markdown_text(title)}", "", "| method | " + " | ".join(map(_markdown_text, columns)) + " |",
             "|---|" + "---:|" * len(columns)]
    for method in methods:
        texts = []
        for column in columns:
            text, best = cells.get((method, column), ("", False))
            texts.append(f"**{text}**" if best else f"*{text}*" if text and method in published else text)
        label = f"*{_markdown_text(method)}*" if method in published else _markdown_text(method)
        lines.append(f"| {label} | " + " | ".join(texts) + " |")
    if notes:  # a line of its own after a blank one, so it is a paragraph under the table, not a row
        lines += ["", *(f"{_markdown_text(note)}  " for note in notes)]
    return "\n".join(lines) + "\n"


def _latex_text(text: str) -> str:
    for plain, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(plain, escaped)
    # the published rows' dagger and dash as LaTeX commands: a document without UTF-8 input would drop them
    for plain, command in (("†", r"\textsuperscript{\dag}"), ("—", "---")):
        text = text.replace(plain, command)
    return text.replace(" ± ", r" $\pm$ ")


def leaderboard_latex(board: pd.DataFrame, title: str) -> str:
    """A booktabs table (needs \\usepackage{booktabs}) with the best value of each column in bold; published rows
    in italics after a rule, their footnotes under the tabular."""
    methods, columns, cells = wide(board)
    published, notes = published_rows(board)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex_text(title)}}}",
             r"\begin{tabular}{l" + "r" * len(columns) + "}", r"\toprule",
             "method & " + " & ".join(_latex_text(column) for column in columns) + r" \\", r"\midrule"]
    for method in methods:
        texts = []
        for column in columns:
            text, best = cells.get((method, column), ("", False))
            texts.append(rf"\textbf{{{_latex_text(text)}}}" if best else
                         rf"\textit{{{_latex_text(text)}}}" if text and method in published else _latex_text(text))
        if method == (published or [None])[0]:
            lines.append(r"\midrule")
        label = rf"\textit{{{_latex_text(method)}}}" if method in published else _latex_text(method)
        lines.append(label + " & " + " & ".join(texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [rf"\par\smallskip{{\footnotesize {_latex_text(note)}}}" for note in notes]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def leaderboard_html(board: pd.DataFrame) -> str:
    """An HTML table (no styling of its own) with the best value of each column in <strong>; published rows are
    `<tr class="published">` with their values in <em>, their footnotes in the table's <tfoot>."""
    methods, columns, cells = wide(board)
    published, notes = published_rows(board)
    head = "".join(f"<th>{html.escape(column)}</th>" for column in columns)
    lines = ['<table class="leaderboard">', f"<thead><tr><th>method</th>{head}</tr></thead>", "<tbody>"]
    for method in methods:
        texts = []
        for column in columns:
            text, best = cells.get((method, column), ("", False))
            texts.append(f"<td><strong>{html.escape(text)}</strong></td>" if best else
                         f"<td><em>{html.escape(text)}</em></td>" if text and method in published else
                         f"<td>{html.escape(text)}</td>")
        row = '<tr class="published">' if method in published else "<tr>"
        lines.append(f"{row}<th>{html.escape(method)}</th>{''.join(texts)}</tr>")
    lines.append("</tbody>")
    if notes:
        lines += ["<tfoot>", *(f'<tr><td colspan="{len(columns) + 1}">{html.escape(note)}</td></tr>' for note in notes),
                  "</tfoot>"]
    lines.append("</table>")
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
    if "kind" in chosen:  # published figures take no rank, nor a place in the runs' ranks
        signed = signed.where(chosen["kind"] != "published")
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
