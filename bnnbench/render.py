"""Text renderings of leaderboards, paired differences and check results: rich tables for terminals, Markdown for
files, LaTeX (booktabs) for papers, HTML for reports.

A leaderboard's published rows (`comparison.with_published`: `kind = "published"`) are set apart in every format,
so that no reader takes a paper's number for a run: below the runs after a rule, in italics, their label ending in
"†", with blank rank and n, and the rows' footnotes under the table."""

from __future__ import annotations

import html
import math

import pandas as pd

from bnnbench.errors import UsageError

__all__ = ["PAIRED_MARKS", "check_result_table", "leaderboard_html", "leaderboard_latex", "leaderboard_markdown",
           "leaderboard_table", "mean_stderr_text", "paired_markdown", "paired_table", "paired_wide", "pivot_tasks",
           "published_rows", "rank_markdown", "rank_table", "wide"]


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


PAIRED_MARKS = {"better": "▲", "worse": "▼"}  # the interval excludes 0, and the method is better or worse


def _where(split: str, corruption: str, severity: int) -> str:
    """A paired row's split as a reader names it: test, test corrupted s3, test corrupted (all), ood (mean)."""
    if corruption == "none":
        return split
    if corruption == "mean":
        return f"{split} {'corrupted' if split == 'test' else 'sets'} {f's{severity}' if severity else '(all)'}"
    return f"{split} {corruption} s{severity}"


def _difference_text(row) -> str:
    digits = 1 if abs(row.difference) >= 10 else 4
    text = f"{row.difference:+.{digits}f}"
    if not math.isnan(row.low):
        text += f" [{row.low:+.{digits}f}, {row.high:+.{digits}f}]"
    return text + (f" {PAIRED_MARKS[row.verdict]}" if row.verdict in PAIRED_MARKS else "")


def paired_wide(rows: pd.DataFrame) -> tuple[list[tuple[str, str]], list[str], dict]:
    """(row keys (method, where), metric columns, {(method, where, metric): (text, verdict)}) of one task's paired
    differences: a row per method and split (clean test first, corrupted severities in order), a column per
    metric. Only corruption means are shown per severity; each corruption's own rows are in the CSV."""
    shown = rows[rows["corruption"].isin(["none", "mean"])]
    order = shown.assign(where=[_where(r.split, r.corruption, r.severity) for r in shown.itertuples()],
                         split_order=[(r.split != "test", r.corruption != "none", r.severity == 0, r.severity)
                                      for r in shown.itertuples()])
    order = order.sort_values(["method", "split_order"], kind="stable")
    keys = list(dict.fromkeys(zip(order["method"], order["where"], strict=True)))
    metrics = list(dict.fromkeys(order["metric"]))
    cells = {(row.method, row.where, row.metric): (_difference_text(row), row.verdict) for row in order.itertuples()}
    return keys, metrics, cells


def paired_table(rows: pd.DataFrame, title: str, notes: list[str]):
    """A rich Table of paired differences: significantly better cells green, worse ones red."""
    from rich.markup import escape
    from rich.table import Table

    keys, metrics, cells = paired_wide(rows)
    table = Table(title=escape(title), header_style="bold", caption="\n".join(map(escape, notes)),
                  caption_justify="left")
    table.add_column("method")
    table.add_column("split")
    for metric in metrics:
        table.add_column(escape(metric), justify="right")
    previous = None
    for method, where in keys:
        if previous is not None and method != previous:
            table.add_section()
        texts = []
        for metric in metrics:
            text, verdict = cells.get((method, where, metric), ("", ""))
            colour = {"better": "green", "worse": "red"}.get(verdict)
            texts.append(f"[{colour}]{escape(text)}[/{colour}]" if colour else escape(text))
        table.add_row(escape(method) if method != previous else "", escape(where), *texts)
        previous = method
    return table


def paired_markdown(rows: pd.DataFrame, title: str, notes: list[str]) -> str:
    """The paired differences as a Markdown table, the notes under it."""
    keys, metrics, cells = paired_wide(rows)
    lines = [f"### {_markdown_text(title)}", "",
             "| method | split | " + " | ".join(map(_markdown_text, metrics)) + " |",
             "|---|---|" + "---:|" * len(metrics)]
    for method, where in keys:
        texts = [_markdown_text(cells.get((method, where, metric), ("", ""))[0]) for metric in metrics]
        lines.append(f"| {_markdown_text(method)} | {_markdown_text(where)} | " + " | ".join(texts) + " |")
    return "\n".join([*lines, "", *(f"{_markdown_text(note)}  " for note in notes)]) + "\n"


def _rank_cells(ranks: pd.DataFrame) -> list[list[str]]:
    return [[value if isinstance(value, str) else f"{value:.2f}" for value in row]
            for row in ranks.itertuples(index=False)]


def rank_table(ranks: pd.DataFrame, title: str):
    """A rich Table of ranks across tasks (`AcrossTasks.rank_table()` with the method as a column)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), header_style="bold")
    for column in ranks.columns:
        table.add_column(escape(str(column)), justify="left" if column == "method" else "right")
    for row in _rank_cells(ranks):
        table.add_row(*map(escape, row))
    return table


def rank_markdown(ranks: pd.DataFrame, title: str) -> str:
    """The ranks across tasks as a Markdown table under a heading."""
    header = " | ".join(_markdown_text(str(column)) for column in ranks.columns)
    lines = [f"### {_markdown_text(title)}", "", f"| {header} |", "|---|" + "---:|" * (len(ranks.columns) - 1)]
    lines += ["| " + " | ".join(map(_markdown_text, row)) + " |" for row in _rank_cells(ranks)]
    return "\n".join(lines) + "\n"
