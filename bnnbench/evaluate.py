"""The evaluator: one code path that scores every method's predictive on every evaluation split.

For each split it asks the Predictive for S per-sample predictives, lets the task's likelihood form the
mixture over samples (log space for classes, all components for Gaussians), and calls the metrics
registry. Aggregates over corruptions (mean of each metric over corruption types, per severity and over
all severities) are added as rows with `corruption = "mean"`; severity 0 on such a row means "all
severities". Tasks with an exact reference posterior also get posterior-fidelity rows on the clean test
split, and fidelity tasks their predictive's agreement with an HMC reference there.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from bnnbench.data.splits import EvalPlan
from bnnbench.errors import UsageError
from bnnbench.likelihoods import Likelihood, mixture_moments
from bnnbench.metrics import HMC_METRICS, METRICS, OOD_METRICS, POSTERIOR_METRICS, fit_temperature, temperature_scaled
from bnnbench.reference import ExactLinearGaussian, PredictiveReference, fidelity_metrics, predictive_fidelity
from bnnbench.train import progress_bar
from bnnbench.types import EvalSplit, Predictive, Split

__all__ = ["Evaluation", "evaluate", "pointwise_key", "predict_mixture", "score_split"]


@dataclass
class Evaluation:
    """Metric rows (split, corruption, severity, metric, value), the clean test predictions, seconds, and the
    temperature fitted on the validation split when a temperature-scaled metric was asked for; when asked for,
    each metric's per-example terms on each split (`pointwise`, keyed by `pointwise_key`), from which paired
    bootstraps over examples recompute it."""

    rows: list[dict]
    test_predictions: dict[str, np.ndarray] = field(default_factory=dict)
    pointwise: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    temperature: float | None = None


def predict_mixture(predictive: Predictive, likelihood: Likelihood, data: Split, n_samples: int,
                    batch_size: int, device: torch.device) -> np.ndarray:
    """The mixture predictive over `n_samples` posterior samples, float64, computed in batches on `device`."""
    return _predict(predictive, likelihood, data, n_samples, batch_size, device, with_uncertainty=False)[0]


def score_split(predictive: Predictive, likelihood: Likelihood, data: Split, metric: str, n_samples: int,
                batch_size: int, device: torch.device) -> float:
    """One metric of `predictive` on one split, computed exactly as `evaluate` computes it. For the methods that
    choose a setting on the validation split (Laplace's prior precision), so that what they minimise there is the
    metric the leaderboard reports."""
    mixture, targets = _in_series_units(likelihood, predict_mixture(predictive, likelihood, data, n_samples,
                                                                    batch_size, device), data)
    with _quiet_on_non_finite():
        return METRICS.get(metric).score(likelihood.name, mixture, targets, data.windows)


def _quiet_on_non_finite() -> np.errstate:
    """numpy's error state for scoring a predictive. One that holds NaN or inf scores NaN or inf, which the runner
    reports as the run's one failure line; numpy's warnings on the way (a cast of NaN, an overflow in exp) would
    only be lines above it."""
    return np.errstate(all="ignore")


def _predict(predictive: Predictive, likelihood: Likelihood, data: Split, n_samples: int, batch_size: int,
             device: torch.device, with_uncertainty: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The mixture predictive and, if asked, the likelihood's per-example uncertainty scores."""
    mixtures, scores = [], {}
    with torch.no_grad():
        for begin in range(0, len(data), batch_size):
            x = data.x[begin:begin + batch_size].to(device, non_blocking=True)
            samples = predictive.predict(x, n_samples)
            mixture = likelihood.mixture(samples)
            mixtures.append(mixture.cpu())
            if with_uncertainty:
                for name, value in likelihood.uncertainty(samples, mixture).items():
                    scores.setdefault(name, []).append(value.cpu())
    return torch.cat(mixtures).numpy(), {name: torch.cat(parts).numpy() for name, parts in scores.items()}


def pointwise_key(split: str, corruption: str, severity: int, metric: str) -> str:
    """The name of one split's per-example terms of one metric in `Evaluation.pointwise` and pointwise.npz."""
    return f"{split}|{corruption}|{severity}|{metric}"


def evaluate(predictive: Predictive, splits: EvalPlan | Sequence[EvalSplit], metric_names: list[str],
             likelihood: Likelihood, n_samples: int, batch_size: int, device: torch.device,
             reference: ExactLinearGaussian | None = None, show_progress: bool = True,
             predictive_reference: PredictiveReference | None = None, pointwise: bool = False) -> Evaluation:
    """Score `predictive` on each split of `splits`; empty splits (a task without validation data) are
    skipped. OOD splits must come after the clean test split (EvalPlan's order). `pointwise` keeps each metric's
    per-example terms too (the metrics that have them: see `Metric.terms`)."""
    against_hmc = {name for names in HMC_METRICS.values() for name in names}
    metrics = [METRICS.get(name) for name in metric_names if name not in POSTERIOR_METRICS and name not in against_hmc]
    scaled_metrics = [metric for metric in metrics if metric.temperature_scaled]
    metrics = [metric for metric in metrics if not metric.temperature_scaled]
    wanted_fidelity = [name for name in metric_names if name in POSTERIOR_METRICS]
    wanted_hmc = [name for name in metric_names if name in against_hmc]
    evaluation = Evaluation(rows=[])
    test_scores: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    with progress_bar(show_progress) as progress, _quiet_on_non_finite():
        bar = progress.add_task("evaluate", total=len(splits), status="")
        for split in splits:
            progress.update(bar, advance=1, status=f"{split.split} {split.corruption} {split.severity}")
            if len(split.data) == 0:
                continue
            clean_test = (split.split, split.corruption) == ("test", "none")
            mixture, scores = _predict(predictive, likelihood, split.data, n_samples, batch_size, device,
                                       with_uncertainty=clean_test or split.split == "ood")
            if split.split == "ood":
                values = {f"{metric}_{score}": fn(test_scores[score], scores[score])
                          for score in scores for metric, fn in OOD_METRICS.items()}
            else:
                mixture, targets = _in_series_units(likelihood, mixture, split.data)
                values = {metric.name: metric.score(likelihood.name, mixture, targets, split.data.windows)
                          for metric in metrics}
                if pointwise:
                    _keep_terms(evaluation, split, metrics, likelihood.name, mixture, targets)
                if scaled_metrics:
                    if evaluation.temperature is None:
                        if split.split != "val":
                            raise UsageError("temperature-scaled metrics need the validation split, scored first, to "
                                             "fit the temperature; this evaluation has none")
                        evaluation.temperature = fit_temperature(mixture, targets)
                    scaled = temperature_scaled(mixture, evaluation.temperature)
                    values |= {metric.name: metric.score(likelihood.name, scaled, targets, split.data.windows)
                               for metric in scaled_metrics}
                    if pointwise:
                        _keep_terms(evaluation, split, scaled_metrics, likelihood.name, scaled, targets)
            if clean_test:
                test_scores = scores
                evaluation.test_predictions = likelihood.saved_predictions(mixture, targets)
                if split.data.windows is not None:
                    evaluation.test_predictions |= _forecast_bands(mixture, split.data)
                if reference is not None and wanted_fidelity:
                    fidelity = fidelity_metrics(reference, predictive, split.data.x.double().numpy(),
                                                mixture_moments(mixture)[1])
                    values |= {name: fidelity[name] for name in wanted_fidelity if name in fidelity}
                if predictive_reference is not None and wanted_hmc:
                    fidelity = predictive_fidelity(predictive_reference, likelihood.name, mixture)
                    values |= {name: fidelity[name] for name in wanted_hmc if name in fidelity}
                    if pointwise and likelihood.name == "categorical":  # the reference takes the targets' place
                        _keep_terms(evaluation, split, [METRICS.get(name) for name in wanted_hmc], likelihood.name,
                                    mixture, predictive_reference.arrays["probs"])
            evaluation.rows += [{"split": split.split, "corruption": split.corruption, "severity": split.severity,
                                 "metric": name, "value": value} for name, value in values.items()]
    evaluation.rows += _corruption_means(evaluation.rows)
    evaluation.seconds = time.perf_counter() - start
    return evaluation


def _keep_terms(evaluation: Evaluation, split: EvalSplit, metrics: list, likelihood: str, mixture: np.ndarray,
                targets: np.ndarray) -> None:
    for metric in metrics:
        terms = metric.pointwise(likelihood, mixture, targets, split.data.windows)
        if terms is not None:
            evaluation.pointwise[pointwise_key(split.split, split.corruption, split.severity, metric.name)] = terms


def _in_series_units(likelihood: Likelihood, mixture: np.ndarray, data: Split) -> tuple[np.ndarray, np.ndarray]:
    """The mixture and the targets with each forecasting window's normalisation undone (as they are otherwise)."""
    if data.windows is None:
        return mixture, data.y.numpy()
    shift, scale = data.windows.shift.double().numpy(), data.windows.scale.double().numpy()
    return likelihood.affine(mixture, shift, scale), _to_series_units(data.y.numpy(), data)


def _to_series_units(normalised: np.ndarray, data: Split) -> np.ndarray:
    """Values (N, ...) of forecasting windows mapped back by each window's y -> shift + scale * y."""
    shift, scale = data.windows.shift.double().numpy(), data.windows.scale.double().numpy()
    per_example = (-1, *[1] * (normalised.ndim - 1))
    return normalised * scale.reshape(per_example) + shift.reshape(per_example)


def _forecast_bands(mixture: np.ndarray, data: Split) -> dict[str, np.ndarray]:
    """What a fan chart draws, in series units: each window's context and quantiles of its forecast."""
    from bnnbench.forecast_metrics import FAN_LEVELS, fan_quantiles

    context = _to_series_units(data.x.double().numpy(), data)
    return {"context": context, "quantile_levels": np.array(FAN_LEVELS), "quantiles": fan_quantiles(mixture)}


def _corruption_means(rows: list[dict]) -> list[dict]:
    """Means over corruption types (per severity, and over all severities as severity 0) and over OOD sets."""
    means = []
    for split in ("test", "ood"):
        chosen = [row for row in rows if row["split"] == split and row["corruption"] != "none"]
        metrics = dict.fromkeys(row["metric"] for row in chosen)
        severities = sorted({row["severity"] for row in chosen} - {0})
        for metric in metrics:
            for severity in [*severities, 0]:
                values = [row["value"] for row in chosen
                          if row["metric"] == metric and severity in (0, row["severity"])]
                means.append({"split": split, "corruption": "mean", "severity": severity, "metric": metric,
                              "value": float(np.mean(values))})
    return means
