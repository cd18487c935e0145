"""The one metrics registry. Every method's predictions are scored here, by the same code.

Classification metrics take the mixture predictive as log-probabilities (N, C) in float64 and integer
labels (N,). Conventions (uncertainty-baselines / Ovadia et al. 2019):
- `nll`: mean negative log of the mixture probability of the true class.
- `ece`: 15 equal-width bins on the top-label confidence, bins closed on the right, weighted by count.
- `brier`: squared error of the probability vector against the one-hot label, summed over classes and
  averaged over examples (range 0 to 2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bnnbench.registry import Registry

__all__ = ["METRICS", "Metric", "accuracy", "brier_score", "expected_calibration_error", "metrics_for",
           "negative_log_likelihood"]

ECE_BINS = 15


@dataclass(frozen=True)
class Metric:
    """A named score with its direction; `fn(log_probs, labels) -> float`."""

    name: str
    higher_is_better: bool
    likelihood: str
    fn: Callable[[np.ndarray, np.ndarray], float]


def accuracy(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of examples whose most probable class is the label."""
    return float(np.mean(log_probs.argmax(axis=1) == labels))


def negative_log_likelihood(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean of -log p(y | x) of the mixture predictive."""
    return float(-np.mean(log_probs[np.arange(len(labels)), labels]))


def expected_calibration_error(log_probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE with `n_bins` equal-width bins (lo, hi] over [0, 1]."""
    probs = np.exp(log_probs)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, weights=correct, minlength=n_bins)
                 - np.bincount(bins, weights=confidence, minlength=n_bins))
    return float(gap.sum() / count.sum())


def brier_score(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over examples of sum_c (p_c - 1[y = c])^2."""
    probs = np.exp(log_probs)
    probs[np.arange(len(labels)), labels] -= 1.0
    return float(np.mean(np.sum(probs**2, axis=1)))


METRICS: Registry[Metric] = Registry("metric")
for _metric in (
    Metric("acc", True, "categorical", accuracy),
    Metric("nll", False, "categorical", negative_log_likelihood),
    Metric("ece", False, "categorical", expected_calibration_error),
    Metric("brier", False, "categorical", brier_score),
):
    METRICS.register(_metric.name, _metric, f"{'higher' if _metric.higher_is_better else 'lower'} is better")


def metrics_for(likelihood: str) -> list[str]:
    """Names of the metrics defined for a likelihood."""
    return [name for name in METRICS.names() if METRICS.get(name).likelihood == likelihood]
