"""Forecasting: window splits, loaders on files the tests write, models, metrics against gluonts, properscoring
and closed forms, the series-units evaluator, and the Laplace methods' Gaussian GGN on learned noise."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from bnnbench.data.timeseries import Config, Series, read_series, window_splits
from bnnbench.errors import UsageError
from bnnbench.forecast_metrics import QUANTILE_LEVELS, forecast_samples, sample_crps
from bnnbench.likelihoods import Gaussian, StudentT
from bnnbench.metrics import METRICS, gaussian_nll
from bnnbench.models.forecast import TrendRemainder, dlinear, forecast_mlp, patchtst
from bnnbench.types import Windows


def _series(seed: int, length: int, freq: str = "h") -> Series:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    values = 10 + 3 * np.sin(2 * np.pi * t / 24) + 0.01 * t + rng.normal(0, 0.5, length)
    return Series(pd.Period("2021-01-01 00:00", freq=freq), values)


CONFIG = Config(dataset="co2", context_length=48, prediction_length=12, test_windows=3, val_windows=2,
                window_distance=6, seasonality=24)


def _unnormalise(split, values):
    return values * split.windows.scale[:, None].double().numpy() + split.windows.shift[:, None].double().numpy()


def test_windows_match_gluonts_test_pairs_and_never_overlap_later_splits():
    from gluonts.dataset.split import split

    series = [_series(0, 300), _series(1, 260)]
    train, val, test = window_splits(series, CONFIG)
    assert (len(val), len(test)) == (2 * 2, 2 * 3)
    entries = [{"start": s.start, "target": s.values} for s in series]
    span = 12 + 2 * 6
    _, template = split(entries, offset=-span)
    pairs = list(template.generate_instances(12, windows=3, distance=6))
    labels = np.stack([label["target"] for _, label in pairs])
    contexts = np.stack([inp["target"][-48:] for inp, _ in pairs])
    np.testing.assert_allclose(_unnormalise(test, test.y.double().numpy()), labels, rtol=1e-5)
    np.testing.assert_allclose(_unnormalise(test, test.x.double().numpy()), contexts, rtol=1e-5)
    # normalised by each context's mean and standard deviation
    np.testing.assert_allclose(test.windows.shift.numpy(), contexts.mean(1), rtol=1e-6)
    np.testing.assert_allclose(test.windows.scale.numpy(), contexts.std(1), rtol=1e-5)
    np.testing.assert_allclose(test.x.mean(1).numpy(), 0, atol=1e-5)
    # the last training label ends where validation begins, the last validation label where test begins
    first_series = len(series[0].values)
    val_span = 12 + 1 * 6
    train_end = first_series - span - val_span
    last_train_label = series[0].values[train_end - 12:train_end]
    n_train_first = train_end - (48 + 12) + 1
    np.testing.assert_allclose(_unnormalise(train, train.y.double().numpy())[n_train_first - 1], last_train_label,
                               rtol=1e-5)
    assert len(train) == n_train_first + (len(series[1].values) - span - val_span) - (48 + 12) + 1
    first_val_label = _unnormalise(val, val.y.double().numpy())[0]
    np.testing.assert_allclose(first_val_label, series[0].values[train_end:train_end + 12], rtol=1e-5)


def test_seasonal_error_is_gluonts_on_the_whole_history():
    from gluonts.ev.ts_stats import seasonal_error

    series = [_series(2, 200)]
    *_, test = window_splits(series, CONFIG)
    history = series[0].values[:200 - (12 + 2 * 6)]
    assert test.windows.seasonal_error[0].item() == pytest.approx(seasonal_error(history, 24).item(), rel=1e-6)
    manual = np.abs(history[24:] - history[:-24]).mean()
    assert test.windows.seasonal_error[0].item() == pytest.approx(manual, rel=1e-6)


def test_too_short_series_is_one_line_error():
    with pytest.raises(UsageError, match="series 0 of co2 has 50 points; the task's windows need at least"):
        window_splits([_series(0, 50)], CONFIG)


def test_an_edited_ltsf_csv_is_another_run_id(tmp_path):
    from bnnbench.data import load_data
    from bnnbench.data.timeseries import source_files

    rows = 96 * 96 + 48 * 96 + 336 + 2000
    dates = pd.date_range("2016-07-01", periods=rows, freq="15min").strftime("%Y-%m-%d %H:%M:%S")
    frame = pd.DataFrame({"date": dates, "HUFL": np.zeros(rows), "OT": np.sin(np.arange(rows) / 15.0)})
    (tmp_path / "ltsf").mkdir()
    csv = tmp_path / "ltsf" / "ETTm1.csv"
    data = {"source": "timeseries", "dataset": "ETTm1", "context_length": 336, "prediction_length": 96}
    config = Config(dataset="ETTm1", context_length=336, prediction_length=96)
    hashes = []
    for value in (0.0, 1e-3):
        frame.loc[100, "OT"] = value
        frame.to_csv(csv, index=False)
        assert source_files(config, tmp_path) == [csv]
        hashes.append(load_data(data, "test", tmp_path).info["data_fingerprint"]["sha256"])
    assert hashes[0] != hashes[1]


def test_ltsf_csv_loader_reads_the_target_column(tmp_path):
    dates = pd.date_range("2016-07-01", periods=40, freq="15min")
    frame = pd.DataFrame({"date": dates.strftime("%Y-%m-%d %H:%M:%S"), "HUFL": np.arange(40.0),
                          "OT": np.linspace(30, 31, 40)})
    (tmp_path / "ltsf").mkdir()
    frame.to_csv(tmp_path / "ltsf" / "ETTm1.csv", index=False)
    [series] = read_series(Config(dataset="ETTm1", context_length=4, prediction_length=2), tmp_path)
    np.testing.assert_allclose(series.values, np.linspace(30, 31, 40))
    assert series.start == pd.Period("2016-07-01 00:00", freq="15min")
    with pytest.raises(UsageError, match="'NOPE'.*HUFL, OT"):
        read_series(Config(dataset="ETTm1", context_length=4, prediction_length=2, target="NOPE"), tmp_path)
    with pytest.raises(UsageError, match=r"ETTh1.csv not found; put the ETTh1 CSV .* --data-dir") as error:
        read_series(Config(dataset="ETTh1", context_length=4, prediction_length=2), tmp_path)
    assert "\n" not in str(error.value)


def test_gluonts_repository_loader_reads_files_in_gluonts_format(tmp_path):
    """The repository's on-disk layout: metadata.json and JSON-lines train/test folders; a test set that
    repeats each series per rolling window yields each series once, at its longest."""
    folder = tmp_path / "gluonts" / "electricity"
    (folder / "train").mkdir(parents=True)
    (folder / "test").mkdir()
    (folder / "metadata.json").write_text(json.dumps({"freq": "1H", "prediction_length": 24}))
    rows = [{"start": "2014-01-01 00:00:00", "target": list(range(100)), "item_id": "a"},
            {"start": "2014-01-01 00:00:00", "target": list(range(124)), "item_id": "a"},
            {"start": "2014-01-02 00:00:00", "target": [1.0] * 90, "item_id": "b"}]
    (folder / "train" / "data.json").write_text(json.dumps(rows[0]) + "\n")
    (folder / "test" / "data.json").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    series = read_series(Config(dataset="gluonts:electricity", context_length=4, prediction_length=2), tmp_path)
    assert [len(s.values) for s in series] == [124, 90]
    np.testing.assert_array_equal(series[0].values, np.arange(124))
    assert series[1].start.hour == 0 and series[1].start.day == 2


def test_embedded_series_load_offline():
    [co2] = read_series(Config(dataset="co2", context_length=4, prediction_length=2), None)
    assert len(co2.values) == 2284 and not np.isnan(co2.values).any()
    assert 313 < co2.values[0] < 317 and co2.start.freqstr.startswith("W")


def test_dlinear_is_trend_plus_remainder_maps():
    torch.manual_seed(0)
    model = dlinear((30,), 5, moving_average=5, channels=1)
    x = torch.randn(3, 30, dtype=torch.float64)
    model = model.double()
    padded = torch.cat([x[:, :1].repeat(1, 2), x, x[:, -1:].repeat(1, 2)], dim=1)
    trend = torch.stack([padded[:, i:i + 5].mean(1) for i in range(30)], dim=1)
    parts = TrendRemainder(5)(x)
    torch.testing.assert_close(parts[:, :30], trend)
    linear = model[1]
    expected = trend @ linear.weight[:, :30].T + (x - trend) @ linear.weight[:, 30:].T + linear.bias
    torch.testing.assert_close(model(x)[..., 0], expected)


@pytest.mark.parametrize("factory", [forecast_mlp, dlinear, patchtst])
def test_forecast_models_output_per_step_channels_from_their_last_layer(factory):
    model = factory((64,), 12)
    x = torch.randn(5, 64)
    assert model(x).shape == (5, 12, 2)
    head = model.get_submodule(model.bnnbench_last_layer)
    assert isinstance(head, torch.nn.Linear) and head.out_features == 24
    assert factory((64,), 12, channels=1)(x).shape == (5, 12, 1)


def _gaussian_crps(mean, std, y):
    z = (y - mean) / std
    return std * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi))


def test_sample_crps_matches_properscoring_and_the_gaussian_closed_form():
    import properscoring

    rng = np.random.default_rng(0)
    samples = rng.normal(size=(4, 50, 3))
    targets = rng.normal(size=(4, 3))
    reference = properscoring.crps_ensemble(targets, np.moveaxis(samples, 1, -1))
    np.testing.assert_allclose(sample_crps(samples, targets), reference, rtol=1e-12, atol=1e-12)

    mean, std = np.array([[0.0, 2.0]]), np.array([[1.0, 0.5]])
    mixture = np.stack([mean, np.log(std)], -1)[:, None]  # one component: (N=1, S=1, H=2, 2)
    y = np.array([[0.3, 3.1]])
    draws = forecast_samples(mixture, n_samples=40_000)
    np.testing.assert_allclose(sample_crps(draws, y), _gaussian_crps(mean, std, y), rtol=0.02)


def test_forecast_samples_take_the_mixture_components_in_turn():
    mixture = np.zeros((1, 2, 1, 2))
    mixture[0, 1, 0, 0] = 100.0
    mixture[..., 1] = np.log(1e-6)
    draws = forecast_samples(mixture, n_samples=6)[0, :, 0]
    np.testing.assert_allclose(draws, [0, 100, 0, 100, 0, 100], atol=1e-3)


def test_coverage_of_a_calibrated_gaussian_is_nominal():
    rng = np.random.default_rng(1)
    n = 4000
    mixture = np.zeros((n, 1, 1, 2))
    targets = rng.normal(size=(n, 1))
    windows = Windows(torch.zeros(n), torch.ones(n), torch.ones(n))
    for name, level in (("coverage_50", 0.5), ("coverage_90", 0.9)):
        value = METRICS.get(name).score("gaussian", mixture, targets, windows)
        assert value == pytest.approx(level, abs=0.03)
    assert METRICS.get("coverage_90").badness(0.9) == 0


def test_mase_smape_mae_wql_equal_gluonts_evaluate_forecasts():
    """bnnbench's windows and metrics against gluonts' own pipeline: TestData from gluonts' split, the same
    forecast samples as SampleForecast objects, `evaluate_forecasts`."""
    from gluonts.dataset.split import split
    from gluonts.ev.metrics import MAE, MASE, SMAPE, MeanWeightedSumQuantileLoss
    from gluonts.model.evaluation import evaluate_forecasts
    from gluonts.model.forecast import SampleForecast

    series = [_series(3, 240), _series(4, 200)]
    *_, test = window_splits(series, CONFIG)
    rng = np.random.default_rng(5)
    targets = _unnormalise(test, test.y.double().numpy())
    components = np.stack([targets[:, None] + rng.normal(0, 0.7, (len(targets), 3, 12)),
                           np.log(rng.uniform(0.2, 1.0, (len(targets), 3, 12)))], axis=-1)
    ours = {name: METRICS.get(name).score("gaussian", components, targets, test.windows)
            for name in ("mase", "smape", "mae", "wql")}

    entries = [{"start": s.start, "target": s.values, "item_id": str(i)} for i, s in enumerate(series)]
    _, template = split(entries, offset=-(12 + 2 * 6))
    test_data = template.generate_instances(12, windows=3, distance=6)
    samples = forecast_samples(components)
    forecasts = [SampleForecast(samples[i], start_date=label["start"], item_id=label["item_id"])
                 for i, (_, label) in enumerate(test_data)]
    table = evaluate_forecasts(forecasts, test_data=test_data, seasonality=24,
                               metrics=[MASE(), SMAPE(), MAE(), MeanWeightedSumQuantileLoss(QUANTILE_LEVELS)])
    assert ours["mase"] == pytest.approx(table["MASE[0.5]"].item(), rel=1e-6)
    assert ours["smape"] == pytest.approx(table["sMAPE[0.5]"].item(), rel=1e-6)
    assert ours["mae"] == pytest.approx(table["MAE[0.5]"].item(), rel=1e-6)
    assert ours["wql"] == pytest.approx(table["mean_weighted_sum_quantile_loss"].item(), rel=1e-6)


def test_gaussian_affine_scores_in_series_units():
    """NLL in series units is the normalised NLL plus the log-Jacobian sum_h log scale per window."""
    rng = np.random.default_rng(2)
    mixture = np.stack([rng.normal(size=(6, 4, 5)), rng.normal(-1, 0.3, (6, 4, 5))], -1)
    y = rng.normal(size=(6, 5))
    shift, scale = rng.normal(size=6), rng.uniform(0.5, 3, 6)
    moved = Gaussian().affine(mixture, shift, scale)
    y_series = shift[:, None] + scale[:, None] * y
    expected = gaussian_nll(mixture, y) + 5 * np.log(scale).mean()
    assert gaussian_nll(moved, y_series) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("likelihood", [Gaussian(), StudentT(df=4.0)], ids=["gaussian", "student-t"])
def test_regression_view_ggn_is_the_likelihood_fisher_ggn(likelihood):
    """laplace-torch's full GGN through RegressionView equals sum_i J_iᵀ diag(a/σ², b) J_i in (μ, log σ), the
    Fisher of N(μ, σ²) (a = 1, b = 2) or of t_ν(μ, σ) (a = (ν+1)/(ν+3), b = 2ν/(ν+3)), built here from
    torch.func Jacobians of the raw network."""
    from laplace import Laplace
    from torch.func import functional_call, jacrev

    from bnnbench.methods.laplace.common import RegressionView, data_loader
    from bnnbench.types import Split

    torch.manual_seed(0)
    network = forecast_mlp((6,), 3, hidden=[5]).double()
    x, y = torch.randn(7, 6, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    view = RegressionView(network, likelihood)
    laplace = Laplace(view, "regression", subset_of_weights="all", hessian_structure="full", sigma_noise=1.0,
                      prior_precision=0.0)
    laplace.fit(data_loader(Split(x, y), 7, True, view))

    params = {name: value.detach() for name, value in network.named_parameters()}
    jacobians = jacrev(lambda p: functional_call(network, p, (x,)))(params)
    flat = torch.cat([j.reshape(7, 3, 2, -1) for j in jacobians.values()], dim=-1)  # (N, H, 2, P)
    outputs = network(x).detach()
    nu = getattr(likelihood, "df", math.inf)
    a, b = (1.0, 2.0) if math.isinf(nu) else ((nu + 1) / (nu + 3), 2 * nu / (nu + 3))
    weights = torch.stack([a * torch.exp(-2 * outputs[..., 1]), torch.full_like(outputs[..., 1], b)], -1)
    fisher = torch.einsum("nhcp,nhc,nhcq->pq", flat, weights, flat)
    torch.testing.assert_close(laplace.H, fisher, rtol=1e-6, atol=1e-8)
    # and the view maps samples of g back to the network's outputs exactly (weights sampled: σ is the sample's)
    g = view(x).unsqueeze(0)
    torch.testing.assert_close(view.network_outputs(g, x, linearised=False)[0], outputs)


def test_student_t_likelihood_metrics_and_samples_match_scipy():
    t = StudentT(df=4.0)
    outputs = torch.tensor([[[0.5, math.log(2.0)]], [[-1.0, 0.0]]], dtype=torch.float64)  # (B=2, H=1, 2)
    y = torch.tensor([[1.7], [-3.0]], dtype=torch.float64)
    expected = stats.t.logpdf(y.numpy()[:, 0], 4.0, loc=[0.5, -1.0], scale=[2.0, 1.0])
    np.testing.assert_allclose(t.log_likelihood(outputs, y).numpy(), expected, rtol=1e-12)
    mixture = t.mixture(t.log_predictive(outputs).unsqueeze(0)).numpy()  # (B, S=1, H, 3)
    assert METRICS.get("nll").fn_for("student-t")(mixture, y.numpy()) == pytest.approx(-expected.mean(), rel=1e-12)
    draws = forecast_samples(mixture, n_samples=40_000)[0, :, 0]
    np.testing.assert_allclose(np.quantile(draws, [0.05, 0.5, 0.95]),
                               stats.t.ppf([0.05, 0.5, 0.95], 4.0, loc=0.5, scale=2.0), atol=0.06)
    moved = t.affine(mixture, np.array([10.0, 0.0]), np.array([3.0, 1.0]))
    np.testing.assert_allclose(moved[0, 0, 0], [10 + 3 * 0.5, math.log(6.0), 4.0])
    with pytest.raises(UsageError, match="df must be a number above 2"):
        StudentT(df=2)


# sampled-laplace's EM and sample solves on ts-co2 took 38.6 s alone and 142 s inside `make test` (2 workers) on
# 2026-12-07: `make test-all` runs it; the ts-co2 CI gate runs sampled-laplace with the Gaussian head in make test
@pytest.mark.parametrize("method", ["map", "laplace-ll",
                                    pytest.param("sampled-laplace", marks=pytest.mark.slow)])
def test_student_t_head_runs_on_ts_co2(cli, tmp_path, results_dir, method):
    from bnnbench.tasks import load_task

    task_file = tmp_path / "ts-co2-mlp-t.toml"
    task_file.write_text(f'include = "{load_task("ts-co2-mlp").path}"\nname = "ts-co2-mlp-t"\nversion = 1\n'
                         'description = "ts-co2-mlp with a Student-t head"\n'
                         'likelihood = { name = "student-t", df = 4 }\n')
    result = cli("run", "--task", str(task_file), "--method", method, "--budget", "ci", "--results-dir",
                 str(results_dir), "--quiet", "--device", "cpu")
    assert result.code == 0, result.stderr
    [metrics_csv] = results_dir.glob(f"ts-co2-mlp-t/{method}/*/metrics.csv")
    test = pd.read_csv(metrics_csv).query("split == 'test'").set_index("metric")["value"]
    assert np.isfinite(test).all() and 0 < test["crps"] < 2 and 0.5 < test["coverage_90"] <= 1


def test_sampled_laplace_output_curvature_square_root_on_learned_noise():
    from bnnbench.methods.laplace.sampled import OutputCurvature

    outputs = torch.randn(4, 3, 2, dtype=torch.float64)
    curvature = OutputCurvature(Gaussian(), outputs)  # the Gaussian Fisher diag(1/σ², 2)
    vectors = torch.randn(2, 4, 3, 2, dtype=torch.float64)
    expected = vectors * torch.stack([torch.exp(-2 * outputs[..., 1]), torch.full((4, 3), 2.0,
                                                                                   dtype=torch.float64)], -1)
    torch.testing.assert_close(curvature.product(vectors), expected)
    torch.testing.assert_close(curvature.sqrt_product(curvature.sqrt_product(vectors)), expected)


@pytest.mark.parametrize("method", ["map", "ensemble", pytest.param("laplace-ll", marks=pytest.mark.slow)])  # ~70 s
def test_ettm1_patchtst_ci_run_on_a_fake_csv(cli, tmp_path, results_dir, method):
    """The file-based PatchTST task end to end on an ETTm1.csv in the real layout, written here: windows from
    the loader, the transformer, and metrics in the series' units (a seasonal naive error near 1 scale)."""
    rows = 96 * 96 + 48 * 96 + 336 + 2000
    t = np.arange(rows)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"date": pd.date_range("2016-07-01", periods=rows, freq="15min").strftime("%Y-%m-%d %H:%M:%S"),
                          "HUFL": rng.normal(size=rows),
                          "OT": 20 + 5 * np.sin(2 * np.pi * t / 96) + rng.normal(0, 0.3, rows)})
    (tmp_path / "ltsf").mkdir()
    frame.to_csv(tmp_path / "ltsf" / "ETTm1.csv", index=False)
    result = cli("run", "--task", "ettm1-patchtst", "--method", method, "--budget", "ci", "--data-dir", str(tmp_path),
                 "--results-dir", str(results_dir), "--quiet", "--device", "cpu")
    assert result.code == 0, result.stderr
    [metrics_csv] = results_dir.glob(f"ettm1-patchtst/{method}/*/metrics.csv")
    table = pd.read_csv(metrics_csv)
    test = table[(table["split"] == "test")].set_index("metric")["value"]
    assert set(test.index) == {"crps", "nll", "mase", "smape", "mae", "mse", "wql", "coverage_50", "coverage_90"}
    assert np.isfinite(test).all() and 0 < test["crps"] < 10 and 0 <= test["coverage_90"] <= 1
