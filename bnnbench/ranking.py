"""Rank methods across tasks and test whether their ranks differ (Demšar 2006: Friedman test, Nemenyi post-hoc).

Each task is one block: every method gets its rank on the task's clean test split (rank 1 is best, ties share the
mean of their ranks), and the methods' average ranks over tasks are compared. The statistics are autorank's
(pinned 1.3.0): its Friedman p-value, its Nemenyi critical difference (CD) and the groups of methods whose average
ranks lie within CD of each other, as its CD diagrams draw them. Friedman's test needs a complete block design, so
methods or tasks that would leave holes are left out, and the result says which and why.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bnnbench.comparison import DEFAULT_VARIANT, method_labels, with_variant
from bnnbench.errors import UsageError, unknown_choice
from bnnbench.figures import RankDiagram, rank_figure
from bnnbench.metrics import METRICS

__all__ = ["MIN_METHODS", "MIN_TASKS", "AcrossTasks", "Gap", "cd_figure", "rank_across_tasks"]

MIN_TASKS = 5  # autorank refuses fewer rows (blocks)
# With two populations autorank runs Wilcoxon's signed-rank test instead of Friedman's, and computes no CD.
MIN_METHODS = 3
# autorank's CD takes the studentized range quantile from statsmodels' qsturng, defined for 1 - alpha in [0.1, 0.999]
ALPHA_RANGE = (0.001, 0.9)
# Methods with holes are chosen by trying every subset of them; beyond this many, the sparsest are left out first.
MAX_SEARCHED = 12


@dataclass(frozen=True)
class Gap:
    """A method without a clean-test value on a task: `failed` when it has runs there but none finished (a failed
    group: n 0 or a NaN mean), otherwise it never ran there (or never scored the metric)."""

    task: str
    method: str
    failed: bool

    def text(self) -> str:
        return f"{self.task} (failed)" if self.failed else self.task


@dataclass(frozen=True, eq=False)
class AcrossTasks:
    """Methods ranked across tasks by one clean-test metric, with the Friedman test and the Nemenyi CD.

    `methods` and `average_ranks` run best first; `task_values` (tasks x methods) holds the clean-test means ranked,
    `task_ranks` their per-task ranks (1 best). `cliques` are the groups of methods not significantly different
    (their average ranks within `cd`). Nothing is left out silently: `dropped_methods` and `dropped_tasks` say what
    the complete block design cost, `gaps` every missing (task, method) behind it.
    """

    metric: str
    alpha: float
    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    average_ranks: dict[str, float]
    friedman_statistic: float
    friedman_pvalue: float
    cd: float
    cliques: tuple[tuple[str, ...], ...]
    task_values: pd.DataFrame
    task_ranks: pd.DataFrame
    gaps: tuple[Gap, ...] = ()
    dropped_methods: tuple[str, ...] = ()
    dropped_tasks: dict[str, str] | None = None

    @property
    def significant(self) -> bool:
        """Whether Friedman's test rejects equal ranks at `alpha`; Demšar reads the CD groups only then."""
        return self.friedman_pvalue < self.alpha

    def missing_lines(self) -> list[str]:
        """One line per method or task left out of the ranking, naming what it lacked."""
        lines = []
        for method in self.dropped_methods:
            lacking = [gap.text() for gap in self.gaps if gap.method == method]
            lines.append(f"method {method} left out: no clean-test {self.metric} on {', '.join(lacking)}")
        lines += [f"task {task} left out: {why}" for task, why in (self.dropped_tasks or {}).items()]
        return lines

    def summary_lines(self) -> list[str]:
        """The result in words: what was ranked, the test, the CD, average ranks, groups and what was left out."""
        spec = METRICS.get(self.metric)
        direction = (f"closer to {spec.optimum:g}" if spec.optimum is not None
                     else "higher" if spec.higher_is_better else "lower")
        verdict = "the ranks differ" if self.significant else "no significant difference between the ranks"
        groups = "; ".join("{" + ", ".join(clique) + "}" for clique in self.cliques) or "none"
        return [f"{len(self.methods)} methods ranked on {len(self.tasks)} tasks by clean-test {self.metric} "
                f"({direction} is better; rank 1 is best)",
                f"Friedman chi2 = {self.friedman_statistic:.3f}, p = {self.friedman_pvalue:.3g} "
                f"(alpha = {self.alpha:g}): {verdict}",
                f"Nemenyi critical difference CD = {self.cd:.3f}",
                "average ranks: " + ", ".join(f"{method} {rank:.2f}" for method, rank in self.average_ranks.items()),
                f"not significantly different (within CD): {groups}",
                *self.missing_lines()]

    def rank_table(self) -> pd.DataFrame:
        """Methods (best first) x ("average rank", then each task's rank): the numbers behind the CD diagram."""
        table = self.task_ranks.T.loc[list(self.methods)]
        table.insert(0, "average rank", [self.average_ranks[method] for method in self.methods])
        table.index.name, table.columns.name = "method", None
        return table

    def to_frame(self) -> pd.DataFrame:
        """Tidy rows for a CSV: one per (method, task) with the metric's mean, its rank on the task and the
        method's average rank; methods best first."""
        rows = [{"metric": self.metric, "method": method, "average_rank": self.average_ranks[method], "task": task,
                 "mean": float(self.task_values.loc[task, method]), "rank": float(self.task_ranks.loc[task, method])}
                for method in self.methods for task in self.tasks]
        return pd.DataFrame(rows, columns=["metric", "method", "average_rank", "task", "mean", "rank"])

    def diagram(self) -> RankDiagram:
        """The plain numbers the CD diagram draws (figures sits below this module and never sees this class)."""
        verdict = "ranks differ" if self.significant else "no significant difference"
        title = (f"Average ranks by clean-test {self.metric}: {len(self.methods)} methods on {len(self.tasks)} tasks"
                 f"\nFriedman p = {self.friedman_pvalue:.3g} ({verdict} at alpha = {self.alpha:g})")
        return RankDiagram(title=title, ranks=tuple(self.average_ranks.items()), cd=self.cd, cliques=self.cliques)


def cd_figure(result: AcrossTasks, out: Path) -> Path:
    """Draw `result`'s critical-difference diagram as a PNG at `out`."""
    return rank_figure(result.diagram(), out)


def rank_across_tasks(table: pd.DataFrame, metric: str, tasks: Sequence[str] | None = None,
                      methods: Sequence[str] | None = None, alpha: float = 0.05) -> AcrossTasks:
    """Rank the methods of `table` (`comparison.aggregate` output) across its tasks by the clean-test (split "test",
    corruption "none") mean of `metric`, and test with Friedman + Nemenyi whether the ranks differ.

    `tasks` and `methods` (method labels, see `comparison.method_labels`) restrict what is ranked. Each task name is
    one block: where a task holds several versions or data variants, its newest version is ranked (the
    "standard" variant first), the others are reported as dropped tasks rather than counted twice. Friedman needs
    every method on every task; of the methods and tasks with holes, the largest complete design is kept (most
    task x method cells; ties keep more methods), and each method or task left out is reported with what it lacked.
    Raises UsageError for an unknown metric, task or method, an alpha autorank cannot use, or fewer than
    MIN_METHODS methods on MIN_TASKS tasks once the design is complete."""
    alpha = _checked_alpha(alpha)
    if table.empty:
        raise UsageError("no results to rank: the table is empty")
    table = with_variant(table)
    clean = table[(table["split"] == "test") & (table["corruption"] == "none")]
    present = sorted(clean["metric"].unique())
    if metric not in present:
        raise unknown_choice("metric", metric, present, "clean-test metrics of these results")
    badness = METRICS.get(metric).badness
    if tasks is not None:
        known = sorted(table["task"].unique())
        for name in tasks:
            if name not in known:
                raise unknown_choice("task", name, known)
        table = table[table["task"].isin(list(tasks))]
    table, dropped_tasks = _newest_blocks(table)
    values, failed = _cells(table, metric)
    if methods is not None:
        known = sorted({method for _, method in values} | {method for _, method in failed})
        for name in methods:
            if name not in known:
                raise unknown_choice("method", name, known)
        values = {key: value for key, value in values.items() if key[1] in methods}
        failed = {key for key in failed if key[1] in methods}
    with_result = sorted({task for task, _ in values})
    for task in sorted(set(table["task"]) - set(with_result)):
        failed_there = sorted(method for failed_task, method in failed if failed_task == task)
        dropped_tasks[task] = f"no finished run has a clean-test {metric}" + (
            f" (failed: {', '.join(failed_there)})" if failed_there else "")
    all_methods = sorted({method for _, method in values} | {method for _, method in failed})
    gaps = tuple(Gap(task, method, (task, method) in failed) for method in all_methods for task in with_result
                 if (task, method) not in values)
    if len(with_result) < MIN_TASKS:
        raise UsageError(f"ranking methods across tasks needs a clean-test {metric} on at least {MIN_TASKS} tasks "
                         f"(autorank's minimum); these results hold {len(with_result)}: "
                         f"{', '.join(with_result) or 'none'}")
    ranked_methods = sorted({method for _, method in values})
    if len(ranked_methods) < MIN_METHODS:
        raise UsageError(f"ranking methods across tasks needs at least {MIN_METHODS} methods (with 2, autorank runs "
                         f"Wilcoxon's test, not Friedman's, and has no critical difference); these results hold "
                         f"{len(ranked_methods)} with a clean-test {metric}: {', '.join(ranked_methods) or 'none'}")
    kept_methods, kept_tasks = _complete_design(values, with_result, ranked_methods)
    if len(kept_methods) < MIN_METHODS or len(kept_tasks) < MIN_TASKS:
        raise UsageError(f"no {MIN_METHODS} methods share a clean-test {metric} on {MIN_TASKS} tasks: the largest "
                         f"complete set is {len(kept_methods)} method(s) on {len(kept_tasks)} task(s); "
                         f"{len(gaps)} (task, method) pairs lack a result")
    for task in with_result:
        if task not in kept_tasks:
            lacking = [f"{method} (failed)" if (task, method) in failed else method
                       for method in kept_methods if (task, method) not in values]
            dropped_tasks[task] = f"lacks a clean-test {metric} of {', '.join(lacking)}"
    dropped_methods = tuple(method for method in all_methods if method not in kept_methods)
    task_values = pd.DataFrame([[values[(task, method)] for method in kept_methods] for task in kept_tasks],
                               index=pd.Index(kept_tasks, name="task"), columns=pd.Index(kept_methods, name="method"))
    badness_table = task_values.apply(lambda column: column.map(badness))
    return _ranked(metric, alpha, task_values, badness_table, gaps, dropped_methods,
                   dict(sorted(dropped_tasks.items())))


def _checked_alpha(alpha: float) -> float:
    low, high = ALPHA_RANGE
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not low <= alpha < high:
        raise UsageError(f"alpha {alpha!r} is not a significance level autorank can use; give a number from {low:g} "
                         f"up to (not including) {high:g}, e.g. 0.05")
    return float(alpha)


def _newest_blocks(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """`table` cut to one (version, data variant) per task, its newest version, the standard variant first (then
    the variant with most methods); the others as {"task vN (variant)": why} for the dropped-task report."""
    keep, dropped = [], {}
    for task, rows in table.groupby("task", sort=True):
        blocks = rows.groupby(["task_version", "data_variant"])["method"].nunique().reset_index()
        blocks = blocks.assign(standard=blocks["data_variant"] == DEFAULT_VARIANT)
        blocks = blocks.sort_values(["task_version", "standard", "method", "data_variant"],
                                    ascending=[False, False, False, True])
        chosen = blocks.iloc[0]
        keep.append(rows[(rows["task_version"] == chosen["task_version"])
                         & (rows["data_variant"] == chosen["data_variant"])])
        for block in blocks.iloc[1:].itertuples():
            name = f"{task} v{block.task_version}" + ("" if block.standard else f" ({block.data_variant})")
            variant = "" if chosen["standard"] else f" ({chosen['data_variant']})"
            dropped[name] = f"{task} is ranked by its v{chosen['task_version']}{variant} results, counted once"
    return pd.concat(keep, ignore_index=True), dropped


def _cells(table: pd.DataFrame, metric: str) -> tuple[dict[tuple[str, str], float], set[tuple[str, str]]]:
    """({(task, method label): clean-test mean}, {(task, method label) of failed groups}). A group without a mean of
    `metric` (n 0 or NaN) counts as failed when some of its runs failed; an infinite mean is a result, the worst."""
    clean = table[(table["split"] == "test") & (table["corruption"] == "none") & (table["metric"] == metric)]
    finished = clean[(clean["n"] > 0) & clean["mean"].notna()]
    labels = method_labels(finished)
    values = {}
    for row in finished.itertuples():
        values[(row.task, labels[(row.task, row.method, row.config_hash)])] = float(row.mean)
    groups = table.groupby(["task", "method", "config_hash"])["n_failed"].max().reset_index()
    failed = set()
    for row in groups[groups["n_failed"] > 0].itertuples():
        key = (row.task, labels.get((row.task, row.method, row.config_hash), row.method))
        if key not in values:
            failed.add(key)
    return values, failed


def _complete_design(values: dict[tuple[str, str], float], tasks: list[str], methods: list[str]
                     ) -> tuple[list[str], list[str]]:
    """The methods and tasks of the largest complete block design: methods present on every task are always kept
    (keeping one never costs a task); of the others, every subset is tried and the one whose common tasks give the
    most cells wins, among those autorank accepts (at least MIN_METHODS x MIN_TASKS) first, then more methods."""
    masks = {method: sum(1 << i for i, task in enumerate(tasks) if (task, method) in values) for method in methods}
    everywhere = (1 << len(tasks)) - 1
    complete = [method for method in methods if masks[method] == everywhere]
    partial = sorted((method for method in methods if masks[method] != everywhere),
                     key=lambda method: (-masks[method].bit_count(), method))[:MAX_SEARCHED]
    best_key, best = None, (complete, everywhere)
    for size in range(len(partial), -1, -1):
        for subset in itertools.combinations(partial, size):
            shared = everywhere
            for method in subset:
                shared &= masks[method]
            n_methods, n_tasks = len(complete) + size, shared.bit_count()
            key = (n_methods >= MIN_METHODS and n_tasks >= MIN_TASKS, n_methods * n_tasks, n_methods)
            if best_key is None or key > best_key:
                best_key, best = key, (complete + list(subset), shared)
    chosen, shared = best
    return sorted(chosen), [task for i, task in enumerate(tasks) if shared >> i & 1]


def _ranked(metric: str, alpha: float, task_values: pd.DataFrame, badness: pd.DataFrame, gaps: tuple[Gap, ...],
            dropped_methods: tuple[str, ...], dropped_tasks: dict[str, str]) -> AcrossTasks:
    """autorank on the tasks x methods badness table (order 'ascending': the lowest badness gets rank 1, so rank 1 is
    the best method whatever the metric's direction), forced to Friedman + Nemenyi."""
    from autorank import autorank
    from autorank._util import get_sorted_rank_groups  # the groups autorank's own CD diagram joins with bars
    from scipy.stats import friedmanchisquare

    if (badness.nunique(axis=1) == 1).all():
        raise UsageError(f"every task ties all {badness.shape[1]} methods on clean-test {metric}: there is nothing "
                         "to rank (Friedman's statistic is undefined)")
    data = badness.reset_index(drop=True).rename_axis(columns=None)
    # autorank prints its result frame and a note on the forced mode whatever `verbose` says, and warns about the
    # normality and homoscedasticity checks that force_mode makes moot
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = autorank(data, alpha=alpha, verbose=False, order="ascending", force_mode="nonparametric",
                          approach="frequentist")
        statistic = float(friedmanchisquare(*data.T.to_numpy()).statistic)  # autorank keeps only the p-value
    if (result.omnibus, result.posthoc) != ("friedman", "nemenyi") or not math.isfinite(result.pvalue):
        raise UsageError(f"autorank ran {result.omnibus} + {result.posthoc} with p = {result.pvalue}, not a Friedman "
                         f"test with a Nemenyi critical difference; clean-test {metric} cannot be ranked here")
    order = sorted(result.rankdf.index, key=lambda method: (result.rankdf.at[method, "meanrank"], method))
    _, names, groups = get_sorted_rank_groups(result._replace(rankdf=result.rankdf.loc[order]), False)
    task_ranks = badness.rank(axis=1, method="average", ascending=True)
    return AcrossTasks(metric=metric, alpha=alpha, tasks=tuple(task_values.index), methods=tuple(order),
                       average_ranks={method: float(result.rankdf.at[method, "meanrank"]) for method in order},
                       friedman_statistic=statistic, friedman_pvalue=float(result.pvalue), cd=float(result.cd),
                       cliques=tuple(tuple(names[first:last + 1]) for first, last in groups),
                       task_values=task_values, task_ranks=task_ranks, gaps=gaps, dropped_methods=dropped_methods,
                       dropped_tasks=dropped_tasks)
