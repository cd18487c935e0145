"""The convergence benchmark's targets (bnnbench.targets) have the answers they claim: each density, score and set
of moments is checked against a computation that does not share its code — torch's and scipy's Gaussians, an
independent change of variables, 1-D quadrature, independent exact draws, a hand-written logistic likelihood, and
importance sampling from a Laplace approximation for the NUTS reference."""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from scipy.special import expit, log_expit

from bnnbench.errors import UsageError
from bnnbench.package_files import builtin_tasks_dir
from bnnbench.targets import TARGETS, Target, _sinh_arcsinh_parameters, get_target

GAUSSIANS = [f"gauss-d{dim}-k{condition}" for dim in (10, 100, 1000) for condition in (10, 1000)]
ALL_NAMES = [*GAUSSIANS, "sinh-arcsinh-d10", "logreg-breast-cancer"]
REFERENCE = builtin_tasks_dir() / "references" / "logreg-breast-cancer.json"
# A z-score past this fails: over the ~100 quantities a test compares at once, a false alarm has probability
# about 100 * 6.8e-6 < 0.1%, and each check's seed is fixed, so it either passes or fails for good.
Z_LIMIT = 4.5


@functools.cache
def target(name: str) -> Target:
    return get_target(name)


def _points(t: Target, n: int, seed: int) -> torch.Tensor:
    """n points around the target's mean, about one unit off in each coordinate."""
    generator = torch.Generator().manual_seed(seed)
    return t.mean + torch.randn(n, t.dim, generator=generator, dtype=torch.float64)


def _finite_difference_score(t: Target, theta: torch.Tensor, step: float = 1e-5) -> torch.Tensor:
    """Central differences of log_density, one coordinate at a time."""
    columns = []
    for coordinate in range(t.dim):
        shift = torch.zeros(t.dim, dtype=torch.float64)
        shift[coordinate] = step
        columns.append((t.log_density(theta + shift) - t.log_density(theta - shift)) / (2 * step))
    return torch.stack(columns, dim=-1)


def _autograd_score(t: Target, theta: torch.Tensor) -> torch.Tensor:
    return dataclasses.replace(t, closed_form_score=None).score(theta)  # the autograd fallback


# ---- the registry ----


def test_every_registered_target_builds_in_the_fixed_order():
    assert list(TARGETS) == ALL_NAMES
    for name in ALL_NAMES:
        t = target(name)
        assert t.name == name and t.description and "\n" not in t.description and t.moments
        assert t.mean.shape == (t.dim,) and t.covariance.shape == (t.dim, t.dim)
        assert t.mean.dtype == t.covariance.dtype == torch.float64
        assert torch.equal(t.covariance, t.covariance.T)
        theta = _points(t, 3, seed=0)
        values, scores = t.log_density(theta), t.score(theta)
        assert values.shape == (3,) and values.dtype == torch.float64 and torch.isfinite(values).all()
        assert scores.shape == (3, t.dim) and scores.dtype == torch.float64 and torch.isfinite(scores).all()
    assert [target(name).dim for name in ALL_NAMES] == [10, 10, 100, 100, 1000, 1000, 10, 31]
    assert [target(name).log_normaliser for name in ALL_NAMES] == [0.0] * 7 + [None]


def test_an_unknown_target_is_a_one_line_usage_error_naming_the_choices():
    with pytest.raises(UsageError) as raised:
        get_target("gauss-d10-k100")
    message = str(raised.value)
    assert "\n" not in message and "'gauss-d10-k100'" in message
    assert all(name in message for name in ALL_NAMES), message


def test_construction_is_deterministic():
    again = TARGETS["gauss-d100-k1000"]()
    assert torch.equal(again.mean, target("gauss-d100-k1000").mean)
    assert torch.equal(again.covariance, target("gauss-d100-k1000").covariance)
    assert not torch.allclose(target("gauss-d100-k10").mean, target("gauss-d100-k1000").mean)  # a seed per name


# ---- dense Gaussians ----


@pytest.mark.parametrize("name", GAUSSIANS)
def test_gaussian_spectrum_has_condition_number_k(name):
    t = target(name)
    condition = float(name.split("-k")[1])
    eigenvalues = torch.linalg.eigvalsh(t.covariance)
    assert float(eigenvalues[-1] / eigenvalues[0]) == pytest.approx(condition, rel=1e-8)
    # log-spaced over [K^-1/2, K^1/2], as the description says
    expected = condition ** (torch.linspace(0, 1, t.dim, dtype=torch.float64) - 0.5)
    torch.testing.assert_close(eigenvalues, expected, rtol=1e-9, atol=0)
    assert t.moments == "exact" and t.log_normaliser == 0.0


@pytest.mark.parametrize("name", GAUSSIANS)
def test_gaussian_density_is_torchs_multivariate_normal(name):
    t = target(name)
    theta = _points(t, 8, seed=1)
    expected = torch.distributions.MultivariateNormal(t.mean, covariance_matrix=t.covariance).log_prob(theta)
    torch.testing.assert_close(t.log_density(theta), expected, rtol=1e-10, atol=1e-8)


def test_small_gaussian_density_is_scipys_multivariate_normal():
    t = target("gauss-d10-k1000")
    theta = _points(t, 8, seed=2)
    expected = stats.multivariate_normal(t.mean.numpy(), t.covariance.numpy()).logpdf(theta.numpy())
    np.testing.assert_allclose(t.log_density(theta).numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize("name", GAUSSIANS)
def test_gaussian_score_is_autograd_and_minus_precision_times_offset(name):
    t = target(name)
    theta = _points(t, 4, seed=3)
    score = t.score(theta)
    torch.testing.assert_close(score, _autograd_score(t, theta), rtol=1e-9, atol=1e-9)
    expected = -(theta - t.mean) @ torch.linalg.inv(t.covariance).T
    torch.testing.assert_close(score, expected, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", ["gauss-d10-k10", "gauss-d100-k1000", "gauss-d1000-k1000"])
def test_gaussian_kl_is_torchs_kl_divergence(name):
    t = target(name)
    generator = torch.Generator().manual_seed(4)
    mean = t.mean + 0.5 * torch.randn(t.dim, generator=generator, dtype=torch.float64)
    factor = torch.randn(t.dim, t.dim, generator=generator, dtype=torch.float64) / math.sqrt(t.dim)
    covariance = factor @ factor.T + 0.5 * torch.eye(t.dim, dtype=torch.float64)
    expected = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(mean, covariance_matrix=covariance),
        torch.distributions.MultivariateNormal(t.mean, covariance_matrix=t.covariance))
    assert t.kl_from(mean, covariance) == pytest.approx(float(expected), rel=1e-9)
    assert expected > 1.0  # a q that is not p: the comparison is not of two zeros
    assert abs(t.kl_from(t.mean, t.covariance)) < 1e-9 * t.dim
    assert t.kl_from(mean, torch.zeros(t.dim, t.dim, dtype=torch.float64)) == math.inf


def test_kl_is_none_for_a_target_that_is_not_gaussian():
    t = target("sinh-arcsinh-d10")
    assert t.kl_from(t.mean, t.covariance) is None
    assert target("logreg-breast-cancer").kl_from(torch.zeros(31), torch.eye(31)) is None


# ---- sinh-arcsinh ----


def _sinh_arcsinh_draws(n: int, seed: int) -> np.ndarray:
    """Exact draws, by numpy and a seed the target does not use: X = sinh((asinh(Z) + s)/τ), Z ~ N(0, Σ)."""
    sigma, skew, tail = _sinh_arcsinh_parameters()
    z = np.random.default_rng(seed).multivariate_normal(np.zeros(len(sigma)), sigma.numpy(), size=n)
    return np.sinh((np.arcsinh(z) + skew) / tail)


def test_sinh_arcsinh_density_is_an_independent_change_of_variables():
    t = target("sinh-arcsinh-d10")
    sigma, skew, tail = _sinh_arcsinh_parameters()
    x = _sinh_arcsinh_draws(16, seed=5)
    x[0] = np.linspace(-30, 30, t.dim)  # deep in the tails too
    z = np.sinh(tail * np.arcsinh(x) - skew)  # the inverse map, and its derivative below
    jacobian = np.log(tail * np.cosh(tail * np.arcsinh(x) - skew) / np.sqrt(1 + x**2)).sum(axis=1)
    expected = stats.multivariate_normal(np.zeros(t.dim), sigma.numpy()).logpdf(z) + jacobian
    np.testing.assert_allclose(t.log_density(torch.from_numpy(x)).numpy(), expected, rtol=1e-11)


def test_sinh_arcsinh_density_is_normalised():
    # E_p[q(X)/p(X)] = ∫ q = 1 for any density q, when p is the normalised density exact draws X come from; q is a
    # Gaussian near p whose tails are lighter than p's, so the ratio has a finite variance
    t = target("sinh-arcsinh-d10")
    x = _sinh_arcsinh_draws(100_000, seed=6)
    log_q = stats.multivariate_normal(t.mean.numpy(), t.covariance.numpy()).logpdf(x)
    ratio = np.exp(log_q - t.log_density(torch.from_numpy(x)).numpy())
    error = ratio.std() / math.sqrt(len(ratio))
    assert error < 0.01  # power: a density off by a constant factor of 1.05 fails
    assert abs(ratio.mean() - 1.0) < Z_LIMIT * error, (ratio.mean(), error)


def test_sinh_arcsinh_score_is_autograd_and_finite_differences():
    t = target("sinh-arcsinh-d10")
    x = torch.from_numpy(_sinh_arcsinh_draws(6, seed=7))
    score = t.score(x)
    torch.testing.assert_close(score, _autograd_score(t, x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(score, _finite_difference_score(t, x), rtol=1e-6, atol=1e-6)


def _marginal_moment(scale: float, power: int, centre: float = 0.0) -> float:
    """E[(X_d - centre)^power] for X_d = sinh((asinh(Z_d) + s)/τ), Z_d ~ N(0, scale²): a 1-D Gaussian integral
    (over ±40 standard deviations, past which the normal density is below 1e-300)."""
    _, skew, tail = _sinh_arcsinh_parameters()

    def integrand(u: float) -> float:
        return (math.sinh((math.asinh(scale * u) + skew) / tail) - centre) ** power * stats.norm.pdf(u)

    value, _ = integrate.quad(integrand, -40, 40, epsabs=1e-13, epsrel=1e-12, limit=200)
    return value


def test_sinh_arcsinh_reference_moments_agree_with_quadrature_and_independent_draws():
    t = target("sinh-arcsinh-d10")
    draws = 2_000_000  # the reference's, as its `moments` says
    assert f"{draws:,}" in t.moments
    scales = torch.sqrt(torch.diagonal(_sinh_arcsinh_parameters()[0])).tolist()
    # each coordinate's mean and variance are 1-D integrals: exact up to quadrature error
    means = np.array([_marginal_moment(scale, 1) for scale in scales])
    variances = np.array([_marginal_moment(scale, 2, mean) for mean, scale in zip(means, scales, strict=True)])
    fourth = np.array([_marginal_moment(scale, 4, mean) for mean, scale in zip(means, scales, strict=True)])
    mean_error = np.sqrt(variances / draws)
    assert np.abs((t.mean.numpy() - means) / mean_error).max() < Z_LIMIT
    stated = float(t.moments.split("at most ")[1].split()[0])
    assert stated == pytest.approx(mean_error.max(), rel=0.05)
    variance_error = np.sqrt((fourth - variances**2) / draws)
    assert np.abs((torch.diagonal(t.covariance).numpy() - variances) / variance_error).max() < Z_LIMIT
    assert np.abs(means).min() > 50 * mean_error.max()  # skewed: a mean of 0 would fail
    # the whole covariance, against an independent smaller exact sample
    x = _sinh_arcsinh_draws(200_000, seed=8)
    centred = x - x.mean(axis=0)
    products = centred[:, :, None] * centred[:, None, :]
    sample_error = products.std(axis=0) / math.sqrt(len(x))
    combined = sample_error * math.sqrt(1 + len(x) / draws)  # the reference's own error, same per-draw spread
    assert np.abs((t.covariance.numpy() - products.mean(axis=0)) / combined).max() < Z_LIMIT
    assert np.abs((t.mean.numpy() - x.mean(axis=0)) / (x.std(axis=0) / math.sqrt(len(x)))).max() < Z_LIMIT


# ---- Bayesian logistic regression ----


@functools.cache
def _breast_cancer_by_hand() -> tuple[np.ndarray, np.ndarray]:
    """(A, prior_std): rows ±[standardised features, 1], the sign being the label's, as the target documents."""
    from sklearn.datasets import load_breast_cancer

    features, labels = load_breast_cancer(return_X_y=True)
    assert features.shape == (569, 30)
    standardised = (features - features.mean(axis=0)) / features.std(axis=0)
    design = np.hstack([standardised, np.ones((569, 1))])
    return design * np.where(labels == 1, 1.0, -1.0)[:, None], 1.0


def _logreg_log_density(theta: np.ndarray) -> np.ndarray:
    signed, prior_std = _breast_cancer_by_hand()
    return log_expit(theta @ signed.T).sum(axis=-1) + stats.norm(0, prior_std).logpdf(theta).sum(axis=-1)


def test_logreg_density_is_a_hand_computed_logistic_likelihood_and_prior():
    t = target("logreg-breast-cancer")
    theta = np.random.default_rng(9).normal(scale=0.7, size=(8, 31))
    theta[0] = 0.0
    theta[1] *= 20  # far out, where log σ must not round to -inf
    np.testing.assert_allclose(t.log_density(torch.from_numpy(theta)).numpy(), _logreg_log_density(theta),
                               rtol=1e-12)
    assert "N(0, 1² I)" in t.description and t.log_normaliser is None


def test_logreg_score_is_autograd_and_finite_differences():
    t = target("logreg-breast-cancer")
    theta = t.mean + 0.3 * torch.from_numpy(np.random.default_rng(10).normal(size=(4, 31)))
    score = t.score(theta)
    torch.testing.assert_close(score, _autograd_score(t, theta), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(score, _finite_difference_score(t, theta), rtol=1e-6, atol=1e-5)


def test_logreg_reference_file_is_a_converged_symmetric_psd_summary():
    document = json.loads(REFERENCE.read_text())
    assert document["target"] == "logreg-breast-cancer" and document["dimension"] == 31
    assert document["prior_std"] == 1.0
    mean, covariance = np.array(document["mean"]), np.array(document["covariance"])
    assert mean.shape == (31,) and covariance.shape == (31, 31)
    np.testing.assert_allclose(covariance, covariance.T, rtol=0, atol=1e-15)
    assert np.linalg.eigvalsh(covariance).min() > 0
    diagnostics, settings = document["diagnostics"], document["settings"]
    assert diagnostics["rhat_max"] < 1.01 and diagnostics["ess_bulk_min"] > 1000
    assert sum(diagnostics["divergences"]) == 0
    assert settings["chains"] >= 4 and {"torch", "pyro-ppl"} <= set(document["versions"])
    t = target("logreg-breast-cancer")
    np.testing.assert_array_equal(t.mean.numpy(), mean)
    np.testing.assert_allclose(t.covariance.numpy(), covariance, rtol=0, atol=1e-15)
    assert f"max split-R̂ {diagnostics['rhat_max']:.4f}" in t.moments


def test_logreg_reference_mean_agrees_with_importance_sampling():
    # Self-normalised importance sampling, independent of NUTS: a Laplace approximation at the MAP (Newton's
    # method) as a multivariate t (df 10) proposal, moved twice to the weighted moments, then 40,000 draws. The
    # MAP itself is 15 standard errors off the posterior mean in some coordinate, so a reference that were a
    # mode, or from unconverged chains, fails.
    signed, prior_std = _breast_cancer_by_hand()
    theta = np.zeros(31)
    for _ in range(25):
        activation = signed @ theta
        gradient = signed.T @ expit(-activation) - theta / prior_std**2
        hessian = (signed * (expit(activation) * expit(-activation))[:, None]).T @ signed + np.eye(31) / prior_std**2
        theta = theta + np.linalg.solve(hessian, gradient)
    assert np.abs(gradient).max() < 1e-8
    location, scale, df = theta, np.linalg.inv(hessian), 10
    rng = np.random.default_rng(11)
    for draws in (10_000, 10_000, 40_000):
        proposal = stats.multivariate_t(location, scale, df=df, seed=rng)
        x = proposal.rvs(draws)
        log_weights = _logreg_log_density(x) - proposal.logpdf(x)
        weights = np.exp(log_weights - log_weights.max())
        weights /= weights.sum()
        mean = weights @ x
        covariance = (weights[:, None] * (x - mean)).T @ (x - mean)
        location, scale = mean, covariance * (df - 2) / df
    assert 1 / (weights**2).sum() > 2000  # effective sample size of the final round
    is_error = np.sqrt((weights[:, None] ** 2 * (x - mean) ** 2).sum(axis=0))  # delta-method standard error
    document = json.loads(REFERENCE.read_text())
    reference_error = np.array(document["diagnostics"]["mcse_mean"])
    t = target("logreg-breast-cancer")
    z = (t.mean.numpy() - mean) / np.sqrt(is_error**2 + reference_error**2)
    assert np.abs(z).max() < 5.0, z
    assert np.abs((theta - mean) / is_error).max() > 10  # the MAP is distinguishable at this precision
    # the covariance only loosely: importance sampling in 31 dimensions pins it to about 10%
    relative = np.linalg.norm(t.covariance.numpy() - covariance) / np.linalg.norm(covariance)
    assert relative < 0.25, relative


def test_a_missing_or_malformed_reference_is_a_one_line_usage_error(tmp_path, monkeypatch):
    import bnnbench.targets as targets

    missing = tmp_path / "logreg-breast-cancer.json"
    monkeypatch.setattr(targets, "_reference_path", lambda: missing)
    for content in (None, "{not json", json.dumps({"format": 1, "target": "logreg-breast-cancer"}),
                    REFERENCE.read_text().replace('"dimension": 31', '"dimension": 30')):
        if content is not None:
            missing.write_text(content)
        with pytest.raises(UsageError) as raised:
            get_target("logreg-breast-cancer")
        message = str(raised.value)
        assert "\n" not in message and str(missing) in message, message
