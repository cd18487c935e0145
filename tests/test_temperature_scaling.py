"""Temperature-scaled metrics (nll_ts, ece_ts, ece_classwise_ts): T fitted on the validation split's mixture, then
applied to the test splits' mixtures, in the evaluator, for every method alike."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import log_softmax, logsumexp

from bnnbench.errors import UsageError
from bnnbench.evaluate import evaluate
from bnnbench.likelihoods import get_likelihood
from bnnbench.metrics import (
    METRICS,
    classwise_calibration_error,
    expected_calibration_error,
    fit_temperature,
    temperature_scaled,
)
from bnnbench.types import EvalSplit, Split


def _overconfident(n: int, classes: int, true_temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities softmax(z) of a network whose labels are drawn from softmax(z / T*): over-confident by T*."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, classes)) * 4
    true = np.exp(log_softmax(z / true_temperature, axis=1))
    labels = np.array([rng.choice(classes, p=p) for p in true])
    return log_softmax(z, axis=1), labels


def _bfgs_temperature(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """BayesDLL's way (calibration.find_optimal_temperature): scipy's BFGS on T from T = 1, the mean NLL of
    log_probs / T; an independent optimiser on the same objective."""
    def mean_nll(t: np.ndarray) -> float:
        scaled = log_probs / t[0]
        return float(np.mean(logsumexp(scaled, axis=1) - scaled[np.arange(len(labels)), labels]))

    return float(minimize(mean_nll, np.ones(1)).x[0])


def test_fitted_temperature_recovers_the_over_confidence_and_matches_bfgs():
    log_probs, labels = _overconfident(4000, 5, true_temperature=2.0, seed=0)
    fitted = fit_temperature(log_probs, labels)
    assert fitted == pytest.approx(2.0, abs=0.15)
    assert fitted == pytest.approx(_bfgs_temperature(log_probs, labels), rel=1e-4)
    # a calibrated predictive keeps T near 1, an under-confident one gets T < 1
    calibrated, calibrated_labels = _overconfident(4000, 5, true_temperature=1.0, seed=1)
    assert fit_temperature(calibrated, calibrated_labels) == pytest.approx(1.0, abs=0.08)
    under, under_labels = _overconfident(4000, 5, true_temperature=0.5, seed=2)
    assert fit_temperature(under, under_labels) < 0.6


def test_scaled_log_probabilities_are_a_softmax_of_the_divided_ones():
    log_probs, _ = _overconfident(10, 4, 2.0, seed=3)
    scaled = temperature_scaled(log_probs, 2.5)
    expected = np.exp(log_probs / 2.5) / np.exp(log_probs / 2.5).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.exp(scaled), expected, rtol=1e-12)


class _FixedPredictive:
    """A 'method' whose predictive is fixed log-probabilities, looked up by the input's index."""

    def __init__(self, log_probs: np.ndarray) -> None:
        self.log_probs = torch.from_numpy(log_probs)

    def predict(self, x: torch.Tensor, n_samples: int) -> torch.Tensor:
        return self.log_probs[x[:, 0].long()].unsqueeze(0)


def _splits(val: int, test: int) -> list[EvalSplit]:
    rows = torch.arange(val + test, dtype=torch.float64).unsqueeze(1)
    return [EvalSplit("val", "none", 0, Split(rows[:val], torch.zeros(val, dtype=torch.int64))),
            EvalSplit("test", "none", 0, Split(rows[val:], torch.zeros(test, dtype=torch.int64)))]


def test_the_evaluator_fits_t_on_validation_and_scores_test_with_it():
    log_probs, labels = _overconfident(3000, 6, true_temperature=2.0, seed=4)
    splits = _splits(1000, 2000)
    for split, part in zip(splits, (slice(0, 1000), slice(1000, 3000)), strict=True):
        split.data.y[:] = torch.from_numpy(labels[part])
    metrics = ["nll", "ece", "nll_ts", "ece_ts", "ece_classwise_ts"]
    evaluation = evaluate(_FixedPredictive(log_probs), splits, metrics, get_likelihood("categorical"), 1, 512,
                          torch.device("cpu"), show_progress=False)
    temperature = _bfgs_temperature(log_probs[:1000], labels[:1000])  # the validation rows only
    assert evaluation.temperature == pytest.approx(temperature, rel=1e-4)
    test = {row["metric"]: row["value"] for row in evaluation.rows if row["split"] == "test"}
    scaled = log_softmax(log_probs[1000:] / temperature, axis=1)
    assert test["nll_ts"] == pytest.approx(-np.mean(scaled[np.arange(2000), labels[1000:]]), rel=1e-5)
    assert test["ece_ts"] == pytest.approx(expected_calibration_error(scaled, labels[1000:]), abs=1e-4)
    assert test["ece_classwise_ts"] == pytest.approx(classwise_calibration_error(scaled, labels[1000:]), abs=1e-4)
    assert test["nll_ts"] < test["nll"] and test["ece_ts"] < test["ece"]  # over-confident by 2: scaling helps


def test_without_a_validation_split_the_scaled_metrics_are_refused():
    splits = _splits(5, 5)[1:]
    with pytest.raises(UsageError, match="need the validation split"):
        evaluate(_FixedPredictive(np.log(np.full((10, 2), 0.5))), splits, ["nll_ts"],
                 get_likelihood("categorical"), 1, 8, torch.device("cpu"), show_progress=False)


def test_a_run_records_its_temperature_and_refuses_a_task_without_validation(cli, tmp_path, results_dir):
    task = tmp_path / "digits-ts.toml"
    task.write_text('include = "' + str(_builtin("digits-mlp.toml")) + '"\nname = "digits-ts"\nversion = 1\n'
                    'description = "x"\n[eval]\nmetrics = ["nll", "nll_ts", "ece_classwise_ts"]\n'
                    'corruptions = "none"\n')
    args = ["run", "--task", str(task), "--method", "map", "--budget", "ci", "--results-dir", str(results_dir),
            "--quiet", "--device", "cpu"]
    result = cli(*args)
    assert result.code == 0, result.stderr
    [run_json] = results_dir.glob("*/*/*/run.json")
    record = json.loads(run_json.read_text())
    assert record["temperature_scaling"]["fitted_on"] == "val" and record["temperature_scaling"]["temperature"] > 0
    # a task without a validation split is refused at the door (digits always has one: the check, given none)
    from types import SimpleNamespace

    from bnnbench.methods import bind_for_task, find_method
    from bnnbench.runner import _check_validation_split
    from bnnbench.tasks import load_task

    loaded = load_task(task)
    spec = find_method("map")[0]
    empty = SimpleNamespace(bundle=SimpleNamespace(val=Split(torch.zeros(0, 64), torch.zeros(0, dtype=torch.int64))))
    with pytest.raises(UsageError, match="no validation split, on which nll_ts, ece_classwise_ts fit their temp"):
        _check_validation_split(loaded, spec, bind_for_task(spec, loaded, {}, None), empty, False)


def test_registered_as_categorical_and_lower_is_better():
    for name in ("nll_ts", "ece_ts", "ece_classwise_ts"):
        metric = METRICS.get(name)
        assert metric.temperature_scaled and not metric.higher_is_better and set(metric.fns) == {"categorical"}


def _builtin(name: str):
    from bnnbench.package_files import builtin_tasks_dir

    return builtin_tasks_dir() / name
