"""Paired comparisons against a baseline method (`bnnbench compare --against map`): each method's difference from the
baseline on every metric and split, with a confidence interval, so that a reader can see which gaps are real.

Runs pair by task, seed and split: a method's seed-s run against the baseline's seed-s run, on the same test
examples. The difference is the mean over the paired seeds of (method − baseline); for a metric with an optimum (a
coverage's nominal level) it is the difference of the distances to the optimum, so that below 0 is better for
every such metric.

The interval comes from a **two-way paired bootstrap** where every run saved its metrics' per-example terms
(`--save-predictions` writes pointwise.npz; `Metric.terms`): each replicate draws the seeds with replacement and,
independently, the test examples with replacement, and recomputes every run's metric on those examples from its
terms. The two methods get the same draws, which is what pairs them; every seed gets the same example draw, since
the seeds share one test set (the task's split seed is fixed), so that the interval covers both the training
randomness over seeds and the sampling of the test set. A corruption mean resamples the same examples under every
corruption (they are copies of one test set). The percentile interval of the replicates is reported.

Where some run lacks the terms (it ran without `--save-predictions`, or the metric has none: OOD detection, the
parameter-posterior metrics), the interval is Student's t interval of the per-seed differences, which covers the
seeds' randomness only; with one common seed there is no interval. The `interval` column says which applies.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bnnbench.comparison import TASK_KEY, method_labels, with_variant
from bnnbench.errors import UsageError
from bnnbench.metrics import METRICS
from bnnbench.results import run_directory

__all__ = ["INTERVALS", "PAIRED_COLUMNS", "PairedSettings", "interval_note", "paired_differences"]

INTERVALS = {
    "bootstrap": "two-way paired bootstrap ({replicates} replicates): seeds and test examples resampled with "
                 "replacement, the same draws for both methods and every seed; percentile interval",
    "t-seeds": "Student's t interval of the per-seed differences (no per-example terms: seeds' randomness only)",
    "none": "one paired seed and no per-example terms: no interval",
}
CELL = ["split", "corruption", "severity", "metric"]
PAIRED_COLUMNS = [*TASK_KEY, "method", "baseline", *CELL, "seeds", "method_mean", "baseline_mean", "difference",
                  "low", "high", "level", "interval", "significant", "verdict", "quantity"]


@dataclass(frozen=True)
class PairedSettings:
    """The baseline method (its name, or its label `name[hash6]` where a task holds several configurations), the
    interval's level and the bootstrap's size and seed."""

    against: str
    level: float = 0.95
    replicates: int = 2000
    seed: int = 0


def interval_note(used: set[str], settings: PairedSettings) -> list[str]:
    """One line per interval method that `used` names, as printed under the table."""
    return [f"{kind}: {INTERVALS[kind].format(replicates=settings.replicates)}" for kind in INTERVALS if kind in used]


def paired_differences(runs: pd.DataFrame, metrics: pd.DataFrame, results_dir: Path, settings: PairedSettings,
                       metric_names: list[str] | None = None) -> pd.DataFrame:
    """One row per (task, method, split, corruption, severity, metric) with the paired difference from the baseline
    and its interval (PAIRED_COLUMNS). Raises UsageError when no task has the baseline."""
    if not 0 < settings.level < 1:
        raise UsageError(f"the interval's level must lie in (0, 1), not {settings.level}")
    if settings.replicates < 100:
        raise UsageError(f"a bootstrap needs at least 100 replicates, not {settings.replicates}")
    runs, metrics = with_variant(runs[runs["status"] == "ok"]), with_variant(metrics)
    metrics = metrics[metrics["status"] == "ok"] if "status" in metrics else metrics
    metrics = metrics[metrics["split"] != "val"]  # the leaderboard's splits: validation is the methods' own
    if metric_names:
        metrics = metrics[metrics["metric"].isin(metric_names)]
    labels = method_labels(runs)
    runs = runs.assign(label=[labels[key] for key in zip(runs["task"], runs["method"], runs["config_hash"],
                                                            strict=True)])
    terms = _TermStore(results_dir, runs)
    rows, with_baseline = [], []
    for task_key, task_runs in runs.groupby(TASK_KEY, sort=True):
        baseline = task_runs[task_runs["label"] == settings.against]
        if baseline.empty:
            continue
        with_baseline.append(task_key[0])
        draws = _Draws(settings)
        task_metrics = metrics[metrics["run_id"].isin(task_runs["run_id"])]
        values = task_metrics.pivot_table(index=CELL, columns="run_id", values="value", aggfunc="first")
        for label, method_runs in task_runs.groupby("label", sort=True):
            if label == settings.against:
                continue
            pairs = baseline.merge(method_runs, on="seed", suffixes=("_base", "_method")).sort_values("seed")
            if pairs.empty:
                continue
            rows += _method_rows(task_key, label, settings, pairs, values, terms, draws)
    if not with_baseline:
        there = sorted(set(runs["label"]))
        raise UsageError(f"no successful run of --against '{settings.against}' in these results; methods there: "
                         f"{', '.join(there) or 'none'}")
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def _method_rows(task_key: tuple, label: str, settings: PairedSettings, pairs: pd.DataFrame,
                 values: pd.DataFrame, terms: _TermStore, draws: _Draws) -> list[dict]:
    """The rows of one method against the baseline; `values` holds the task's metrics, a column per run."""
    base_ids, method_ids = list(pairs["run_id_base"]), list(pairs["run_id_method"])
    if not {*base_ids, *method_ids} <= set(values.columns):
        return []
    values = values[[*base_ids, *method_ids]].dropna()
    numbers = values.to_numpy(float)
    seeds = len(base_ids)
    rows = []
    for cell, row in zip(values.index, numbers, strict=True):
        split, corruption, severity, metric = cell
        definition = METRICS.get(metric) if metric in METRICS else None
        distance = _distance(definition)
        base, method = row[:seeds], row[seeds:]
        per_seed = distance(method) - distance(base)
        replicates = _bootstrap(cell, values.index, base_ids, method_ids, terms, draws, definition)
        low, high, kind = _interval(per_seed, replicates, settings.level)
        difference = float(per_seed.mean())
        significant = bool(low > 0 or high < 0)
        better = difference < 0 if definition is None or definition.optimum is not None or not \
            definition.higher_is_better else difference > 0
        rows.append({**dict(zip(TASK_KEY, task_key, strict=True)), "method": label, "baseline": settings.against,
                     "split": split, "corruption": corruption, "severity": int(severity), "metric": metric,
                     "seeds": len(base_ids), "method_mean": float(method.mean()), "baseline_mean": float(base.mean()),
                     "difference": difference, "low": low, "high": high, "level": settings.level, "interval": kind,
                     "significant": significant,
                     "verdict": ("better" if better else "worse") if significant else "not resolved",
                     "quantity": "difference" if definition is None or definition.optimum is None else
                     f"difference of |value - {definition.optimum:g}|"})
    return rows


def _distance(definition) -> Callable[[np.ndarray], np.ndarray]:
    """The quantity that is differenced: the value, or its distance to the metric's optimum."""
    if definition is not None and definition.optimum is not None:
        return lambda value: np.abs(value - definition.optimum)
    return lambda value: value


def _interval(per_seed: np.ndarray, replicates: np.ndarray | None, level: float) -> tuple[float, float, str]:
    if replicates is not None:
        tail = 100 * (1 - level) / 2
        low, high = np.percentile(replicates, [tail, 100 - tail])
        return float(low), float(high), "bootstrap"
    if len(per_seed) < 2:
        return math.nan, math.nan, "none"
    from scipy.stats import t

    half = t.ppf(0.5 + level / 2, len(per_seed) - 1) * per_seed.std(ddof=1) / math.sqrt(len(per_seed))
    return float(per_seed.mean() - half), float(per_seed.mean() + half), "t-seeds"


def _components(cell: tuple, cells: pd.Index) -> list[tuple]:
    """The cells whose per-example terms make up `cell`: itself, or for a corruption mean (`corruption = mean`) each
    corruption at its severity (severity 0: at every severity)."""
    split, corruption, severity, metric = cell
    if corruption != "mean":
        return [cell]
    return [other for other in cells if other[0] == split and other[3] == metric and other[1] not in ("none", "mean")
            and (severity == 0 or other[2] == severity)]


def _bootstrap(cell: tuple, cells: pd.Index, base_ids: list[str], method_ids: list[str], terms: _TermStore,
               draws: _Draws, definition) -> np.ndarray | None:
    """The bootstrap replicates of the paired difference (B,), or None where some run lacks the terms."""
    if definition is None or not definition.terms or cell[0] == "ood":
        return None
    components = _components(cell, cells)
    if not components:
        return None
    seeds = len(base_ids)
    per_seed = np.zeros((seeds, draws.settings.replicates))
    for component in components:
        key = "|".join(str(part) for part in component)
        sizes = {terms.size(run_id, key) for run_id in [*base_ids, *method_ids]}
        if None in sizes or len(sizes) > 1:  # a run without terms, or on another test set: nothing to pair
            return None
        weights = draws.examples(sizes.pop())
        for s in range(seeds):
            per_seed[s] += terms.resampled(method_ids[s], key, weights) - terms.resampled(base_ids[s], key, weights)
    per_seed /= len(components)
    chosen = draws.seeds(seeds)  # (B, S) seed indices
    return per_seed[chosen, np.arange(draws.settings.replicates)[:, None]].mean(axis=1)


class _Draws:
    """The bootstrap's draws of one task, shared by its methods and cells (common random numbers): example weights
    per test-set size, seed indices per number of paired seeds."""

    def __init__(self, settings: PairedSettings) -> None:
        self.settings = settings
        self._weights: dict[int, np.ndarray] = {}
        self._seeds: dict[int, np.ndarray] = {}

    def examples(self, n: int) -> np.ndarray:
        """(B, n) weights: how often each example is drawn in a replicate, over n (so `weights @ terms` is a mean)."""
        if n not in self._weights:
            rng = np.random.default_rng([self.settings.seed, 0, n])
            picked = rng.integers(0, n, (self.settings.replicates, n))
            offsets = (np.arange(self.settings.replicates) * n)[:, None]
            counts = np.bincount((picked + offsets).ravel(), minlength=self.settings.replicates * n)
            self._weights[n] = counts.reshape(self.settings.replicates, n) / n
        return self._weights[n]

    def seeds(self, count: int) -> np.ndarray:
        if count not in self._seeds:
            rng = np.random.default_rng([self.settings.seed, 1, count])
            self._seeds[count] = rng.integers(0, count, (self.settings.replicates, count))
        return self._seeds[count]


class _TermStore:
    """Each run's pointwise.npz, read once (without pickle: a results file is data), and each run's resampled
    metric per cell, computed once (a baseline's serves every method, a corruption's every corruption mean)."""

    def __init__(self, results_dir: Path, runs: pd.DataFrame) -> None:
        self._paths = {row.run_id: run_directory(Path(results_dir), row.task, row.method, row.run_id)
                       / "pointwise.npz" for row in runs.itertuples()}
        self._loaded: dict[str, dict[str, np.ndarray] | None] = {}
        self._resampled: dict[tuple[str, str], np.ndarray] = {}

    def size(self, run_id: str, key: str) -> int | None:
        """The number of examples of the run's terms under `key`, or None where it has none."""
        found = self._terms(run_id, key)
        return None if found is None else len(found)

    def resampled(self, run_id: str, key: str, weights: np.ndarray) -> np.ndarray:
        """(B,): the run's metric under `key` (or its distance to the optimum) under each replicate's example weights.
        The first call for a run reweights all its terms over as many examples in one matrix product, and keeps
        each metric's replicates in float32 (their differences are read to 4 digits)."""
        if (run_id, key) not in self._resampled:
            found = self._loaded[run_id] or {}
            keys = [name for name, terms in found.items() if len(terms) == weights.shape[1]]
            means = weights @ np.concatenate([found[name] for name in keys], axis=1)
            first = 0
            for name in keys:
                width = found[name].shape[1]
                metric = METRICS.get(name.rsplit("|", 1)[1])
                value = metric.from_mean_terms(means[:, first:first + width])
                self._resampled[(run_id, name)] = _distance(metric)(value).astype(np.float32)
                first += width
        return self._resampled[(run_id, key)]

    def _terms(self, run_id: str, key: str) -> np.ndarray | None:
        if run_id not in self._loaded:
            self._loaded[run_id] = self._read(self._paths[run_id])
        found = self._loaded[run_id]
        return None if found is None else found.get(key)

    @staticmethod
    def _read(path: Path) -> dict[str, np.ndarray] | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (OSError, ValueError):
            return None
