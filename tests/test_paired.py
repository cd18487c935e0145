"""`compare --against`: paired differences from a baseline method with confidence intervals (bnnbench.paired).

The references are independent of the bootstrap's code: the central limit theorem's width for a mean of per-example
differences, scipy's t interval for the per-seed fallback, and the metrics registry recomputing a corruption mean."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from scipy.special import log_softmax

from bnnbench.evaluate import pointwise_key
from bnnbench.metrics import METRICS
from bnnbench.paired import PairedSettings, paired_differences
from bnnbench.results import load_results, make_run_id, run_directory, write_run

N, CLASSES = 400, 4


def _predictions(rng: np.random.Generator, labels: np.ndarray, sharpness: float) -> np.ndarray:
    logits = rng.normal(size=(len(labels), CLASSES))
    logits[np.arange(len(labels)), labels] += sharpness
    return log_softmax(logits, axis=1)


def _write(results_dir: Path, method: str, seed: int, splits: dict[tuple[str, str, int], np.ndarray],
           labels: np.ndarray, pointwise: bool = True, metrics=("nll", "acc", "ece")) -> None:
    run_id = make_run_id("t", 1, method, "abcdef0123", seed)
    record = {"run_id": run_id, "task": "t", "task_version": 1, "method": method, "seed": seed, "status": "ok",
              "config_hash": "abcdef0123", "identity": 2}
    rows, terms = [], {}
    for (split, corruption, severity), log_probs in splits.items():
        for metric in metrics:
            rows.append({"run_id": run_id, "task": "t", "task_version": 1, "method": method, "seed": seed,
                         "split": split, "corruption": corruption, "severity": severity, "metric": metric,
                         "value": METRICS.get(metric).score("categorical", log_probs, labels, None)})
            terms[pointwise_key(split, corruption, severity, metric)] = METRICS.get(metric).pointwise(
                "categorical", log_probs, labels, None)
    corrupted = [row for row in rows if row["corruption"] not in ("none", "mean")]
    for metric in metrics:  # the evaluator's corruption mean over all severities
        values = [row["value"] for row in corrupted if row["metric"] == metric]
        if values:
            rows.append({**corrupted[0], "corruption": "mean", "severity": 0, "metric": metric,
                         "value": float(np.mean(values))})
    write_run(run_directory(results_dir, "t", method, run_id), record, rows, pointwise=terms if pointwise else None)


@pytest.fixture
def labels():
    return np.random.default_rng(0).integers(0, CLASSES, N)


def _paired(results_dir: Path, **settings):
    runs, metrics = load_results(results_dir, print)
    return paired_differences(runs, metrics, results_dir, PairedSettings("map", **settings))


def test_one_seed_interval_has_the_central_limit_width_of_the_per_example_differences(tmp_path, labels):
    rng = np.random.default_rng(1)
    base, method = _predictions(rng, labels, 1.0), _predictions(rng, labels, 1.5)
    _write(tmp_path, "map", 0, {("test", "none", 0): base}, labels)
    _write(tmp_path, "better", 0, {("test", "none", 0): method}, labels)
    row = _paired(tmp_path, replicates=4000).set_index("metric").loc["nll"]
    nll = lambda lp: -lp[np.arange(N), labels]  # noqa: E731
    per_example = nll(method) - nll(base)
    assert row["difference"] == pytest.approx(per_example.mean(), abs=1e-12)
    half_width = stats.norm.ppf(0.975) * per_example.std(ddof=0) / math.sqrt(N)
    assert (row["high"] - row["low"]) / 2 == pytest.approx(half_width, rel=0.08)
    assert row["interval"] == "bootstrap" and row["seeds"] == 1
    assert bool(row["significant"]) == (row["high"] < 0 or row["low"] > 0)
    assert row["verdict"] == ("better" if row["high"] < 0 else "not resolved")


def test_identical_methods_differ_by_exactly_zero(tmp_path, labels):
    rng = np.random.default_rng(2)
    for seed in range(3):
        same = _predictions(rng, labels, 1.0)
        _write(tmp_path, "map", seed, {("test", "none", 0): same}, labels)
        _write(tmp_path, "copy", seed, {("test", "none", 0): same}, labels)
    table = _paired(tmp_path)
    assert (table[["difference", "low", "high"]].to_numpy() == 0).all()
    assert not table["significant"].any() and set(table["verdict"]) == {"not resolved"}


def test_without_terms_the_interval_is_students_t_over_seeds(tmp_path, labels):
    rng = np.random.default_rng(3)
    differences = []
    for seed in range(4):
        base, method = _predictions(rng, labels, 1.0), _predictions(rng, labels, 1.0 + 0.1 * seed)
        _write(tmp_path, "map", seed, {("test", "none", 0): base}, labels, pointwise=False)
        _write(tmp_path, "other", seed, {("test", "none", 0): method}, labels, pointwise=seed != 2)
        differences.append(METRICS.get("nll").score("categorical", method, labels, None)
                           - METRICS.get("nll").score("categorical", base, labels, None))
    row = _paired(tmp_path, level=0.9).set_index("metric").loc["nll"]
    low, high = stats.t.interval(0.9, 3, loc=np.mean(differences), scale=stats.sem(differences))
    assert row["interval"] == "t-seeds"
    assert (row["low"], row["high"]) == pytest.approx((low, high), rel=1e-9)


def test_a_corruption_mean_resamples_one_example_draw_across_corruptions(tmp_path, labels):
    """Two corruptions whose differences cancel example by example: resampled jointly (the same examples under each)
    the mean's difference is exactly 0 in every replicate; drawn apart per corruption it would not be."""
    rng = np.random.default_rng(4)
    first, second = _predictions(rng, labels, 1.0), _predictions(rng, labels, 1.0)
    splits = {("test", "none", 0): first, ("test", "blur", 1): first, ("test", "noise", 1): second}
    swapped = {("test", "none", 0): first, ("test", "blur", 1): second, ("test", "noise", 1): first}
    _write(tmp_path, "map", 0, splits, labels, metrics=("nll",))
    _write(tmp_path, "swapped", 0, swapped, labels, metrics=("nll",))
    table = _paired(tmp_path).set_index(["corruption", "severity"])
    mean = table.loc[("mean", 0)]
    assert mean["difference"] == pytest.approx(0.0, abs=1e-12)
    assert mean["low"] == pytest.approx(0.0, abs=1e-12) and mean["high"] == pytest.approx(0.0, abs=1e-12)
    assert table.loc[("blur", 1), "high"] - table.loc[("blur", 1), "low"] > 0.01


def test_seeds_are_resampled_too(tmp_path, labels):
    """Per-seed differences of +0.2 and -0.2 on otherwise noiseless terms: the seeds' spread must widen the interval
    to about the two seeds' range (a bootstrap over examples alone would give nearly 0)."""
    rng = np.random.default_rng(5)
    base = _predictions(rng, labels, 1.0)
    for seed, shift in enumerate((0.2, -0.2)):
        _write(tmp_path, "map", seed, {("test", "none", 0): base}, labels, metrics=("nll",))
        shifted = base.copy()
        shifted[np.arange(N), labels] -= shift  # every example's nll moves by exactly `shift`
        _write(tmp_path, "other", seed, {("test", "none", 0): shifted}, labels, metrics=("nll",))
    row = _paired(tmp_path).iloc[0]
    assert row["difference"] == pytest.approx(0.0, abs=1e-12)
    assert row["low"] == pytest.approx(-0.2, abs=1e-6) and row["high"] == pytest.approx(0.2, abs=1e-6)  # float32


def test_cli_prints_intervals_and_csv_columns(tmp_path, labels, cli):
    rng = np.random.default_rng(6)
    for seed in range(2):
        _write(tmp_path, "map", seed, {("test", "none", 0): _predictions(rng, labels, 0.5)}, labels)
        _write(tmp_path, "sharp", seed, {("test", "none", 0): _predictions(rng, labels, 3.0)}, labels)
    command = ["compare", "--results-dir", str(tmp_path), "--against", "map"]
    shown = cli(*command)
    assert shown.code == 0, shown.stderr
    assert "two-way paired bootstrap (2000 replicates)" in shown.stdout and "▲" in shown.stdout
    tidy = cli(*command, "--format", "json")
    rows = {row["metric"]: row for row in json.loads(tidy.stdout)}
    assert rows["acc"]["verdict"] == "better" and rows["nll"]["verdict"] == "better"
    assert {"low", "high", "level", "interval", "significant"} <= set(rows["acc"])
    missing = cli(*command[:-1], "nope")
    assert missing.code == 2 and "no successful run of --against 'nope'" in missing.stderr
    assert "map" in missing.stderr and "Traceback" not in missing.stderr
