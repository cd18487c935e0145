"""Text renderings of leaderboards and check results: rich tables for terminals, Markdown for files."""

from __future__ import annotations

import math

import pandas as pd

__all__ = ["check_table", "leaderboard_markdown", "leaderboard_table", "wide"]


def _cell(mean: float, stderr: float, n: int) -> str:
    digits = 1 if abs(mean) >= 10 else 4
    if n < 2 or math.isnan(stderr):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {stderr:.{digits}f}"


def wide(board: pd.DataFrame) -> tuple[list[str], list[str], dict[tuple[str, str], tuple[str, bool]]]:
    """Methods (best mean rank first), columns, and {(method, column): (text, best)} of one leaderboard."""
    methods = list(dict.fromkeys(board.sort_values(["rank", "method"])["method"]))
    columns = list(dict.fromkeys(board["column"]))
    cells = {(row.method, row.column): (_cell(row.mean, row.stderr, row.n), bool(row.best))
             for row in board.itertuples()}
    ranks = board.groupby("method")["rank"].first()
    seeds = board.groupby("method")["n"].max()
    for method in methods:
        cells[(method, "n")] = (str(int(seeds[method])), False)
        cells[(method, "rank")] = (f"{ranks[method]:.2f}" if not math.isnan(ranks[method]) else "", False)
    return methods, [*columns, "rank", "n"], cells


def leaderboard_table(board: pd.DataFrame, title: str):
    """A rich Table with the best value of each column in bold green."""
    from rich.table import Table

    methods, columns, cells = wide(board)
    table = Table(title=title, header_style="bold")
    table.add_column("method")
    for column in columns:
        table.add_column(column, justify="right")
    for method in methods:
        texts = []
        for column in columns:
            text, best = cells.get((method, column), ("", False))
            texts.append(f"[bold green]{text}[/bold green]" if best else text)
        table.add_row(method, *texts)
    return table


def leaderboard_markdown(board: pd.DataFrame, title: str) -> str:
    """A Markdown table with the best value of each column in bold."""
    methods, columns, cells = wide(board)
    lines = [f"### {title}", "", "| method | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for method in methods:
        texts = []
        for column in columns:
            text, best = cells.get((method, column), ("", False))
            texts.append(f"**{text}**" if best else text)
        lines.append(f"| {method} | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def check_table(result: pd.DataFrame, config):
    """A rich Table of check rows: mark, key, baseline, new, ratio; gated metrics flagged."""
    from rich.table import Table

    from bnnbench.compare import MARKS

    colours = {"+": "red", "!": "red", "~": "yellow", "x": "magenta", "?": "magenta", "-": "green", "*": "green"}
    table = Table(title="check against baseline", header_style="bold",
                  caption="; ".join(f"'{m}' {meaning}" for m, meaning in MARKS.items()))
    for column in ("", "task", "method", "split", "corruption", "sev", "metric", "base", "new", "ratio"):
        table.add_column(column, justify="right" if column in ("base", "new", "ratio", "sev") else "left")
    for row in result.itertuples():
        colour = colours.get(row.mark)
        mark = f"[{colour}]{row.mark}[/{colour}]" if colour else row.mark
        metric = f"{row.metric}*" if row.gated else row.metric
        table.add_row(mark, row.task, row.method, row.split, row.corruption, str(row.severity), metric,
                      f"{row.base:.4f}", f"{row.new:.4f}", f"{row.ratio:.3f}")
    return table
