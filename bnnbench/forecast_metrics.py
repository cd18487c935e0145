"""Forecasting metrics of a Gaussian-mixture predictive, in series units (the evaluator undoes each window's
normalisation first).

The mixture over posterior samples is turned into forecast samples, as gluonts' `SampleForecast` holds them:
`FORECAST_SAMPLES` draws per window from a fixed generator, the mixture components taken in turn (sample k from
component k mod S), so every method and every metric sees draws made the same way. A quantile q of the samples is
`SampleForecast.quantile`'s: the sorted sample at index round((K - 1) q).

- `mase`, `smape`, `mae`: gluonts' `MASE`, `SMAPE`, `MAE` of the sample median (gluonts' default forecast
  type "0.5"); MASE's scale is the seasonal naive error of each window's whole history (gluonts' `seasonal_error`).
- `wql`: gluonts' `MeanWeightedSumQuantileLoss` over quantile levels 0.1, ..., 0.9, the mean weighted quantile
  loss (what older gluonts called `mean_wQuantileLoss`, a coarse approximation of normalised CRPS).
- `crps`: exact CRPS of the empirical distribution of the samples at each window and step,
  mean_k |X_k - y| - 1/2 mean_{k,l} |X_k - X_l| (properscoring's `crps_ensemble`), averaged over windows and
  steps, in series units: the probabilistic counterpart of `mae`, which it equals for a point forecast.
- `coverage_50`, `coverage_90`: fraction of targets inside the central 50% / 90% interval of the samples;
  the nominal level is the optimum.
- `mse_std`, `mae_std`: the long-term forecasting literature's MSE and MAE, on series z-scored with the mean and
  standard deviation (ddof = 0) of their training part (`Windows.train_std`): each window's errors divided by its
  series' training std (squared for the MSE). The point forecasts are those of `mse` (the mixture mean) and `mae`
  (the sample median), so on one series mse_std = mse / std^2 and mae_std = mae / std. The shift of the z-score
  cancels in an error.
"""

from __future__ import annotations

import numpy as np

from bnnbench.errors import UsageError
from bnnbench.types import Windows

__all__ = ["FAN_LEVELS", "FORECAST_SAMPLES", "QUANTILE_LEVELS", "coverage", "crps", "fan_quantiles",
           "forecast_samples", "gluonts_metric", "sample_crps", "sample_quantiles", "standardised_mae",
           "standardised_mse"]

FORECAST_SAMPLES = 200
SAMPLE_SEED = 0
QUANTILE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
FAN_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)  # a fan chart's 90% and 50% bands and its median


def forecast_samples(mixture: np.ndarray, n_samples: int = FORECAST_SAMPLES, seed: int = SAMPLE_SEED) -> np.ndarray:
    """(N, n_samples, H) draws from the mixture given as components (N, S, H, 2) of (mean, log std) for a
    Gaussian, or (N, S, H, 3) of (location, log scale, df) for a Student-t."""
    n_components = mixture.shape[1]
    components = mixture[:, np.arange(n_samples) % n_components]
    rng = np.random.default_rng(seed)
    student_t = mixture.shape[-1] == 3
    noise = rng.standard_t(components[..., 2]) if student_t else rng.standard_normal(components.shape[:-1])
    return components[..., 0] + np.exp(components[..., 1]) * noise


def sample_crps(samples: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """CRPS of the empirical distribution of `samples` (N, K, H) at `targets` (N, H), per window and step.

    E|X - X'| over the K² pairs is computed from the sorted samples in O(K log K):
    sum_{k,l} |x_k - x_l| = 2 sum_k (2k - K - 1) x_(k) with k = 1..K."""
    n = samples.shape[1]
    spread = np.abs(samples - targets[:, None]).mean(axis=1)
    ordered = np.sort(samples, axis=1)
    weights = (2 * np.arange(1, n + 1) - n - 1).reshape(1, n, *([1] * (samples.ndim - 2)))
    pair_mean = 2 * (weights * ordered).sum(axis=1) / n**2
    return spread - 0.5 * pair_mean


def crps(mixture: np.ndarray, targets: np.ndarray, windows: Windows) -> float:
    """Mean of the sample CRPS over windows and steps."""
    return float(sample_crps(forecast_samples(mixture), targets).mean())


def sample_quantiles(samples: np.ndarray, levels) -> list[np.ndarray]:
    """Quantiles (N, H) of samples (N, K, H) as gluonts' `SampleForecast` takes them (nearest rank)."""
    ordered = np.sort(samples, axis=1)
    return [ordered[:, int(np.round((samples.shape[1] - 1) * level))] for level in levels]


def fan_quantiles(mixture: np.ndarray, levels=FAN_LEVELS) -> np.ndarray:
    """(N, len(levels), H) quantiles of the same forecast samples the metrics score, for fan charts."""
    return np.stack(sample_quantiles(forecast_samples(mixture), levels), axis=1)


def coverage(level: float):
    """The fraction of targets inside the central `level` interval of the forecast samples."""
    def fn(mixture: np.ndarray, targets: np.ndarray, windows: Windows) -> float:
        low, high = sample_quantiles(forecast_samples(mixture), [(1 - level) / 2, (1 + level) / 2])
        return float(np.mean((targets >= low) & (targets <= high)))

    fn.__name__ = f"coverage_{round(level * 100)}"
    return fn


def _train_std(windows: Windows) -> np.ndarray:
    """(N, 1) training-part standard deviations of the windows' series, float64."""
    if windows.train_std is None:
        raise UsageError("mse_std and mae_std need the training standard deviation of each window's series, which "
                         "these forecasting windows do not carry")
    return windows.train_std.numpy().astype(np.float64)[:, None]


def standardised_mse(mixture: np.ndarray, targets: np.ndarray, windows: Windows) -> float:
    """Mean over windows and steps of ((mixture mean - target) / training std)^2."""
    return float(np.mean(((mixture[..., 0].mean(axis=1) - targets) / _train_std(windows)) ** 2))


def standardised_mae(mixture: np.ndarray, targets: np.ndarray, windows: Windows) -> float:
    """Mean over windows and steps of |sample median - target| / training std (the median `mae` scores)."""
    [median] = sample_quantiles(forecast_samples(mixture), [0.5])
    return float(np.mean(np.abs(median - targets) / _train_std(windows)))


def _gluonts_data(mixture: np.ndarray, targets: np.ndarray, windows: Windows) -> dict[str, np.ndarray]:
    """The batch gluonts' metrics read: labels, forecast mean and quantiles (N, H), seasonal error (N, 1)."""
    samples = forecast_samples(mixture)
    quantiles = sample_quantiles(samples, QUANTILE_LEVELS)
    data = {str(q): quantile for q, quantile in zip(QUANTILE_LEVELS, quantiles, strict=True)}
    return data | {"label": targets, "mean": samples.mean(axis=1),
                   "seasonal_error": windows.seasonal_error.numpy().astype(np.float64)[:, None]}


def gluonts_metric(name: str):
    """A metric function computed by gluonts' evaluation (`gluonts.ev.metrics`) over all windows and steps."""
    def fn(mixture: np.ndarray, targets: np.ndarray, windows: Windows) -> float:
        from gluonts.ev import metrics

        definition = {"mase": metrics.MASE(), "smape": metrics.SMAPE(), "mae": metrics.MAE(),
                      "wql": metrics.MeanWeightedSumQuantileLoss(quantile_levels=QUANTILE_LEVELS)}[name]
        return float(definition(axis=None).update(_gluonts_data(mixture, targets, windows)).get())

    fn.__name__ = name
    return fn


# Per-window terms (N, K) of each metric, for paired bootstraps over test windows (`Metric.terms`); the mean of a
# window's terms over steps is the window's share, so windows are the examples a bootstrap resamples.

def _per_window(values: np.ndarray) -> np.ndarray:
    return values.reshape(len(values), -1).mean(axis=1, keepdims=True)


def crps_terms(mixture: np.ndarray, targets: np.ndarray, windows: Windows) -> np.ndarray:
    return _per_window(sample_crps(forecast_samples(mixture), targets))


def coverage_terms(level: float):
    def fn(mixture: np.ndarray, targets: np.ndarray, windows: Windows) -> np.ndarray:
        low, high = sample_quantiles(forecast_samples(mixture), [(1 - level) / 2, (1 + level) / 2])
        return _per_window((targets >= low) & (targets <= high))

    return fn


def standardised_mse_terms(mixture: np.ndarray, targets: np.ndarray, windows: Windows) -> np.ndarray:
    return _per_window(((mixture[..., 0].mean(axis=1) - targets) / _train_std(windows)) ** 2)


def standardised_mae_terms(mixture: np.ndarray, targets: np.ndarray, windows: Windows) -> np.ndarray:
    [median] = sample_quantiles(forecast_samples(mixture), [0.5])
    return _per_window(np.abs(median - targets) / _train_std(windows))


def gluonts_metric_terms(name: str):
    """Per-window terms of gluonts' metric `name`, as gluonts.ev defines it: MAE, MASE (the absolute error over the
    window's seasonal error) and sMAPE are means over windows and steps; wql's terms are each level's summed
    quantile loss and the summed |label| of the window, which `weighted_quantile_loss` combines as a ratio."""
    def fn(mixture: np.ndarray, targets: np.ndarray, windows: Windows) -> np.ndarray:
        data = _gluonts_data(mixture, targets, windows)
        median, label = data["0.5"], data["label"]
        if name == "mae":
            return _per_window(np.abs(label - median))
        if name == "mase":
            return _per_window(np.abs(label - median) / data["seasonal_error"])
        if name == "smape":
            return _per_window(2 * np.abs(label - median) / (np.abs(label) + np.abs(median)))
        losses = [2 * np.abs((label - data[str(q)]) * ((label <= data[str(q)]) - q)).reshape(len(label), -1).sum(1)
                  for q in QUANTILE_LEVELS]
        return np.stack([*losses, np.abs(label).reshape(len(label), -1).sum(1)], axis=1)

    return fn


def weighted_quantile_loss(mean_terms: np.ndarray) -> np.ndarray:
    """wql from the mean over windows of `gluonts_metric_terms("wql")`: the mean over levels of loss / |label|."""
    return (mean_terms[..., :-1] / mean_terms[..., -1:]).mean(axis=-1)
