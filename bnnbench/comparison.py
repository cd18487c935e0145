"""Leaderboards (mean ± stderr over seeds, ranks) and the regression check against a baseline.

The check follows asv's `compare` with metric direction added: a change worse than
`max(abs_tol, rel_tol · |baseline|)` is a regression `+` unless both sides have at least two seeds and
their `mean ± sigmas · stderr` intervals overlap (`~`, changed but not significant); `-` is an
improvement, `!` a newly failing run, `*` a fixed one, `x` not comparable (other task version or other
configuration), `?` missing from the new results. Any `+` or `!` on a gated metric fails the check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bnnbench import tomlfile
from bnnbench.errors import UsageError
from bnnbench.metrics import METRICS
from bnnbench.published import PublishedTable

__all__ = ["BASELINE_COLUMNS", "TASK_KEY", "CheckConfig", "Tolerance", "aggregate", "check", "check_failed",
           "leaderboard", "unresolved_pairs",
           "load_baseline", "load_check_config", "method_labels", "summary_rows", "with_published", "with_variant"]

# A task's results are comparable only within one version and data variant (official vs generated CIFAR-10-C)
TASK_KEY = ["task", "task_version", "data_variant"]
GROUP = [*TASK_KEY, "method", "config_hash"]
DEFAULT_VARIANT = "standard"  # results written before variants existed, and tasks without any
CELL = ["split", "corruption", "severity", "metric"]
BASELINE_DIGITS = 6  # significant digits of the numbers `bnnbench baseline` writes
BASELINE_COLUMNS = [*GROUP, *CELL, "mean", "stderr", "n", "n_failed"]
MARKS = {"+": "worse", "-": "better", "~": "changed, not significant", "!": "newly failing", "*": "fixed",
         "x": "not comparable", "?": "missing from new results", " ": "unchanged"}


@dataclass(frozen=True)
class Tolerance:
    """A change smaller than max(abs, rel · |baseline|) is noise, and so is one within the rounding of a baseline
    written with BASELINE_DIGITS significant digits (a metric without a tolerance would otherwise never match
    its own re-run)."""

    abs: float = 0.0
    rel: float = 0.0

    def of(self, baseline: float) -> float:
        written = 0.5 * 10.0 ** (math.floor(math.log10(abs(baseline))) - BASELINE_DIGITS + 1) if baseline else 0.0
        return max(self.abs, self.rel * abs(baseline), written)


@dataclass(frozen=True)
class CheckConfig:
    """Gate and tolerances; read from `[tool.bnnbench.check]` in pyproject.toml."""

    gate: tuple[str, ...] = ("nll", "ece")
    sigmas: float = 2.0
    tolerances: dict[str, Tolerance] = field(default_factory=dict)

    def tolerance(self, metric: str) -> Tolerance:
        return self.tolerances.get(metric, Tolerance())


# Fallback for an installed bnnbench run outside a project; keep equal to pyproject.toml (a test checks).
DEFAULT_CHECK = CheckConfig(tolerances={"nll": Tolerance(0.03, 0.05), "ece": Tolerance(0.012, 0.0),
                                        "acc": Tolerance(0.01, 0.0), "brier": Tolerance(0.015, 0.05)})


def load_check_config(pyproject: Path | None = None) -> CheckConfig:
    """`[tool.bnnbench.check]` from `pyproject` (default: the nearest pyproject.toml above the cwd)."""
    if pyproject is None:
        candidates = [d / "pyproject.toml" for d in (Path.cwd(), *Path.cwd().parents)]
        pyproject = next((p for p in candidates if p.is_file()), None)
        if pyproject is None:
            return DEFAULT_CHECK
    try:
        table = tomlfile.loads(Path(pyproject).read_text()).get("tool", {}).get("bnnbench", {}).get("check")
    except (OSError, tomlfile.TOMLDecodeError) as error:
        raise UsageError(f"cannot read check settings from {pyproject}: {error}") from None
    if table is None:
        return DEFAULT_CHECK
    try:
        tolerances = {name: Tolerance(**values) for name, values in table.get("tolerance", {}).items()}
        return CheckConfig(gate=tuple(table.get("gate", DEFAULT_CHECK.gate)),
                           sigmas=float(table.get("sigmas", DEFAULT_CHECK.sigmas)), tolerances=tolerances)
    except TypeError as error:
        raise UsageError(f"{pyproject}: bad [tool.bnnbench.check] table: {error}") from None


def aggregate(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard error and count over seeds per (task, version, method, config, split, corruption,
    severity, metric); `n_failed` counts the group's failed runs. A group whose every run failed keeps
    placeholder rows (clean test nll and ece, mean NaN, n 0) so its failure is visible to `check`."""
    if runs.empty:
        return pd.DataFrame(columns=BASELINE_COLUMNS)
    runs, metrics = with_variant(runs), with_variant(metrics)
    failed = (runs.assign(failed=runs["status"] != "ok").groupby(GROUP)["failed"].sum()
              .rename("n_failed").reset_index())
    ok = metrics[metrics["status"] == "ok"] if "status" in metrics else metrics
    if ok.empty:
        table = pd.DataFrame(columns=BASELINE_COLUMNS)
    else:
        table = _mean_stderr(ok.groupby([*GROUP, *CELL], sort=True)["value"]).merge(failed, on=GROUP, how="left")
    only_failed = failed.merge(table[GROUP].drop_duplicates(), on=GROUP, how="left", indicator=True)
    only_failed = only_failed[only_failed["_merge"] == "left_only"].drop(columns="_merge")
    placeholders = [dict(group, split="test", corruption="none", severity=0, metric=metric, mean=math.nan,
                         stderr=math.nan, n=0) for group in only_failed.to_dict("records")
                    for metric in ("nll", "ece")]
    table = pd.concat([table, pd.DataFrame(placeholders)], ignore_index=True) if placeholders else table
    return table[BASELINE_COLUMNS].sort_values([*GROUP, *CELL], ignore_index=True)


def with_variant(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with a `data_variant` column, "standard" where it is absent or empty."""
    if "data_variant" not in frame:
        return frame.assign(data_variant=DEFAULT_VARIANT)
    return frame.assign(data_variant=frame["data_variant"].fillna(DEFAULT_VARIANT))


def _mean_stderr(grouped) -> pd.DataFrame:
    """mean, n and standard error of the mean (0 for a single seed) of each group of a SeriesGroupBy."""
    table = grouped.agg(mean="mean", n="count", std=lambda v: v.std(ddof=1)).reset_index()
    table["stderr"] = (table["std"] / np.sqrt(table["n"])).fillna(0.0)
    return table.drop(columns="std")


def summary_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows a baseline keeps: validation, clean test and the corruption means (not each corruption,
    whose seed noise is large)."""
    keep = (table["corruption"].isin(["none", "mean"]))
    return table[keep].reset_index(drop=True)


BASELINE_NUMBERS = ["task_version", "severity", "mean", "stderr", "n", "n_failed"]


def load_baseline(path: Path) -> pd.DataFrame:
    """Read a baseline CSV; raises UsageError naming missing columns or the first value that is not a number."""
    try:
        table = pd.read_csv(path, dtype={"corruption": str, "split": str, "config_hash": str, "data_variant": str})
    except (OSError, ValueError) as error:  # pandas' parser errors and bad UTF-8 (a binary file) are ValueErrors
        lines = str(error).strip().splitlines()
        raise UsageError(f"cannot read baseline '{path}': {lines[0] if lines else type(error).__name__}") from None
    table = with_variant(table)  # baselines written before data variants existed
    missing = [column for column in BASELINE_COLUMNS if column not in table.columns]
    if missing:
        raise UsageError(f"baseline '{path}' lacks columns {', '.join(missing)}; "
                         f"expected columns: {', '.join(BASELINE_COLUMNS)}")
    for column in BASELINE_NUMBERS:  # empty is NaN (a failed group's mean), anything else must parse
        parsed = pd.to_numeric(table[column], errors="coerce")
        bad = (parsed.isna() & table[column].notna()).to_numpy().nonzero()[0]
        if len(bad):
            raise UsageError(f"baseline '{path}' line {bad[0] + 2}: '{table[column].iloc[bad[0]]}' in column "
                             f"{column} is not a number")
        table[column] = parsed
    return table


def _mark(base: dict[str, Any], new: dict[str, Any] | None, config: CheckConfig) -> str:
    if new is None:
        return "?"
    base_failed, new_failed = base["n_failed"] > 0, new["n_failed"] > 0
    if new_failed and not base_failed:
        return "!"
    if base_failed and not new_failed:
        return "*"
    if new.get("missing") and not new_failed:
        return "?"
    if base["task_version"] != new["task_version"] or base["config_hash"] != new["config_hash"]:
        return "x"
    if new["n"] == 0 or base["n"] == 0:
        return " "
    badness = METRICS.get(base["metric"]).badness if base["metric"] in METRICS else float
    worse = badness(new["mean"]) - badness(base["mean"])
    if abs(new["mean"] - base["mean"]) <= config.tolerance(base["metric"]).of(base["mean"]):
        return " "
    if base["n"] >= 2 and new["n"] >= 2:
        half_widths = config.sigmas * (base["stderr"] + new["stderr"])
        if abs(new["mean"] - base["mean"]) <= half_widths:
            return "~"
    return "+" if worse > 0 else "-"


def check(baseline: pd.DataFrame, new: pd.DataFrame, config: CheckConfig) -> pd.DataFrame:
    """One row per baseline row: base and new mean, ratio, mark and whether the metric is gated.

    `new` is `aggregate(...)` of the new results. Rows match on task, method, split, corruption,
    severity and metric; version and configuration decide comparability. A group whose runs failed is
    looked up at the group level, since failed runs have no metric rows.
    """
    match = ["task", "data_variant", "method", *CELL]
    new_rows = {tuple(row[k] for k in match): row for row in new.to_dict("records")}
    new_groups = {(row["task"], row["data_variant"], row["method"]): row for row in new.to_dict("records")}
    out = []
    for base in baseline.to_dict("records"):
        found = new_rows.get(tuple(base[k] for k in match))
        group = new_groups.get((base["task"], base["data_variant"], base["method"]))
        if found is None and group is not None:  # failed runs have no metric rows: judge the group
            found = dict(group, mean=math.nan, stderr=math.nan, n=0, missing=True)
        mark = _mark(base, found, config)
        new_mean = found["mean"] if found else math.nan
        out.append({**{k: base[k] for k in match}, "base": base["mean"], "new": new_mean,
                    "ratio": new_mean / base["mean"] if base["mean"] else math.nan, "mark": mark,
                    "gated": base["metric"] in config.gate})
    result = pd.DataFrame(out, columns=[*match, "base", "new", "ratio", "mark", "gated"])
    order = {"!": 0, "+": 1, "~": 2, "x": 3, "?": 4, "*": 5, "-": 6, " ": 7}
    return result.sort_values("mark", key=lambda marks: marks.map(order), kind="stable", ignore_index=True)


def check_failed(result: pd.DataFrame) -> bool:
    """True when a gated metric regressed (`+`) or a run newly fails (`!`)."""
    return bool((result["gated"] & result["mark"].isin(["+", "!"])).any())


def leaderboard(runs: pd.DataFrame, table: pd.DataFrame, metrics: list[str] | None = None,
                rank_by: str | None = None, resolution: dict[tuple, dict[str, float]] | None = None) -> pd.DataFrame:
    """A long leaderboard: one row per (task, version, variant, method label, column) with mean, stderr, n,
    rank and best. Columns are each metric on the clean test split, its mean over corruptions
    ("<metric> corrupted", when present), OOD detection averaged over the OOD sets ("<metric> ood"), fit
    seconds and peak memory; `rank` is the method's mean rank over the quality columns (1 is best), or its rank
    in the column `rank_by` alone (a fidelity leaderboard ranks by `agreement` with the HMC reference).
    `resolution` ({(task, version, variant): {column: smallest resolved difference}}, an HMC reference's) makes every
    mean within that distance of a column's best count as best too: the reference cannot tell them apart."""
    if table.empty:
        return pd.DataFrame(columns=[*TASK_KEY, "method", "column", "mean", "stderr", "n",
                                     "higher_is_better", "best", "rank"])
    table, runs = with_variant(table[table["n"] > 0]), with_variant(runs)
    labels = method_labels(table)
    clean = table[(table["split"] == "test") & (table["corruption"] == "none")].assign(column=table["metric"])
    corrupted = table[(table["split"] == "test") & (table["corruption"] == "mean") & (table["severity"] == 0)]
    corrupted = corrupted.assign(column=corrupted["metric"] + " corrupted")
    ood = table[(table["split"] == "ood") & (table["corruption"] == "mean")]
    ood = ood.assign(column=ood["metric"] + " ood")
    quality = pd.concat([clean, corrupted, ood], ignore_index=True)
    if metrics:
        quality = quality[quality["metric"].isin(metrics)]
    quality = quality.assign(higher_is_better=quality["metric"].map(lambda m: METRICS.get(m).higher_is_better),
                             score=[METRICS.get(m).badness(v) for m, v in zip(quality["metric"], quality["mean"],
                                                                              strict=True)],
                             kind="quality")
    board = pd.concat([quality, _costs(runs)], ignore_index=True)
    board["method"] = [labels.get((t, m, h), m) for t, m, h in zip(board["task"], board["method"],
                                                                     board["config_hash"], strict=True)]
    board["best"] = False
    board["rank"] = math.nan
    board["column_rank"] = math.nan  # stays so where no run finished: there is nothing to rank
    for (*task_key, column), rows in board.groupby([*TASK_KEY, "column"]):
        score = rows["score"].to_numpy()
        unresolved = (resolution or {}).get(tuple(task_key), {}).get(column, 0.0)
        board.loc[rows.index, "best"] = (score == score.min()) | (score - score.min() < unresolved)
        board.loc[rows.index, "column_rank"] = pd.Series(score, index=rows.index).rank(method="min")
    ranked = board[board["kind"] == "quality"] if rank_by is None else board[board["column"] == rank_by]
    mean_rank = ranked.groupby([*TASK_KEY, "method"])["column_rank"].mean().rename("rank").reset_index()
    board = board.drop(columns=["rank"]).merge(mean_rank, on=[*TASK_KEY, "method"], how="left")
    order = {name: i for i, name in enumerate(METRICS.names())}
    board["column_order"] = [(kind != "quality", column.endswith(" corrupted"), column.endswith(" ood"),
                              order.get(column.split()[0], 0))
                             for kind, column in zip(board["kind"], board["column"], strict=True)]
    board = board.sort_values([*TASK_KEY, "rank", "method", "column_order"], ignore_index=True)
    columns = [*TASK_KEY, "method", "column", "mean", "stderr", "n", "higher_is_better", "best", "rank"]
    tuning = _tuning(runs, labels)
    if tuning:  # some runs took their settings from `bnnbench tune`: say for each method where its settings came from
        board["tuning"] = [tuning.get((task, method), "hand") for task, method in zip(board["task"], board["method"],
                                                                                      strict=True)]
        columns.append("tuning")
    return board[columns]


def unresolved_pairs(board: pd.DataFrame, resolution: dict[str, float]) -> dict[str, list[tuple[str, str, float]]]:
    """{column: [(method, method, gap)]} of one task's leaderboard: the pairs whose means differ by less than the
    reference's resolution in that column (a tie, as far as the reference can tell), closest first."""
    ties = {}
    for column, limit in resolution.items():
        rows = list(board[(board["column"] == column) & board["n"].notna()].sort_values("mean").itertuples())
        pairs = [(a.method, b.method, abs(a.mean - b.mean)) for i, a in enumerate(rows) for b in rows[i + 1:]
                 if abs(a.mean - b.mean) < limit]
        ties[column] = sorted(pairs, key=lambda pair: (round(pair[2], 12), pair[0], pair[1]))
    return ties


def with_published(board: pd.DataFrame, tables: list[PublishedTable], metrics: list[str] | None = None
                   ) -> pd.DataFrame:
    """`board` (a `leaderboard`) with one reference row per published figure of its tasks (of `metrics`, when
    given), appended after the ranks and bests are set, so that a paper's number never ranks, is never best and
    never counts as a seed: its stderr is NaN, its n, rank and best empty. Where any is added, a `kind` column says
    "run" or "published" and `note` holds each published row's footnote; a board none applies to comes back as it
    was, so outputs without published figures keep their columns."""
    rows = []
    for (task, version, variant), _ in board.groupby(TASK_KEY, sort=True):
        for table in tables:
            for figure in table.figures_for(task, metrics):
                rows.append({"task": task, "task_version": version, "data_variant": variant,
                             "method": table.method_label, "column": figure.metric, "mean": figure.shown,
                             "stderr": math.nan, "n": pd.NA, "rank": math.nan, "best": False,
                             "higher_is_better": METRICS.get(figure.metric).higher_is_better,
                             "kind": "published", "note": table.footnote(figure)})
    if not rows:
        return board
    runs = board.assign(kind="run", note="", n=board["n"].astype("Int64"))
    published = pd.DataFrame(rows, columns=[*board.columns, "kind", "note"]).astype({"n": "Int64", "best": bool})
    return pd.concat([runs, published], ignore_index=True).sort_values(TASK_KEY, kind="stable", ignore_index=True)


def _tuning(runs: pd.DataFrame, labels: dict[tuple[str, str, str], str]) -> dict[tuple[str, str], str]:
    """{(task, method label): "24 trials, 15 pruned (default, 5.2 full runs)"} for configurations whose runs applied
    a `bnnbench tune` file: its trials, how many were pruned, the budget and the study's cost in full-run
    equivalents (a file from before pruning: its run seconds)."""
    if "tuned" not in runs:
        return {}
    tuning = {}
    for row in runs.itertuples():
        record = row.tuned
        if isinstance(record, dict):
            label = labels.get((row.task, row.method, row.config_hash), row.method)
            seconds, full_runs, pruned = record.get("seconds"), record.get("full_runs"), record.get("pruned")
            spent = (f", {full_runs:g} full runs" if isinstance(full_runs, int | float) else
                     f", {seconds:.0f} s" if isinstance(seconds, int | float) else "")
            pruned = f", {pruned} pruned" if isinstance(pruned, int) else ""
            tuning[(row.task, label)] = f"{record.get('trials')} trials{pruned} ({record.get('budget')}{spent})"
    return tuning


def method_labels(table: pd.DataFrame) -> dict[tuple[str, str, str], str]:
    """{(task, method, config_hash): label}: the method's name, with the hash's head where a task holds runs of
    one method under several configurations."""
    labels = {}
    for (task, method), rows in table.groupby(["task", "method"]):
        hashes = sorted(rows["config_hash"].unique())
        for hash_ in hashes:
            labels[(task, method, hash_)] = method if len(hashes) == 1 else f"{method}[{hash_[:6]}]"
    return labels


def _costs(runs: pd.DataFrame) -> pd.DataFrame:
    ok = runs[runs["status"] == "ok"]
    frames = []
    for source, column in (("fit_seconds", "fit s"), ("peak_rss_mb", "peak MB")):
        if source not in ok:
            continue
        stats = _mean_stderr(ok.groupby(GROUP)[source])
        frames.append(stats.assign(column=column, higher_is_better=False, score=stats["mean"], kind="cost"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
