"""The z-scored forecasting metrics mse_std and mae_std (the long-term forecasting literature's MSE and MAE) against
numpy, and the training-part standard deviation the loader carries on `Windows` for them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bnnbench.data import load_data
from bnnbench.errors import UsageError
from bnnbench.metrics import METRICS, metrics_for
from bnnbench.types import Windows


def _windows(train_std: np.ndarray | None) -> Windows:
    n = 6 if train_std is None else len(train_std)
    std = None if train_std is None else torch.as_tensor(train_std, dtype=torch.float32)
    return Windows(torch.zeros(n), torch.ones(n), torch.ones(n), std)


def _score(name: str, mixture: np.ndarray, targets: np.ndarray, windows: Windows) -> float:
    return METRICS.get(name).score("gaussian", mixture, targets, windows)


def _mixture(rng: np.random.Generator, n: int, horizon: int, log_std: float) -> np.ndarray:
    """(n, 3 components, horizon, 2) Gaussian components, (mean, log std)."""
    means = rng.normal(0, 3, size=(n, 3, horizon))
    return np.stack([means, np.full_like(means, log_std)], axis=-1)


def test_mse_std_is_mse_over_the_training_variance():
    rng = np.random.default_rng(0)
    mixture, targets = _mixture(rng, 6, 5, 0.0), rng.normal(0, 3, size=(6, 5))
    std = 2.5
    expected = np.mean((mixture[..., 0].mean(axis=1) - targets) ** 2) / std**2
    value = _score("mse_std", mixture, targets, _windows(np.full(6, std)))
    assert value == pytest.approx(expected, rel=1e-6)
    assert value == pytest.approx(_score("mse", mixture, targets, _windows(np.full(6, std))) / std**2, rel=1e-6)


def test_mae_std_is_mae_over_the_training_std():
    rng = np.random.default_rng(1)
    std = 0.4
    # a point forecast (log std -30): the sample median is the mixture's components' mean, known without sampling
    point = _mixture(rng, 6, 5, -30.0)
    point[:, :, :, 0] = point[:, :1, :, 0]  # every component at the same mean
    targets = rng.normal(0, 3, size=(6, 5))
    expected = np.mean(np.abs(point[:, 0, :, 0] - targets)) / std
    assert _score("mae_std", point, targets, _windows(np.full(6, std))) == pytest.approx(expected, rel=1e-6)
    # a spread predictive: the same median forecast as `mae` (gluonts), divided by the std
    spread = _mixture(rng, 6, 5, 0.5)
    windows = _windows(np.full(6, std))
    assert _score("mae_std", spread, targets, windows) == pytest.approx(
        _score("mae", spread, targets, windows) / std, rel=1e-6)


def test_each_window_is_scaled_by_its_own_series():
    """Two series of different training std (gluonts data sets have many): each window's errors divided by its
    own series' std, as z-scoring each series separately would."""
    rng = np.random.default_rng(2)
    mixture, targets = _mixture(rng, 4, 3, -30.0), rng.normal(size=(4, 3))
    mixture[:, :, :, 0] = mixture[:, :1, :, 0]
    std = np.array([1.0, 1.0, 10.0, 10.0])
    error = mixture[:, 0, :, 0] - targets
    windows = _windows(std)
    assert _score("mse_std", mixture, targets, windows) == pytest.approx(
        np.mean((error / std[:, None]) ** 2), rel=1e-6)
    assert _score("mae_std", mixture, targets, windows) == pytest.approx(
        np.mean(np.abs(error) / std[:, None]), rel=1e-6)


def test_windows_without_a_training_std_are_a_usage_error():
    rng = np.random.default_rng(3)
    with pytest.raises(UsageError, match="training standard deviation"):
        _score("mse_std", _mixture(rng, 6, 2, 0.0), rng.normal(size=(6, 2)), _windows(None))


def test_registered_as_forecasting_metrics_lower_is_better():
    for name in ("mse_std", "mae_std"):
        metric = METRICS.get(name)
        assert metric.needs_windows and not metric.higher_is_better
        assert set(metric.fns) == {"gaussian", "student-t"}
        assert name in metrics_for("gaussian", forecasting=True)
        assert name not in metrics_for("gaussian")


def test_loaded_windows_carry_numpys_std_of_the_training_part(tmp_path):
    """A tiny ETTh2.csv in the release's layout: every split's windows carry the population (ddof 0) standard
    deviation of the series before the validation and test spans, as the LTSF StandardScaler computes it."""
    rows = 600
    rng = np.random.default_rng(4)
    target = 30 + np.cumsum(rng.normal(size=rows))
    dates = pd.date_range("2016-07-01", periods=rows, freq="h").strftime("%Y-%m-%d %H:%M:%S")
    (tmp_path / "ltsf").mkdir()
    pd.DataFrame({"date": dates, "HUFL": rng.normal(size=rows), "OT": target}).to_csv(
        tmp_path / "ltsf" / "ETTh2.csv", index=False)
    data = {"source": "timeseries", "dataset": "ETTh2", "context_length": 48, "prediction_length": 24,
            "test_windows": 3, "val_windows": 2, "window_distance": 12}
    loaded = load_data(data, "test", tmp_path)
    held_out = (24 + 2 * 12) + (24 + 1 * 12)  # the test and validation spans
    expected = target[:rows - held_out].std()  # numpy's default, ddof 0
    assert expected != pytest.approx(target[:rows - held_out].std(ddof=1), rel=1e-4)
    for split in (loaded.bundle.train, loaded.bundle.val, loaded.test):
        std = split.windows.train_std.double().numpy()
        assert std.shape == (len(split),)
        np.testing.assert_allclose(std, expected, rtol=1e-6)
