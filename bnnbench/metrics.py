"""The one metrics registry. Every method's predictions are scored here, by the same code.

A metric has one function per likelihood it is defined for, each taking the likelihood's mixture
predictive (see `Likelihood.mixture`) and the targets. Classification: log-probabilities (N, C) in float64
and integer labels (N,). Conventions (uncertainty-baselines / Ovadia et al. 2019):
- `nll`: mean negative log of the mixture probability of the true class.
- `ece`: 15 equal-width bins on the top-label confidence, bins closed on the right, weighted by count.
- `ece_classwise`: the same 15 bins over all N x C class probabilities p(y = c | x) against 1[y = c] (the
  score-VI paper's protocol, BayesDLL's `calibration.calc_bins`), not only the top label's.
- `brier`: squared error of the probability vector against the one-hot label, summed over classes and
  averaged over examples (range 0 to 2).
- `nll_ts`, `ece_ts`, `ece_classwise_ts`: the same after temperature scaling (Guo et al. 2017) of the mixture,
  softmax(log p / T), with T fitted on the validation split's mixture to its NLL (`fit_temperature`); the evaluator
  fits T once per run, before it scores the test splits with it, and run.json records T.
Gaussian regression: mixture components (N, S, ..., 2) as (mean, log std) and real targets (N, ...).
- `nll`: mean over examples of -log mean_s N(y; m_s, s_s^2), exact (logsumexp over components).
- `mse`: squared error of the mixture mean, averaged over examples (and target dimensions).
Forecasting (Gaussian mixtures over windows, in series units; `bnnbench.forecast_metrics`): `crps`, `mase`,
`smape`, `mae`, `wql`, `coverage_50`, `coverage_90`, and `mse_std`, `mae_std` on the series z-scored by their
training part (the long-term forecasting literature's MSE and MAE). They take the split's `Windows` as a third
argument.
Out-of-distribution detection (`auroc_*`, `aupr_*`) scores how well an uncertainty score (`entropy` of the
mixture, or `mi`, its epistemic part) separates OOD inputs (the positive class) from the clean test split.
Posterior fidelity (`w2_mean_err`, `var_ratio`, `pred_var_ratio`) compares a method's parameter posterior
with an exact one; the evaluator computes them (`bnnbench.reference`) for tasks that have one. Predictive
fidelity against an HMC reference (tasks with a `[posterior]` table; Wilson, Izmailov et al., NeurIPS 2021
competition): `agreement`, the share of test points whose top class is the reference's; `tv`, the mean over
test points of the total variation ½ Σ_c |p_c − p_ref,c|; `w2` (regression), the mean over test points and
outputs of the 2-Wasserstein distance between the Gaussians with the two predictives' means and variances.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bnnbench import forecast_metrics as forecast
from bnnbench.errors import UsageError
from bnnbench.registry import Registry
from bnnbench.types import Windows

__all__ = ["METRICS", "OOD_METRICS", "Metric", "accuracy", "aupr", "auroc", "brier_score",
           "classwise_calibration_error", "expected_calibration_error", "fit_temperature", "gaussian_mse",
           "gaussian_nll",
           "gaussian_w2", "metrics_for", "negative_log_likelihood", "reliability_bins", "temperature_scaled",
           "top_class_agreement", "total_variation"]

ECE_BINS = 15


@dataclass(frozen=True)
class Metric:
    """A named score with its direction and, per likelihood, `fn(mixture, targets) -> float`.

    `optimum`, when set, is the value a perfect method attains from either side (a variance ratio's 1):
    then closer is better and `higher_is_better` is unused.
    """

    name: str
    higher_is_better: bool
    fns: dict[str, Callable[..., float]] = field(default_factory=dict)
    optimum: float | None = None
    needs_windows: bool = False  # forecasting metrics: fn(mixture, targets, windows)
    # scored on the mixture after temperature scaling fitted on the validation split (`evaluate` fits T)
    temperature_scaled: bool = False
    # The metric as per-example terms, for paired bootstraps over test examples (`bnnbench compare --against`):
    # per likelihood, `terms(mixture, targets[, windows]) -> (N, K)`, and `combine` maps the terms' (weighted) mean
    # over examples, shape (..., K), to the metric, shape (...); combine(terms.mean(0)) is the metric's value (a
    # test checks each one). None: the terms have one column whose mean is the value.
    terms: dict[str, Callable[..., np.ndarray]] = field(default_factory=dict)
    combine: Callable[[np.ndarray], np.ndarray] | None = None

    def fn_for(self, likelihood: str) -> Callable[..., float]:
        """The metric's function for predictions of `likelihood` (a task's metrics are checked up front)."""
        return self.fns[likelihood]

    def score(self, likelihood: str, mixture: np.ndarray, targets: np.ndarray, windows: Windows | None) -> float:
        """The metric of a split's mixture predictive; forecasting metrics also read the split's windows."""
        if not self.needs_windows:
            return self.fn_for(likelihood)(mixture, targets)
        if windows is None:
            raise UsageError(f"metric '{self.name}' scores forecasting windows; this task's data has none")
        return self.fn_for(likelihood)(mixture, targets, windows)

    def pointwise(self, likelihood: str, mixture: np.ndarray, targets: np.ndarray,
                  windows: Windows | None) -> np.ndarray | None:
        """The metric's per-example terms (N, K) on a split, or None when it has none for `likelihood`."""
        if likelihood not in self.terms:
            return None
        fn = self.terms[likelihood]
        return np.asarray(fn(mixture, targets, windows) if self.needs_windows else fn(mixture, targets), np.float64)

    def from_mean_terms(self, mean_terms: np.ndarray) -> np.ndarray:
        """The metric from the mean over examples of its terms, (..., K) -> (...)."""
        return mean_terms[..., 0] if self.combine is None else self.combine(mean_terms)

    def badness(self, value: float) -> float:
        """A number that orders values from best (lowest) to worst, whatever the direction."""
        if self.optimum is not None:
            return abs(value - self.optimum)
        return -value if self.higher_is_better else value


def accuracy(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of examples whose most probable class is the label."""
    return float(np.mean(log_probs.argmax(axis=1) == labels))


def negative_log_likelihood(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean of -log p(y | x) of the mixture predictive."""
    return float(-np.mean(log_probs[np.arange(len(labels)), labels]))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per top-label-confidence bin (lo, hi] over [0, 1]: the count, and the sums of correctness and of
    confidence. ECE reads these, and so does the report's reliability diagram, so both bin alike."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    return {"count": np.bincount(bins, minlength=n_bins),
            "correct": np.bincount(bins, weights=correct, minlength=n_bins),
            "confidence": np.bincount(bins, weights=confidence, minlength=n_bins)}


def expected_calibration_error(log_probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE with `n_bins` equal-width bins (lo, hi] over [0, 1]."""
    bins = reliability_bins(np.exp(log_probs), labels, n_bins)
    return float(np.abs(bins["correct"] - bins["confidence"]).sum() / bins["count"].sum())


def classwise_calibration_error(log_probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE over every class probability: each of the N x C pairs (p(y = c | x_n), 1[y_n = c]) falls in one of
    `n_bins` bins and the bins' |mean indicator - mean probability| are weighted by their share of the N x C pairs.
    The bins are BayesDLL's (`calibration.calc_bins`, from which the score-VI paper's ECE comes): closed on the
    left, [lo, hi), with right edges k (1 + 1e-8) / n_bins, so that a probability of exactly 1 falls in the last
    one. Top-label `ece` bins are closed on the right; the two differ only for probabilities on an edge."""
    probs = np.exp(log_probs).ravel()
    indicators = (np.arange(log_probs.shape[1])[None, :] == labels[:, None]).astype(np.float64).ravel()
    right_edges = np.linspace(0.0, 1.0 + 1e-8, n_bins + 1)[1:]
    bins = np.minimum(np.digitize(probs, right_edges), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.bincount(bins, weights=indicators, minlength=n_bins) - np.bincount(bins, weights=probs, minlength=n_bins)
    return float(np.abs(gap).sum() / count.sum())


# The fitted temperature's range: far outside what a network's predictive needs (T of 1.5-3 is typical of over-confident
# networks), so the bound only keeps a degenerate split (one class, all correct) from pushing T to 0 or infinity.
TEMPERATURE_RANGE = (1e-2, 1e2)


def temperature_scaled(log_probs: np.ndarray, temperature: float) -> np.ndarray:
    """log softmax(log p / T): the mixture's log-probabilities after temperature scaling."""
    from scipy.special import log_softmax

    return log_softmax(log_probs / temperature, axis=1)


def fit_temperature(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """The T in TEMPERATURE_RANGE that minimises the mean NLL of softmax(log p / T) on (`log_probs`, `labels`). The NLL
    is convex in 1/T (a log-sum-exp of functions linear in it, minus a linear one), so it has one minimum, and a
    bounded scalar search over log T finds it to 1e-6 relative (BayesDLL runs scipy's BFGS from T = 1 on the same
    objective)."""
    from scipy.optimize import minimize_scalar

    def mean_nll(log_temperature: float) -> float:
        return negative_log_likelihood(temperature_scaled(log_probs, math.exp(log_temperature)), labels)

    low, high = (math.log(bound) for bound in TEMPERATURE_RANGE)
    found = minimize_scalar(mean_nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(found.x))


def brier_score(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over examples of sum_c (p_c - 1[y = c])^2."""
    probs = np.exp(log_probs)
    probs[np.arange(len(labels)), labels] -= 1.0
    return float(np.mean(np.sum(probs**2, axis=1)))


def gaussian_nll(mixture: np.ndarray, targets: np.ndarray) -> float:
    """Mean over examples of -log of the Gaussian mixture density at the target (summed over target
    dimensions of one example)."""
    mean, log_std = mixture[..., 0], mixture[..., 1]
    y = targets[:, None]
    log_density = -0.5 * ((y - mean) * np.exp(-log_std)) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    per_example = log_density.reshape(*log_density.shape[:2], -1).sum(axis=2)
    mixed = np.logaddexp.reduce(per_example, axis=1) - math.log(mixture.shape[1])
    return float(-np.mean(mixed))


def student_t_nll(mixture: np.ndarray, targets: np.ndarray) -> float:
    """Mean over examples of -log of the Student-t mixture density at the target; components (N, S, ..., 3)."""
    from bnnbench.likelihoods import student_t_log_density

    df = float(mixture[(0,) * (mixture.ndim - 1) + (2,)])
    log_density = student_t_log_density(targets[:, None], mixture[..., 0], mixture[..., 1], df)
    per_example = log_density.reshape(*log_density.shape[:2], -1).sum(axis=2)
    mixed = np.logaddexp.reduce(per_example, axis=1) - math.log(mixture.shape[1])
    return float(-np.mean(mixed))


def gaussian_mse(mixture: np.ndarray, targets: np.ndarray) -> float:
    """Mean squared error of the mixture mean."""
    return float(np.mean((mixture[..., 0].mean(axis=1) - targets) ** 2))


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve with OOD as the positive class: the probability that an OOD input scores
    higher than an in-distribution one, ties counted one half (the Mann-Whitney U statistic over n_in n_out)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([in_scores, out_scores]))  # mid-ranks for ties
    n_in, n_out = len(in_scores), len(out_scores)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def aupr(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the precision-recall curve with OOD as the positive class, as average precision:
    sum over distinct score thresholds (high to low) of precision times the recall gained there."""
    scores = np.concatenate([in_scores, out_scores])
    positive = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    last_of_each_value = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(positive)[last_of_each_value]
    precision = true_positives / (last_of_each_value + 1)
    recall_gain = np.diff(np.r_[0.0, true_positives]) / len(out_scores)
    return float(np.sum(precision * recall_gain))


def top_class_agreement(log_probs: np.ndarray, reference_probs: np.ndarray) -> float:
    """Share of examples whose most probable class is the reference predictive's."""
    return float(np.mean(log_probs.argmax(axis=1) == reference_probs.argmax(axis=1)))


def total_variation(log_probs: np.ndarray, reference_probs: np.ndarray) -> float:
    """Mean over examples of ½ Σ_c |p_c − p_ref,c|, in [0, 1]."""
    return float(np.mean(0.5 * np.abs(np.exp(log_probs) - reference_probs).sum(axis=1)))


def gaussian_w2(mean: np.ndarray, variance: np.ndarray, reference_mean: np.ndarray,
                reference_variance: np.ndarray) -> float:
    """Mean of W2(N(m, v), N(m_ref, v_ref)) = sqrt((m − m_ref)² + (√v − √v_ref)²) over examples and outputs."""
    return float(np.mean(np.sqrt((mean - reference_mean) ** 2
                                 + (np.sqrt(variance) - np.sqrt(reference_variance)) ** 2)))


def _column(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, np.float64).reshape(len(values), 1)


def accuracy_terms(log_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return _column(log_probs.argmax(axis=1) == labels)


def nll_terms(log_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return _column(-log_probs[np.arange(len(labels)), labels])


def brier_terms(log_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    probs = np.exp(log_probs)
    probs[np.arange(len(labels)), labels] -= 1.0
    return _column(np.sum(probs**2, axis=1))


def ece_terms(log_probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """(N, n_bins): each example's correctness minus confidence, in its confidence bin's column; ECE is the sum
    over bins of the absolute mean of a column (`_sum_of_absolutes`)."""
    probs = np.exp(log_probs)
    confidence = probs.max(axis=1)
    gap = (probs.argmax(axis=1) == labels) - confidence
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    terms = np.zeros((len(labels), n_bins))
    terms[np.arange(len(labels)), bins] = gap
    return terms


def classwise_ece_terms(log_probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """(N, n_bins): per example, the sum over its classes of indicator minus probability in each bin, divided by
    the classes (the metric weighs bins by their share of the N x C pairs)."""
    probs = np.exp(log_probs)
    n, classes = probs.shape
    gap = (np.arange(classes)[None, :] == labels[:, None]) - probs
    bins = np.minimum(np.digitize(probs, np.linspace(0.0, 1.0 + 1e-8, n_bins + 1)[1:]), n_bins - 1)
    terms = np.zeros((n, n_bins))
    np.add.at(terms, (np.repeat(np.arange(n), classes), bins.ravel()), gap.ravel() / classes)
    return terms


def _sum_of_absolutes(mean_terms: np.ndarray) -> np.ndarray:
    return np.abs(mean_terms).sum(axis=-1)


def agreement_terms(log_probs: np.ndarray, reference_probs: np.ndarray) -> np.ndarray:
    return _column(log_probs.argmax(axis=1) == reference_probs.argmax(axis=1))


def total_variation_terms(log_probs: np.ndarray, reference_probs: np.ndarray) -> np.ndarray:
    return _column(0.5 * np.abs(np.exp(log_probs) - reference_probs).sum(axis=1))


def _mixture_log_density_terms(log_density: np.ndarray, components: int) -> np.ndarray:
    per_example = log_density.reshape(*log_density.shape[:2], -1).sum(axis=2)
    return _column(-(np.logaddexp.reduce(per_example, axis=1) - math.log(components)))


def gaussian_nll_terms(mixture: np.ndarray, targets: np.ndarray) -> np.ndarray:
    mean, log_std = mixture[..., 0], mixture[..., 1]
    log_density = (-0.5 * ((targets[:, None] - mean) * np.exp(-log_std)) ** 2 - log_std
                   - 0.5 * math.log(2 * math.pi))
    return _mixture_log_density_terms(log_density, mixture.shape[1])


def student_t_nll_terms(mixture: np.ndarray, targets: np.ndarray) -> np.ndarray:
    from bnnbench.likelihoods import student_t_log_density

    df = float(mixture[(0,) * (mixture.ndim - 1) + (2,)])
    log_density = student_t_log_density(targets[:, None], mixture[..., 0], mixture[..., 1], df)
    return _mixture_log_density_terms(log_density, mixture.shape[1])


def gaussian_mse_terms(mixture: np.ndarray, targets: np.ndarray) -> np.ndarray:
    squared = (mixture[..., 0].mean(axis=1) - targets) ** 2
    return _column(squared.reshape(len(squared), -1).mean(axis=1))


def _real(fn: Callable[..., float]) -> dict[str, Callable[..., float]]:
    """One function for both real-valued likelihoods (their mixtures share the (mean, log scale[, df]) layout)."""
    return {"gaussian": fn, "student-t": fn}


METRICS: Registry[Metric] = Registry("metric")
for _metric, _summary in (
    (Metric("acc", True, {"categorical": accuracy}, terms={"categorical": accuracy_terms}),
     "accuracy of the top class"),
    (Metric("nll", False, {"categorical": negative_log_likelihood, "gaussian": gaussian_nll,
                           "student-t": student_t_nll},
            terms={"categorical": nll_terms, "gaussian": gaussian_nll_terms, "student-t": student_t_nll_terms}),
     "negative log predictive density"),
    (Metric("ece", False, {"categorical": expected_calibration_error}, terms={"categorical": ece_terms},
            combine=_sum_of_absolutes), "expected calibration error, 15 bins"),
    (Metric("ece_classwise", False, {"categorical": classwise_calibration_error},
            terms={"categorical": classwise_ece_terms}, combine=_sum_of_absolutes),
     "calibration error over all N x C class probabilities, 15 bins (BayesDLL's; not top-label)"),
    (Metric("brier", False, {"categorical": brier_score}, terms={"categorical": brier_terms}),
     "Brier score, summed over classes"),
    (Metric("nll_ts", False, {"categorical": negative_log_likelihood}, temperature_scaled=True,
            terms={"categorical": nll_terms}),
     "nll after temperature scaling fitted on the validation split"),
    (Metric("ece_ts", False, {"categorical": expected_calibration_error}, temperature_scaled=True,
            terms={"categorical": ece_terms}, combine=_sum_of_absolutes),
     "ece after temperature scaling fitted on the validation split"),
    (Metric("ece_classwise_ts", False, {"categorical": classwise_calibration_error}, temperature_scaled=True,
            terms={"categorical": classwise_ece_terms}, combine=_sum_of_absolutes),
     "ece_classwise after temperature scaling fitted on the validation split (BayesDLL's reported ECE)"),
    (Metric("mse", False, _real(gaussian_mse), terms=_real(gaussian_mse_terms)),
     "squared error of the predictive mean"),
    (Metric("crps", False, _real(forecast.crps), needs_windows=True, terms=_real(forecast.crps_terms)),
     "CRPS of the forecast samples, mean over windows and steps, series units"),
    (Metric("mase", False, _real(forecast.gluonts_metric("mase")), needs_windows=True,
            terms=_real(forecast.gluonts_metric_terms("mase"))),
     "mean absolute scaled error of the median forecast (gluonts)"),
    (Metric("smape", False, _real(forecast.gluonts_metric("smape")), needs_windows=True,
            terms=_real(forecast.gluonts_metric_terms("smape"))),
     "symmetric mean absolute percentage error of the median forecast (gluonts)"),
    (Metric("mae", False, _real(forecast.gluonts_metric("mae")), needs_windows=True,
            terms=_real(forecast.gluonts_metric_terms("mae"))),
     "mean absolute error of the median forecast (gluonts)"),
    (Metric("mse_std", False, _real(forecast.standardised_mse), needs_windows=True,
            terms=_real(forecast.standardised_mse_terms)),
     "squared error of the predictive mean on the series z-scored by its training part (LTSF's MSE)"),
    (Metric("mae_std", False, _real(forecast.standardised_mae), needs_windows=True,
            terms=_real(forecast.standardised_mae_terms)),
     "absolute error of the median forecast on the series z-scored by its training part (LTSF's MAE)"),
    (Metric("wql", False, _real(forecast.gluonts_metric("wql")), needs_windows=True,
            terms=_real(forecast.gluonts_metric_terms("wql")), combine=forecast.weighted_quantile_loss),
     "mean weighted quantile loss over levels 0.1..0.9 (gluonts)"),
    (Metric("coverage_50", False, _real(forecast.coverage(0.5)), optimum=0.5, needs_windows=True,
            terms=_real(forecast.coverage_terms(0.5))),
     "fraction of targets inside the central 50% forecast interval"),
    (Metric("coverage_90", False, _real(forecast.coverage(0.9)), optimum=0.9, needs_windows=True,
            terms=_real(forecast.coverage_terms(0.9))),
     "fraction of targets inside the central 90% forecast interval"),
    (Metric("auroc_entropy", True), "OOD detection AUROC of the predictive entropy (OOD positive)"),
    (Metric("aupr_entropy", True), "OOD detection average precision of the predictive entropy (OOD positive)"),
    (Metric("auroc_mi", True), "OOD detection AUROC of the mutual information (methods with samples)"),
    (Metric("aupr_mi", True), "OOD detection average precision of the mutual information"),
    (Metric("w2_mean_err", False), "||mu - m|| / ||m|| against the exact posterior mean"),
    (Metric("var_ratio", False, optimum=1.0), "mean over parameters of var x exact precision's diagonal (1: the "
     "mean-field optimum 1/Λ_dd)"),
    (Metric("marginal_var_ratio", False, optimum=1.0), "mean over parameters of var / exact marginal variance (1: "
     "the posterior's own, a full-covariance method's target)"),
    (Metric("pred_var_ratio", False, optimum=1.0), "mean over test points of predictive var / exact"),
    (Metric("agreement", True, terms={"categorical": agreement_terms}),
     "share of test points whose top class is the HMC reference's"),
    (Metric("tv", False, terms={"categorical": total_variation_terms}),
     "mean total variation distance to the HMC reference predictive"),
    (Metric("w2", False), "mean 2-Wasserstein distance to the HMC reference predictive (Gaussian moments)"),
):
    _direction = "closer to 1 is better" if _metric.optimum is not None else (
        f"{'higher' if _metric.higher_is_better else 'lower'} is better")
    METRICS.register(_metric.name, _metric, f"{_summary}; {_direction}")

# these need an exact reference posterior
POSTERIOR_METRICS = ("w2_mean_err", "var_ratio", "marginal_var_ratio", "pred_var_ratio")
HMC_METRICS = {"categorical": ("agreement", "tv"), "gaussian": ("w2",)}  # need an HMC reference predictive
OOD_METRICS = {"auroc": auroc, "aupr": aupr}  # each of a likelihood's uncertainty scores: f"{name}_{score}"


def metrics_for(likelihood: str, with_reference: bool = False, forecasting: bool = False,
                with_hmc: bool = False) -> list[str]:
    """Names of the metrics defined for a likelihood (and the posterior-fidelity ones when the task has an
    exact reference posterior, the predictive-fidelity ones when it has an HMC reference, the forecasting ones
    when its data are forecasting windows)."""
    names = [name for name in METRICS.names() if likelihood in METRICS.get(name).fns
             and (forecasting or not METRICS.get(name).needs_windows)]
    if with_reference:
        names += list(POSTERIOR_METRICS)
    if with_hmc:
        names += list(HMC_METRICS.get(likelihood, ()))
    return names
