"""Metrics against independent references (sklearn, torchmetrics, a hand-written Brier score)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, log_loss
from torchmetrics.classification import MulticlassCalibrationError

from bnnbench.likelihoods import mixture_log_predictive
from bnnbench.metrics import (
    METRICS,
    accuracy,
    brier_score,
    classwise_calibration_error,
    expected_calibration_error,
    negative_log_likelihood,
)


def random_predictions(seed: int, n: int = 2000, classes: int = 7, temperature: float = 2.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes)) * temperature
    log_probs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    labels = rng.integers(0, classes, size=n)
    # make predictions better than chance so every ECE bin and both accuracy outcomes occur
    labels[: n // 2] = log_probs[: n // 2].argmax(axis=1)
    return log_probs, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nll_and_accuracy_match_sklearn(seed):
    log_probs, labels = random_predictions(seed)
    probs = np.exp(log_probs)
    assert negative_log_likelihood(log_probs, labels) == pytest.approx(
        log_loss(labels, probs, labels=range(probs.shape[1])), rel=1e-10)
    assert accuracy(log_probs, labels) == accuracy_score(labels, probs.argmax(axis=1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_torchmetrics(seed):
    log_probs, labels = random_predictions(seed)
    reference = MulticlassCalibrationError(num_classes=log_probs.shape[1], n_bins=15, norm="l1")
    expected = reference(torch.from_numpy(np.exp(log_probs)).float(), torch.from_numpy(labels)).item()
    assert expected_calibration_error(log_probs, labels) == pytest.approx(expected, abs=1e-6)
    assert expected > 0.01  # the inputs are miscalibrated, so a wrong binning would show


def test_brier_matches_hand_computation():
    log_probs, labels = random_predictions(3, n=50, classes=4)
    probs = np.exp(log_probs)
    total = 0.0
    for row, label in zip(probs, labels, strict=True):
        total += sum((p - (1.0 if c == label else 0.0)) ** 2 for c, p in enumerate(row))
    assert brier_score(log_probs, labels) == pytest.approx(total / len(labels), rel=1e-12)


def test_perfect_and_uniform_predictions():
    labels = np.array([0, 1, 2, 1])
    confident = np.log(np.eye(3)[labels] * (1 - 3e-12) + 1e-12)
    assert accuracy(confident, labels) == 1.0
    assert brier_score(confident, labels) == pytest.approx(0.0, abs=1e-10)
    uniform = np.full((4, 3), -np.log(3))
    assert negative_log_likelihood(uniform, labels) == pytest.approx(np.log(3))
    assert brier_score(uniform, labels) == pytest.approx(2 / 3)


def test_mixture_is_log_of_mean_probability_not_mean_logit():
    generator = torch.Generator().manual_seed(0)
    sample_log_probs = torch.log_softmax(torch.randn(5, 11, 4, generator=generator) * 3, dim=-1)
    mixed = mixture_log_predictive(sample_log_probs)
    assert torch.allclose(mixed.exp(), sample_log_probs.double().exp().mean(0), atol=1e-12)
    logit_average = torch.log_softmax(sample_log_probs.mean(0), dim=-1).double()
    assert not torch.allclose(mixed, logit_average, atol=1e-3)


def test_mixture_survives_underflow():
    sample_log_probs = torch.tensor([[[-2000.0, 0.0]], [[-1000.0, 0.0]]])
    mixed = mixture_log_predictive(sample_log_probs)
    assert torch.isfinite(mixed).all()
    assert mixed[0, 0].item() == pytest.approx(-1000.0 - np.log(2), rel=1e-9)


def test_directions():
    assert METRICS.get("acc").higher_is_better
    assert not any(METRICS.get(name).higher_is_better for name in ("nll", "ece", "brier"))


def test_classwise_ece_is_the_hand_computation_over_every_class_probability():
    """Nine (probability, indicator) pairs from three images of three classes, binned by hand in BayesDLL's 15 bins
    [lo, hi) with right edges k (1 + 1e-8) / 15 (so 0.2 = 3/15 falls in the bin that closes at it):
    bin 10: (0.7, 1), (0.72, 0) -> |1 - 1.42| = 0.42; bin 2: (0.2, 0), (0.18, 1) -> |1 - 0.38| = 0.62;
    bin 1: (0.1, 0) x 3 -> 0.3; bin 7: (0.5, 0) -> 0.5; bin 5: (0.4, 1) -> 0.6. Sum 2.44 over 9 pairs."""
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.72, 0.18, 0.10]])
    labels = np.array([0, 1, 1])
    assert classwise_calibration_error(np.log(probs), labels) == pytest.approx(2.44 / 9, abs=1e-12)
    # the top-label ECE of the same predictions is another number: bin 10 (0.7 right, 0.72 wrong), bin 7 (0.5 wrong)
    assert expected_calibration_error(np.log(probs), labels) == pytest.approx(0.92 / 3, abs=1e-12)
    assert METRICS.get("ece_classwise").score("categorical", np.log(probs), labels, None) == pytest.approx(2.44 / 9)


def test_classwise_ece_equals_a_loop_over_pairs_on_random_predictions():
    """Against a plain loop over the N x C pairs that bins each by the same left-closed rule."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 7)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 7, size=200)
    edges = [k * (1 + 1e-8) / 15 for k in range(16)]
    sums = {}
    for n in range(200):
        for c in range(7):
            b = next(i for i in range(15) if edges[i] <= probs[n, c] < edges[i + 1])
            total = sums.setdefault(b, [0.0, 0.0])
            total[0] += float(labels[n] == c)
            total[1] += probs[n, c]
    expected = sum(abs(hits - mass) for hits, mass in sums.values()) / (200 * 7)
    assert classwise_calibration_error(np.log(probs), labels) == pytest.approx(expected, rel=1e-12)
