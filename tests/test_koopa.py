"""Koopa (bnnbench.models.koopa) against the paper's stated properties, checked with numpy where a property has a
closed form: the Fourier filter's split, the linearity of the global operator, DMD recovering a known linear map,
training on a sum of sines, torch.func; and the five LTSF tasks that use it, on CSVs in the release's layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.func import functional_call, jvp, stack_module_state, vmap

from bnnbench.errors import UsageError
from bnnbench.models import check_buildable, last_layer_name
from bnnbench.models.koopa import FourierFilter, KoopmanOperator, fit_local_operator, koopa
from bnnbench.tasks import load_task, resources_for
from bnnbench.types import Resources

KOOPA_TASKS = {"etth2-koopa": 48, "weather-koopa": 48, "traffic-koopa": 48, "ili-koopa": 24, "ecl-koopa": 48}
# The Autoformer/Informer release's files: name, first date, frequency, rows, some of the other columns
LTSF_LAYOUTS = {
    "ETTh2": ("ETTh2.csv", "2016-07-01 00:00:00", "h", 17420, ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL"]),
    "Weather": ("weather.csv", "2020-01-01 00:10:00", "10min", 52696, ["p (mbar)", "T (degC)", "rh (%)"]),
    "Traffic": ("traffic.csv", "2016-07-01 02:00:00", "h", 17544, ["0", "1", "2"]),
    "ECL": ("electricity.csv", "2016-07-01 02:00:00", "h", 26304, ["0", "1", "2"]),
    "ILI": ("national_illness.csv", "2002-01-01 00:00:00", "W-TUE", 966, ["% WEIGHTED ILI", "%UNWEIGHTED ILI"]),
}
_PERIOD = {"h": 24, "10min": 144, "W-TUE": 52}  # steps per day, or per year for weekly data


def write_ltsf_csv(root: Path, dataset: str, seed: int = 0) -> np.ndarray:
    """`<root>/ltsf/<file>` with the release's length, date format and columns (OT last), OT a level plus a
    seasonal sine plus noise; returns OT."""
    file_name, start, freq, rows, columns = LTSF_LAYOUTS[dataset]
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    target = 20 + 5 * np.sin(2 * np.pi * t / _PERIOD[freq]) + 0.01 * t / _PERIOD[freq] + rng.normal(0, 0.5, rows)
    frame = pd.DataFrame({"date": pd.date_range(start, periods=rows, freq=freq).strftime("%Y-%m-%d %H:%M:%S")}
                         | {column: rng.normal(size=rows).round(3) for column in columns} | {"OT": target})
    (root / "ltsf").mkdir(parents=True, exist_ok=True)
    frame.to_csv(root / "ltsf" / file_name, index=False)
    return target


@pytest.mark.parametrize(("context", "horizon", "channels", "seg_len"),
                         [(96, 48, 2, 48), (48, 24, 1, 12), (100, 30, 2, 24), (192, 96, 2, 48), (50, 7, 1, 25)])
def test_output_shapes(context, horizon, channels, seg_len):
    model = koopa((context,), horizon, seg_len=seg_len, dynamic_dim=8, hidden_dim=16, num_blocks=2,
                  channels=channels)
    out = model(torch.randn(5, context))
    assert out.shape == (5, horizon, channels) and torch.isfinite(out).all()
    assert last_layer_name(model) == "head"


def test_the_head_starts_as_the_koopa_forecast_with_unit_scale():
    model = koopa((96,), 48, seg_len=24, dynamic_dim=8, hidden_dim=16)
    x = torch.randn(4, 96)
    out = model(x)
    torch.testing.assert_close(out[..., 0], model.forecast(x))
    torch.testing.assert_close(out[..., 1], torch.zeros(4, 48))


@pytest.mark.parametrize(("options", "message"), [
    ({"seg_len": 96}, r"seg_len \(96\) must be less than context_length \(96\)"),
    ({"seg_len": 0}, "seg_len must be >= 1"),
    ({"invariant_fraction": 0.0}, "invariant_fraction must be in"),
    ({"invariant_fraction": 1.5}, "invariant_fraction must be in"),
    ({"channels": 3}, "channels must be 1"),
    ({"num_blocks": 0}, "num_blocks must be >= 1"),
    ({"dynamic_dim": 0}, "dynamic_dim must be >= 1"),
    ({"hidden_layers": -1}, "hidden_layers must be >= 0"),
])
def test_bad_options_are_value_errors_and_one_line_usage_errors(options, message):
    with pytest.raises(ValueError, match=message):
        koopa((96,), 48, **options)
    with pytest.raises(UsageError, match=message) as error:
        check_buildable({"name": "koopa", **options}, (96,), 48)
    assert "\n" not in str(error.value)


def test_inputs_must_be_windows():
    with pytest.raises(ValueError, match="forecasting models take"):
        koopa((3, 96), 48)


@pytest.mark.parametrize("length", [96, 97])
def test_fourier_filter_splits_the_spectrum_on_the_largest_amplitudes(length):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, length))
    filt = FourierFilter(length, invariant_fraction=0.2)
    invariant, variant = (part.numpy() for part in filt(torch.from_numpy(x)))
    np.testing.assert_allclose(invariant + variant, x, atol=1e-12)
    n_freq = length // 2 + 1
    n_keep = int(0.2 * n_freq)
    assert filt.n_invariant == n_keep
    spectrum = np.fft.rfft(x, axis=1)
    chosen = np.zeros(spectrum.shape, dtype=bool)
    np.put_along_axis(chosen, np.argsort(-np.abs(spectrum), axis=1)[:, :n_keep], True, axis=1)
    np.testing.assert_array_equal(filt.invariant_mask(torch.from_numpy(x)).numpy().astype(bool), chosen)
    inv_spectrum, var_spectrum = np.fft.rfft(invariant, axis=1), np.fft.rfft(variant, axis=1)
    np.testing.assert_allclose(inv_spectrum[chosen], spectrum[chosen], atol=1e-9)
    np.testing.assert_allclose(inv_spectrum[~chosen], 0, atol=1e-9)
    np.testing.assert_allclose(var_spectrum[chosen], 0, atol=1e-9)
    np.testing.assert_allclose(var_spectrum[~chosen], spectrum[~chosen], atol=1e-9)


def test_fourier_filter_keeps_the_dominant_periods_as_the_invariant_part():
    t = np.arange(96)
    seasonal = 3 * np.sin(2 * np.pi * 4 * t / 96) + 2 * np.cos(2 * np.pi * 12 * t / 96)
    noise = np.random.default_rng(1).normal(0, 0.05, 96)
    filt = FourierFilter(96, invariant_fraction=0.05)  # two of the 49 frequencies
    invariant, variant = filt(torch.from_numpy(seasonal + noise)[None])
    np.testing.assert_allclose(invariant[0].numpy(), seasonal, atol=0.05)
    assert filt.n_invariant == 2 and variant.std() < 0.06


def test_global_koopman_operator_is_linear_and_starts_orthogonal():
    operator = KoopmanOperator(16).double()
    z1, z2 = torch.randn(3, 16, dtype=torch.float64), torch.randn(3, 16, dtype=torch.float64)
    torch.testing.assert_close(operator(2.5 * z1 - 0.7 * z2), 2.5 * operator(z1) - 0.7 * operator(z2))
    torch.testing.assert_close(operator.weight.T @ operator.weight, torch.eye(16, dtype=torch.float64), atol=1e-6,
                               rtol=0)
    assert operator.bias is None


def _linear_system(dim: int, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A = a rotation-like stable map (spectral radius 0.95) and its trajectory z_{t+1} = A z_t as rows."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    a = 0.95 * q @ np.diag(rng.uniform(0.8, 1.0, dim)) @ q.T @ np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    z = [rng.normal(size=dim)]
    for _ in range(steps - 1):
        z.append(a @ z[-1])
    return a, np.stack(z)


def test_local_operator_recovers_a_known_linear_map_and_forecasts_it():
    systems = [_linear_system(4, 20, seed) for seed in range(3)]
    a = np.stack([s[0] for s in systems])
    z = torch.from_numpy(np.stack([s[1] for s in systems]))  # (3 windows, 20 snapshots, 4)
    operator = fit_local_operator(z[:, :-1], z[:, 1:], ridge=1e-14)
    np.testing.assert_allclose(operator.matrix().numpy(), a.transpose(0, 2, 1), atol=1e-6)  # rows: z_next = z @ A^T
    state, expected = z[:, -1:], np.stack([s[1][-1] for s in systems])
    for _ in range(5):
        state = operator.advance(state)
        expected = np.einsum("bij,bj->bi", a, expected)
        np.testing.assert_allclose(state[:, 0].numpy(), expected, atol=1e-6)
    default = fit_local_operator(z[:, :-1].float(), z[:, 1:].float())  # the model's ridge, in float32
    np.testing.assert_allclose(default.matrix().numpy(), a.transpose(0, 2, 1), atol=0.05)


def test_local_operator_with_one_transition_maps_it_exactly():
    z = torch.randn(2, 2, 8, dtype=torch.float64)  # two segments: the authors' seg_len = horizon, context 2x
    operator = fit_local_operator(z[:, :1], z[:, 1:], ridge=1e-12)
    torch.testing.assert_close(operator.advance(z[:, :1]), z[:, 1:])


def test_trains_on_a_sum_of_sines_well_below_trivial_predictors():
    torch.manual_seed(0)
    t = np.arange(2600)
    series = np.sin(2 * np.pi * t / 24) + 0.5 * np.sin(2 * np.pi * t / 7.3 + 1) + 0.3 * np.sin(2 * np.pi * t / 50)
    context, horizon = 48, 24
    starts = np.arange(len(series) - context - horizon)
    x = np.stack([series[s:s + context] for s in starts])
    y = np.stack([series[s + context:s + context + horizon] for s in starts])
    shift, scale = x.mean(1, keepdims=True), x.std(1, keepdims=True)
    x, y = (torch.tensor((v - shift) / scale, dtype=torch.float32) for v in (x, y))
    train, test = slice(0, 2000), slice(2100, None)
    model = koopa((context,), horizon, seg_len=8, dynamic_dim=16, hidden_dim=32, num_blocks=2, channels=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        batch = torch.randint(0, 2000, (64,), generator=generator)
        loss = (model(x[train][batch])[..., 0] - y[train][batch]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        mse = (model(x[test])[..., 0] - y[test]).square().mean().item()
    context_mean = y[test].square().mean().item()  # the normalised context's mean is 0
    last_value = (x[test][:, -1:] - y[test]).square().mean().item()
    assert mse < 0.1 * min(context_mean, last_value), (mse, context_mean, last_value)


def _small(seed: int, channels: int = 2):
    torch.manual_seed(seed)
    return koopa((60,), 20, seg_len=12, dynamic_dim=8, hidden_dim=16, num_blocks=2, channels=channels)


def test_functional_call_and_vmap_over_parameter_sets_match_separate_calls():
    models = [_small(0), _small(1)]
    x = torch.randn(7, 60)
    params = dict(models[0].named_parameters())
    torch.testing.assert_close(functional_call(models[0], params, (x,)), models[0](x))
    stacked, buffers = stack_module_state(models)
    batched = vmap(lambda p, b: functional_call(models[0], (p, b), (x,)))(stacked, buffers)
    torch.testing.assert_close(batched, torch.stack([model(x) for model in models]), rtol=1e-5, atol=1e-5)


def test_forward_mode_derivative_matches_finite_differences():
    model = _small(2).double()
    x = torch.randn(3, 60, dtype=torch.float64)
    params = {name: value.detach() for name, value in model.named_parameters()}
    tangent = {name: torch.randn_like(value) for name, value in params.items()}

    def f(p):
        return functional_call(model, p, (x,))

    _, derivative = jvp(f, (params,), (tangent,))
    eps = 1e-6
    plus = f({k: v + eps * tangent[k] for k, v in params.items()})
    minus = f({k: v - eps * tangent[k] for k, v in params.items()})
    torch.testing.assert_close(derivative, (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-6)


def test_builds_on_the_meta_device_with_the_real_parameter_count():
    options = {"seg_len": 48, "dynamic_dim": 64, "hidden_dim": 512, "hidden_layers": 1, "num_blocks": 4}
    count = check_buildable({"name": "koopa", **options}, (96,), 48)
    assert count == sum(p.numel() for p in koopa((96,), 48, **options).parameters())


@pytest.mark.parametrize(("name", "horizon"), list(KOOPA_TASKS.items()))
def test_koopa_tasks_follow_the_protocol(name, horizon):
    task = load_task(name)
    assert task.data["prediction_length"] == horizon and task.data["context_length"] == 2 * horizon
    assert task.model["name"] == "koopa" and task.likelihood == "gaussian"
    assert {"mse_std", "mae_std", "crps", "nll", "mse", "mae", "mase"} <= set(task.eval["metrics"])
    assert task.train["lr"] == 1e-3
    ci = task.budgets["ci"]
    assert (ci.max_epochs, ci.max_steps, ci.n_eval_samples) == (1, 20, 4)
    assert resources_for(task, "ci") == Resources(cpus=1, gpus=0)
    options = {key: value for key, value in task.model.items()}
    assert check_buildable(options, (task.data["context_length"],), horizon) > 0


def test_set_changes_the_horizon_and_the_run_id(cli, tmp_path, results_dir):
    """The route the task files' comments give for the other horizons: `--set data.KEY`, checked as [data] is."""
    write_ltsf_csv(tmp_path, "ETTh2")
    args = ["run", "--task", "etth2-koopa", "--method", "map", "--budget", "ci", "--data-dir", str(tmp_path),
            "--results-dir", str(results_dir), "--quiet", "--device", "cpu"]
    horizon = ["--set", "data.prediction_length=96", "--set", "data.context_length=192", "--set", "model.seg_len=96"]
    for extra in ([], horizon):
        assert cli(*args, *extra).code == 0
    records = [json.loads(path.read_text()) for path in results_dir.glob("etth2-koopa/map/*/run.json")]
    assert sorted(record["identity_config"]["task"]["data"]["prediction_length"] for record in records) == [48, 96]
    assert len({record["run_id"] for record in records}) == 2
    bad = cli(*args, "--set", "data.prediction_length=zero")
    assert bad.code == 2 and bad.stderr.strip() == ("error: --set: key 'data.prediction_length' must be an integer, "
                                                    "got 'zero'")
    bad = cli(*args, "--set", "data.source=digits")
    assert bad.code == 2 and "another data source is another task" in bad.stderr


def test_etth2_koopa_ci_run_on_a_fake_csv(cli, tmp_path, results_dir):
    """The task end to end on an ETTh2.csv in the release's layout: metrics in series units, and the z-scored ones
    equal to them divided by numpy's (ddof 0) standard deviation of the training part."""
    target = write_ltsf_csv(tmp_path, "ETTh2")
    result = cli("run", "--task", "etth2-koopa", "--method", "map", "--budget", "ci", "--data-dir", str(tmp_path),
                 "--results-dir", str(results_dir), "--quiet", "--device", "cpu")
    assert result.code == 0, result.stderr
    [metrics_csv] = results_dir.glob("etth2-koopa/map/*/metrics.csv")
    table = pd.read_csv(metrics_csv)
    test = table[(table["split"] == "test")].set_index("metric")["value"]
    assert set(test.index) == {"crps", "nll", "mase", "smape", "mae", "mse", "mse_std", "mae_std", "wql",
                               "coverage_50", "coverage_90"}
    assert np.isfinite(test).all() and 0 < test["crps"] < 10
    held_out = 48 + 59 * 48  # test and validation spans: 60 windows of 48, 48 apart, each
    std = target[:len(target) - 2 * held_out].std()
    assert math.isclose(test["mse_std"], test["mse"] / std**2, rel_tol=1e-5)
    assert math.isclose(test["mae_std"], test["mae"] / std, rel_tol=1e-5)
