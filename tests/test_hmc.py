"""The HMC reference engine: NUTS recovers a posterior known in closed form (Bayesian linear regression, through
the same task-file path a real reference takes), split-R̂ and ESS behave on synthetic chains, references
round-trip through their files, and `bnnbench reference hmc` refuses bad input in one line, writing nothing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os

import numpy as np
import pytest
import torch
from assertions import assert_usage_error

from bnnbench.errors import UsageError
from bnnbench.hmc import (
    HmcSettings,
    check_task,
    convergence_diagnostics,
    load_task_data,
    predictive_arrays,
    run_chains,
    sample_reference,
)
from bnnbench.reference import linear_gaussian_posterior
from bnnbench.reference_files import load_reference, load_reference_draws, save_reference, task_posterior_key
from bnnbench.tasks import load_task

# Diabetes' first 60 rows, nn.Linear(10, 1): 11 parameters whose posterior is Gaussian and known exactly. A warm
# posterior (T = 20) keeps it well conditioned (diabetes' features are correlated; at T = 1 NUTS's trees are twice
# as deep), so the test is fast, while prior and likelihood both still shape it.
NOISE_STD, PRIOR_STD, TEMPERATURE = 0.7, 1.0, 20.0
BLR_TASK = f"""name = "blr-hmc"
version = 3
description = "diabetes, linear model, fixed noise: the exact posterior is known"
likelihood = {{ name = "gaussian", noise_std = {NOISE_STD} }}

[data]
source = "diabetes"
n_train = 60

[model]
name = "linear"

[budget]
max_epochs = 1

[posterior]
prior_std = {PRIOR_STD}
temperature = {TEMPERATURE}
"""
# Z-scores past this fail: with ~500 checked quantities a false alarm has probability about 500 * 6.8e-6 ≈ 0.3%.
Z_LIMIT = 4.5
SAMPLES = 300  # per chain


@pytest.fixture(scope="module")
def blr_task(tmp_path_factory):
    path = tmp_path_factory.mktemp("tasks") / "blr-hmc.toml"
    path.write_text(BLR_TASK)
    return load_task(path)


@pytest.fixture(scope="module")
def blr_exact(blr_task):
    """The exact posterior: a likelihood divided by the temperature T is the Gaussian of noise std·√T."""
    loaded = load_task_data(blr_task)
    train = loaded.bundle.train
    exact = linear_gaussian_posterior(train.x.double().numpy(), train.y.double().numpy(),
                                      NOISE_STD * math.sqrt(TEMPERATURE), PRIOR_STD)
    return exact, loaded.test.x.double().numpy()


@pytest.fixture(scope="module")
def blr_chains(blr_task):
    settings = HmcSettings(chains=2, samples=SAMPLES, warmup=150, seed=0, init_steps=50)
    return run_chains(blr_task, settings, workers=1, keep_parameters=True)


def _ess(draws: np.ndarray) -> np.ndarray:
    """pyro's multi-chain ESS of each column of (chains, samples, columns)."""
    from pyro.ops.stats import effective_sample_size

    return effective_sample_size(torch.from_numpy(draws), chain_dim=0, sample_dim=1).numpy()


def _z_scores(draws: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """(mean of draws - expected) in units of its Monte Carlo standard error, sd / √ESS, per column."""
    flat = draws.reshape(-1, draws.shape[-1])
    return (flat.mean(axis=0) - expected) / (flat.std(axis=0) / np.sqrt(_ess(draws)))


def test_nuts_recovers_the_exact_linear_gaussian_posterior(blr_chains, blr_exact):
    exact, _ = blr_exact
    draws = np.stack([result.parameters for result in blr_chains])  # (chains, samples, 11): weight, then bias
    assert draws.shape == (2, SAMPLES, 11)
    assert np.abs(_z_scores(draws, exact.mean)).max() < Z_LIMIT
    # covariance entry (j, k) is the mean of (θ_j - m_j)(θ_k - m_k): its error is judged by that product's own ESS
    centred = draws - exact.mean
    upper = np.triu_indices(11)
    products = centred[..., upper[0]] * centred[..., upper[1]]
    assert np.abs(_z_scores(products, exact.covariance[upper])).max() < Z_LIMIT
    for result in blr_chains:
        assert result.divergences == 0 and 0.6 < result.accept_prob < 0.99 and result.step_size > 0
        assert result.gradient_evaluations >= SAMPLES and 1 <= result.mean_tree_depth <= 10


def test_the_reference_predictive_is_the_exact_predictive(blr_chains, blr_exact):
    exact, test_x = blr_exact
    arrays, draws = predictive_arrays("gaussian", blr_chains)
    rows = len(test_x)
    assert arrays["mean"].shape == arrays["var"].shape == (rows, 1)
    assert arrays["chain_mean"].shape == arrays["chain_var"].shape == (2, rows, 1)
    assert draws.shape == (2, SAMPLES, 2 * rows)  # per sample: each test row's mean and variance
    sample_means = draws.reshape(2, SAMPLES, rows, 2)[..., 0]
    exact_mean = np.concatenate([test_x, np.ones((rows, 1))], axis=1) @ exact.mean
    assert np.abs(_z_scores(sample_means, exact_mean)).max() < Z_LIMIT
    assert np.allclose(arrays["mean"][:, 0], sample_means.mean(axis=(0, 1)))
    # the mixture's variance: the noise plus the spread of the means (whose Monte Carlo error the ESS gives)
    spread = (sample_means - exact_mean) ** 2
    assert np.abs(_z_scores(spread, exact.predictive_variance(test_x) - NOISE_STD**2 * TEMPERATURE)).max() < Z_LIMIT
    assert np.allclose(draws.reshape(2, SAMPLES, rows, 2)[..., 1], NOISE_STD**2)  # fixed noise, temperature-free


def test_split_rhat_and_ess_on_synthetic_chains():
    rng = np.random.default_rng(0)
    same = rng.normal(size=(4, 1000, 50))
    mixed = convergence_diagnostics(same)
    assert 1.0 - 0.01 < mixed["rhat_p99"] <= mixed["rhat_max"] < 1.01
    assert 0.75 * 4000 < mixed["ess_bulk_min"] <= mixed["ess_bulk_median"] < 1.25 * 4000  # independent draws
    # AR(1) chains with ρ = 0.9: ESS = N (1 - ρ) / (1 + ρ)
    rho, correlated = 0.9, np.empty_like(same)
    correlated[:, 0] = same[:, 0]
    for step in range(1, 1000):
        correlated[:, step] = rho * correlated[:, step - 1] + math.sqrt(1 - rho**2) * same[:, step]
    slow = convergence_diagnostics(correlated)
    assert 0.6 < slow["ess_bulk_median"] / (4000 * (1 - rho) / (1 + rho)) < 1.5
    assert slow["rhat_max"] < 1.1
    shifted = same + 0.5 * np.arange(4)[:, None, None]  # chains that disagree on the mean
    assert convergence_diagnostics(shifted)["rhat_p99"] > 1.1
    with_constant = np.concatenate([same, np.ones((4, 1000, 2))], axis=2)  # probabilities that round to 1
    counted = convergence_diagnostics(with_constant)
    assert counted["constant_quantities"] == 2 and counted["quantities"] == 52
    assert counted["rhat_max"] == mixed["rhat_max"]


def test_task_posterior_key_is_the_documented_hash(blr_task):
    fixed = {"likelihood": "gaussian", "likelihood_options": {"noise_std": NOISE_STD},
             "data": blr_task.data, "model": {"name": "linear"}, "posterior": blr_task.posterior}
    expected = hashlib.sha256(json.dumps(fixed, sort_keys=True, default=str).encode()).hexdigest()
    assert task_posterior_key(blr_task) == expected
    assert task_posterior_key(dataclasses.replace(blr_task, version=9, eval={"batch_size": 7})) == expected
    colder = dataclasses.replace(blr_task, posterior={"prior_std": PRIOR_STD, "temperature": 0.1})
    assert task_posterior_key(colder) != expected


def test_a_task_without_a_posterior_table_is_refused():
    with pytest.raises(UsageError, match=r"task 'sanity-blr' has no \[posterior\] table"):
        check_task(load_task("sanity-blr"))


REQUIRED_KEYS = {"format", "task", "task_version", "task_key", "likelihood", "posterior", "chains", "samples",
                 "warmup", "seed", "step_size", "accept_rate", "rhat_max", "rhat_p99", "ess_bulk_min",
                 "ess_bulk_median", "wall_seconds", "versions", "test_rows", "created"}


def test_save_and_load_round_trip(blr_task, tmp_path):
    settings = HmcSettings(chains=2, samples=8, warmup=10, seed=3, init_steps=0)
    arrays, meta = sample_reference(blr_task, settings)
    npz_path, json_path = save_reference(tmp_path / "refs", blr_task, arrays, meta)
    assert (npz_path.name, json_path.name) == ("blr-hmc.v3.npz", "blr-hmc.v3.json")
    files = ["blr-hmc.v3.draws.npz", "blr-hmc.v3.json", "blr-hmc.v3.npz"]
    assert sorted(path.name for path in npz_path.parent.iterdir()) == files
    umask = os.umask(0)
    os.umask(umask)
    assert npz_path.stat().st_mode & 0o777 == json_path.stat().st_mode & 0o777 == 0o666 & ~umask
    loaded_arrays, loaded_meta = load_reference(npz_path)
    assert loaded_arrays.keys() == {"mean", "var", "chain_mean", "chain_var", "targets"}
    assert arrays.keys() == loaded_arrays.keys() | {"draw_mean", "draw_var"}  # the draws go beside, not in, it
    draws = load_reference_draws(npz_path)
    for name, value in arrays.items():
        loaded = (draws if name.startswith("draw_") else loaded_arrays)[name]
        assert np.array_equal(loaded, value) and loaded.dtype == value.dtype
    assert draws["draw_mean"].shape == (2, 8, *arrays["mean"].shape) and draws["draw_mean"].dtype == np.float32
    assert loaded_meta["stored_draws"]["thin"] == 1 and loaded_meta["resolution"]["w2"] > 0
    assert loaded_meta.keys() >= REQUIRED_KEYS
    assert loaded_meta["format"] == 1 and loaded_meta["task_key"] == task_posterior_key(blr_task)
    assert loaded_meta["seed"] == 3 and len(loaded_meta["step_size"]) == len(loaded_meta["accept_rate"]) == 2
    assert loaded_meta["test_rows"] == len(arrays["mean"]) == 442 - 60
    assert loaded_meta["versions"].keys() == {"torch", "pyro-ppl", "bnnbench"}
    save_reference(tmp_path / "refs", blr_task, {**arrays, "mean": arrays["mean"] + 1}, {**meta, "seed": 4})
    replaced_arrays, replaced_meta = load_reference(npz_path)  # a new reference replaces the old one, both files
    assert replaced_meta["seed"] == 4 and np.array_equal(replaced_arrays["mean"], arrays["mean"] + 1)
    assert sorted(path.name for path in npz_path.parent.iterdir()) == files
    json_path.unlink()
    with pytest.raises(UsageError, match="cannot read the reference"):  # an npz whose JSON is gone is refused
        load_reference(npz_path)


def test_load_reference_never_unpickles(blr_task, tmp_path):
    np.savez(tmp_path / "evil.npz", probs=np.array([object()], dtype=object))
    (tmp_path / "evil.json").write_text(json.dumps({"format": 1}))
    with pytest.raises(UsageError, match="cannot read the reference"):
        load_reference(tmp_path / "evil.npz")


def test_cli_refuses_a_task_without_posterior(cli, tmp_path):
    out_dir = tmp_path / "refs"
    result = cli("reference", "hmc", "--task", "sanity-blr", "--out-dir", str(out_dir))
    assert_usage_error(result, "sanity-blr", "[posterior]")
    assert not out_dir.exists()


@pytest.mark.parametrize(("option", "value"), [("--chains", "0"), ("--samples", "0"), ("--samples", "-3"),
                                               ("--warmup", "0"), ("--workers", "0"), ("--max-tree-depth", "0"),
                                               ("--max-tree-depth", "16"), ("--seed", "-1"), ("--chains", "300")])
def test_cli_refuses_bad_settings_before_any_work(cli, tmp_path, blr_task, option, value):
    out_dir = tmp_path / "refs"
    result = cli("reference", "hmc", "--task", str(blr_task.path), "--out-dir", str(out_dir), option, value)
    assert_usage_error(result, option, value)
    assert not out_dir.exists()


def test_cli_writes_a_reference_and_summarises_it(cli, tmp_path, blr_task):
    out_dir = tmp_path / "refs"
    result = cli("reference", "hmc", "--task", str(blr_task.path), "--out-dir", str(out_dir), "--chains", "2",
                 "--samples", "6", "--warmup", "6", "--workers", "1", "--init-steps", "0", "--quiet")
    assert result.code == 0, result.stderr
    assert "split-R̂ max / p99" in result.stdout and "blr-hmc.v3.npz" in result.stdout
    arrays, meta = load_reference(out_dir / "blr-hmc.v3.npz")
    assert meta["chains"] == 2 and meta["samples"] == 6 and arrays["chain_mean"].shape[0] == 2


@pytest.mark.slow
def test_worker_processes_give_the_numbers_of_one_process(blr_task):
    """Each chain is seeded by its index and runs on one thread wherever it runs (spawned workers start bare)."""
    settings = HmcSettings(chains=2, samples=10, warmup=20, seed=5, init_steps=10)
    in_process = run_chains(blr_task, settings, workers=1)
    lines = []
    spawned = run_chains(blr_task, settings, workers=2, report=lines.append)
    assert sorted(line.split(" done")[0] for line in lines) == ["chain 0", "chain 1"]
    for here, there in zip(in_process, spawned, strict=True):
        assert here.chain == there.chain and here.step_size == there.step_size
        assert np.array_equal(here.predictive, there.predictive)
