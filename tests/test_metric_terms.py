"""Each metric's per-example terms reproduce the metric: combine(mean of terms) equals the registered function's
value on the same predictions, and a weighted mean equals the metric on the resampled examples. The paired
bootstrap of `bnnbench compare --against` (bnnbench.paired) rests on both."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import log_softmax

from bnnbench.metrics import METRICS
from bnnbench.types import Windows

RNG = np.random.default_rng(0)
N, CLASSES, SAMPLES, HORIZON = 120, 5, 6, 4


def _categorical():
    log_probs = log_softmax(RNG.normal(scale=2.0, size=(N, CLASSES)), axis=1)
    log_probs[:3] = np.log(np.eye(CLASSES)[:3] * (1 - 1e-12) + 1e-12 / CLASSES)  # confidences on a bin edge (1.0)
    return log_probs, RNG.integers(0, CLASSES, N), None


def _gaussian(horizon: int | None):
    shape = (N, SAMPLES) if horizon is None else (N, SAMPLES, horizon)
    mixture = np.stack([RNG.normal(size=shape) * 3 + 10, RNG.normal(scale=0.3, size=shape)], axis=-1)
    targets = RNG.normal(size=shape[:1] + shape[2:]) * 3 + 10
    windows = Windows(shift=torch.zeros(N), scale=torch.ones(N), seasonal_error=torch.rand(N) + 0.5,
                      train_std=torch.rand(N) + 0.5) if horizon else None
    return mixture, targets, windows


CASES = [(name, likelihood) for name in METRICS.names() for likelihood in METRICS.get(name).terms]


@pytest.mark.parametrize(("name", "likelihood"), CASES, ids=[f"{n}-{lk}" for n, lk in CASES])
def test_terms_reproduce_the_metric_and_its_resamples(name, likelihood):
    metric = METRICS.get(name)
    if likelihood == "categorical":
        mixture, targets, windows = _categorical()
        if name in ("agreement", "tv"):  # scored against a reference predictive, which takes the targets' place
            targets = np.exp(log_softmax(RNG.normal(size=(N, CLASSES)), axis=1))
    elif likelihood == "student-t":
        mixture, targets, windows = _gaussian(HORIZON if metric.needs_windows else None)
        mixture = np.concatenate([mixture, np.full(mixture.shape[:-1] + (1,), 4.0)], axis=-1)
    else:
        mixture, targets, windows = _gaussian(HORIZON if metric.needs_windows else None)
    value = (metric.score(likelihood, mixture, targets, windows) if name not in ("agreement", "tv") else
             {"agreement": lambda: np.mean(mixture.argmax(1) == targets.argmax(1)),
              "tv": lambda: np.mean(0.5 * np.abs(np.exp(mixture) - targets).sum(1))}[name]())
    terms = metric.pointwise(likelihood, mixture, targets, windows)
    assert terms.shape[0] == N
    assert float(metric.from_mean_terms(terms.mean(axis=0))) == pytest.approx(value, rel=1e-9, abs=1e-12)

    if metric.needs_windows:  # forecast samples are drawn for the whole split at once, so resampling re-draws them
        return
    picked = RNG.integers(0, N, N)
    weights = np.bincount(picked, minlength=N) / N
    resampled = metric.score(likelihood, mixture[picked], targets[picked], None) if name not in ("agreement", "tv") \
        else metric.from_mean_terms(metric.pointwise(likelihood, mixture[picked], targets[picked], None).mean(0))
    assert float(metric.from_mean_terms(weights @ terms)) == pytest.approx(resampled, rel=1e-9, abs=1e-12)


def test_every_prediction_metric_has_terms():
    """Only metrics that are not a function of one split's per-example predictions lack terms: OOD detection
    (two splits) and the parameter-posterior metrics (no examples); w2 compares moments against a regression
    reference, which no task ships yet."""
    without = sorted(name for name in METRICS.names() if not METRICS.get(name).terms)
    assert without == sorted(["auroc_entropy", "aupr_entropy", "auroc_mi", "aupr_mi", "w2_mean_err", "var_ratio",
                              "marginal_var_ratio", "pred_var_ratio", "w2"])
