"""GSM and BaM closed-form Gaussian updates (bnnbench/methods/vi/batch_updates.py) against the properties their
papers state and against independent computations (scipy minimisation of the defining objectives, scipy matrix
square roots), all in float64.

Observed while writing these tests (the fixed seeds below; dense targets with condition number 100; start N(0, I);
errors are relative Frobenius/Euclidean errors of (μ, Σ)):
- GSM with one sample per iteration is NOT exact after D + 1 iterations. D = 5: (0.89, 0.92) after 5 and
  (0.96, 0.93) after 6 iterations, (1.3e-7, 1.8e-7) after 100, ~1e-15 by 300. D = 10: (1.0, 0.91) after 10 and
  (0.79, 0.90) after 11, (6.1e-3, 5.7e-3) after 100, (2.7e-10, 7.5e-11) after 300, ~1e-15 by 1000. So: geometric
  convergence to the exact target, with no finite termination at D + 1.
- BaM, D = 10: B = 20 with λ_t = BD/(t+1): (3.5e-1, 3.9e-1) after 1 step, (1.9e-7, 1.9e-8) after 5, ~1e-15 by 20.
  B = 2 < D with λ_t = BD/(t+1): (1.5e-5, 2.7e-6) after 100, (2.4e-11, 1.6e-12) after 300; with constant
  λ = BD: (2.6e-8, 1.3e-8) after 100, ~1e-14 by 200.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch

from bnnbench.methods.vi.batch_updates import bam_learning_rate, bam_update, gsm_update

DTYPE = torch.float64


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_spd(dim: int, seed: int, jitter: float = 0.3) -> torch.Tensor:
    a = torch.randn(dim, dim, generator=_generator(seed), dtype=DTYPE)
    return a @ a.T / dim + jitter * torch.eye(dim, dtype=DTYPE)


def _gaussian_target(dim: int, seed: int, condition: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean m and a dense covariance S with eigenvalues log-spaced in [1, condition]."""
    gen = _generator(seed)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=DTYPE))
    eigenvalues = torch.logspace(0.0, math.log10(condition), dim, dtype=DTYPE)
    return torch.randn(dim, generator=gen, dtype=DTYPE), (rotation * eigenvalues) @ rotation.T


def _gaussian_score(z: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return -torch.linalg.solve(s, (z - m).T).T


def _draw(mean: torch.Tensor, cov: torch.Tensor, batch: int, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(batch, mean.shape[0], generator=gen, dtype=DTYPE)
    return mean + noise @ torch.linalg.cholesky(cov).T


def _relative_errors(mean, cov, m, s) -> tuple[float, float]:
    return (torch.linalg.norm(mean - m) / torch.linalg.norm(m)).item(), (
        torch.linalg.norm(cov - s) / torch.linalg.norm(s)
    ).item()


def _kl(mean_p, cov_p, mean_q, cov_q) -> float:
    """KL(N(mean_p, cov_p) ‖ N(mean_q, cov_q)) in numpy, independent of the module."""
    dim = mean_p.shape[0]
    diff = mean_q - mean_p
    solve = np.linalg.solve(cov_q, np.column_stack([cov_p, diff]))
    _, logdet_q = np.linalg.slogdet(cov_q)
    _, logdet_p = np.linalg.slogdet(cov_p)
    return 0.5 * (np.trace(solve[:, :dim]) + diff @ solve[:, dim] - dim + logdet_q - logdet_p)


def _cholesky_from_params(params: np.ndarray, dim: int) -> np.ndarray:
    lower = np.zeros((dim, dim))
    lower[np.tril_indices(dim)] = params
    lower[np.diag_indices(dim)] = np.exp(np.diag(lower))
    return lower


def _params_from_cholesky(lower: np.ndarray) -> np.ndarray:
    params = lower.copy()
    params[np.diag_indices(lower.shape[0])] = np.log(np.diag(lower))
    return params[np.tril_indices(lower.shape[0])]


def _exact_moment_batch(m: torch.Tensor, s: torch.Tensor, batch: int, seed: int) -> torch.Tensor:
    """B points whose sample mean is m and whose sample covariance (divided by B) is s, exactly up to rounding."""
    x = torch.randn(batch, m.shape[0], generator=_generator(seed), dtype=DTYPE)
    x = x - x.mean(dim=0)
    whiten = torch.linalg.cholesky(x.T @ x / batch)
    x = torch.linalg.solve_triangular(whiten, x.T, upper=False).T
    return m + x @ torch.linalg.cholesky(s).T


# --------------------------------------------------------------------------------------------------------------- GSM


def _single_gsm_case(dim: int, seed: int):
    gen = _generator(seed)
    mean = torch.randn(dim, generator=gen, dtype=DTYPE)
    cov = _random_spd(dim, seed + 1)
    z = _draw(mean, cov, 1, gen)
    g = torch.randn(1, dim, generator=gen, dtype=DTYPE)  # any score: the projection is defined for every g
    return mean, cov, z, g


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gsm_single_sample_matches_the_score_at_the_sample(seed):
    mean, cov, z, g = _single_gsm_case(4, seed)
    new_mean, new_cov = gsm_update(mean, cov, z, g)
    new_score = -torch.linalg.solve(new_cov, z[0] - new_mean)
    torch.testing.assert_close(new_score, g[0], rtol=0.0, atol=1e-10)
    assert torch.equal(new_cov, new_cov.T)
    assert torch.linalg.eigvalsh(new_cov).min() > 0


@pytest.mark.parametrize("seed", [0, 1])
def test_gsm_single_sample_is_the_kl_closest_score_matching_gaussian(seed):
    """Minimise KL(q_t ‖ N(z + Σg, Σ)) over Σ numerically (the constraint μ = z + Σg eliminated exactly)."""
    dim = 3
    mean, cov, z, g = _single_gsm_case(dim, seed)
    new_mean, new_cov = gsm_update(mean, cov, z, g)
    mean_t, cov_t, z_np, g_np = mean.numpy(), cov.numpy(), z[0].numpy(), g[0].numpy()

    def objective(params):
        lower = _cholesky_from_params(params, dim)
        sigma = lower @ lower.T
        return _kl(mean_t, cov_t, z_np + sigma @ g_np, sigma)

    start = _params_from_cholesky(np.linalg.cholesky(cov_t))
    result = scipy.optimize.minimize(objective, start, method="BFGS", options={"gtol": 1e-10, "maxiter": 2000})
    lower = _cholesky_from_params(result.x, dim)
    sigma_opt = lower @ lower.T
    np.testing.assert_allclose(new_cov.numpy(), sigma_opt, atol=1e-5)
    np.testing.assert_allclose(new_mean.numpy(), z_np + sigma_opt @ g_np, atol=1e-5)
    assert objective(_params_from_cholesky(np.linalg.cholesky(new_cov.numpy()))) <= result.fun + 1e-10

    # Moves that keep the constraint (Σ + εE, μ = z + (Σ + εE)g, E symmetric) never lower the KL.
    best = _kl(mean_t, cov_t, new_mean.numpy(), new_cov.numpy())
    rng = np.random.default_rng(seed)
    for _ in range(20):
        e = rng.standard_normal((dim, dim))
        e = (e + e.T) / 2
        for eps in (1e-1, 1e-2, 1e-3, -1e-3, -1e-2, -1e-1):
            sigma = new_cov.numpy() + eps * e
            if np.linalg.eigvalsh(sigma).min() <= 0:
                continue
            assert _kl(mean_t, cov_t, z_np + sigma @ g_np, sigma) >= best - 1e-12


def test_gsm_zero_score_moves_the_mean_to_the_sample():
    """g = 0 forces μ = z; the KL-closest such Gaussian keeps q_t's second moment about z:
    Σ = Σ_t + (μ_t − z)(μ_t − z)ᵀ."""
    mean, cov, z, _ = _single_gsm_case(3, 7)
    new_mean, new_cov = gsm_update(mean, cov, z, torch.zeros_like(z))
    torch.testing.assert_close(new_mean, z[0], rtol=0.0, atol=1e-14)
    torch.testing.assert_close(new_cov, cov + torch.outer(mean - z[0], mean - z[0]), rtol=0.0, atol=1e-13)


def test_gsm_batch_averages_the_single_sample_updates():
    dim, batch = 4, 5
    gen = _generator(3)
    mean = torch.randn(dim, generator=gen, dtype=DTYPE)
    cov = _random_spd(dim, 4)
    z = _draw(mean, cov, batch, gen)
    g = torch.randn(batch, dim, generator=gen, dtype=DTYPE)
    singles = [gsm_update(mean, cov, z[b : b + 1], g[b : b + 1]) for b in range(batch)]
    new_mean, new_cov = gsm_update(mean, cov, z, g)
    torch.testing.assert_close(new_mean, torch.stack([s[0] for s in singles]).mean(dim=0), rtol=0.0, atol=1e-13)
    torch.testing.assert_close(new_cov, torch.stack([s[1] for s in singles]).mean(dim=0), rtol=0.0, atol=1e-13)


@pytest.mark.parametrize(("dim", "iterations"), [(5, 400), (10, 1000)])
def test_gsm_reaches_a_gaussian_target_but_not_in_d_plus_one_steps(dim, iterations):
    """One sample per iteration from N(0, I) on N(m, S), cond(S) = 100.

    Observed: no finite termination at D + 1 (errors ~0.8-1 there), then geometric convergence to ~1e-15 (this
    file's docstring has the figures).
    """
    m, s = _gaussian_target(dim, seed=dim)
    mean, cov = torch.zeros(dim, dtype=DTYPE), torch.eye(dim, dtype=DTYPE)
    gen = _generator(100 + dim)
    errors = []
    for _ in range(iterations):
        z = _draw(mean, cov, 1, gen)
        mean, cov = gsm_update(mean, cov, z, _gaussian_score(z, m, s))
        errors.append(max(_relative_errors(mean, cov, m, s)))
    assert errors[dim - 1] > 0.1 and errors[dim] > 0.1  # after D and D + 1 iterations
    assert errors[-1] < 1e-10
    # the target is a fixed point: once there, further samples keep it there
    assert max(errors[-20:]) < 1e-10


# --------------------------------------------------------------------------------------------------------------- BaM


def _bam_case(dim: int, batch: int, seed: int, gaussian_scores: bool = False):
    gen = _generator(seed)
    mean = torch.randn(dim, generator=gen, dtype=DTYPE)
    cov = _random_spd(dim, seed + 1)
    z = _draw(mean, cov, batch, gen)
    if gaussian_scores:
        m, s = _gaussian_target(dim, seed + 2, condition=10.0)
        g = _gaussian_score(z, m, s)
    else:  # a non-Gaussian target: p(z) ∝ exp(−Σ z⁴/4 − Σ z²/2 + aᵀz)
        a = torch.randn(dim, generator=gen, dtype=DTYPE)
        g = -(z**3) - z + a
    return mean, cov, z, g


def _batch_statistics(z: torch.Tensor, g: torch.Tensor):
    """Numpy moments divided by B (the papers' definition), computed independently of the module."""
    z, g = z.numpy(), g.numpy()
    zbar, gbar = z.mean(axis=0), g.mean(axis=0)
    c = np.cov(z.T, bias=True).reshape(z.shape[1], z.shape[1])
    gamma = np.cov(g.T, bias=True).reshape(z.shape[1], z.shape[1])
    return zbar, gbar, c, gamma


@pytest.mark.parametrize(("batch", "lam"), [(2, 0.5), (3, 30.0), (12, 4.0), (12, 1e4)])
def test_bam_covariance_solves_the_quadratic_matrix_equation(batch, lam):
    """Σ U Σ + Σ = V, and Σ equals the paper's 2V [I + (I + 4UV)^{1/2}]⁻¹ computed with scipy's sqrtm."""
    mean, cov, z, g = _bam_case(5, batch, seed=batch)
    new_mean, new_cov = bam_update(mean, cov, z, g, lam)
    zbar, gbar, c, gamma = _batch_statistics(z, g)
    d = mean.numpy() - zbar
    u = lam * gamma + lam / (1 + lam) * np.outer(gbar, gbar)
    v = cov.numpy() + lam * c + lam / (1 + lam) * np.outer(d, d)
    sigma = new_cov.numpy()
    scale = np.linalg.norm(v)
    assert np.linalg.norm(sigma @ u @ sigma + sigma - v) < 1e-11 * scale
    eye = np.eye(5)
    paper = 2 * v @ np.linalg.inv(eye + np.real(scipy.linalg.sqrtm(eye + 4 * u @ v)))
    np.testing.assert_allclose(sigma, paper, rtol=0.0, atol=1e-9 * np.linalg.norm(paper))
    expected_mean = mean.numpy() / (1 + lam) + lam / (1 + lam) * (sigma @ gbar + zbar)
    np.testing.assert_allclose(new_mean.numpy(), expected_mean, rtol=0.0, atol=1e-11)


@pytest.mark.parametrize(("batch", "lam"), [(1, 2.0), (4, 0.7)])
def test_bam_update_minimises_the_proximal_score_objective(batch, lam):
    """q_{t+1} = argmin (1/B) Σ_b ‖∇log q(z_b) − g_b‖²_Σ + (2/λ) KL(q_t ‖ q), minimised numerically (D = 2)."""
    dim = 2
    mean, cov, z, g = _bam_case(dim, batch, seed=20 + batch)
    new_mean, new_cov = bam_update(mean, cov, z, g, lam)
    mean_t, cov_t, z_np, g_np = mean.numpy(), cov.numpy(), z.numpy(), g.numpy()

    def objective(params):
        mu, lower = params[:dim], _cholesky_from_params(params[dim:], dim)
        sigma = lower @ lower.T
        residual = -np.linalg.solve(sigma, (z_np - mu).T).T - g_np  # ∇log q(z_b) − g_b, rows
        divergence = np.einsum("bi,ij,bj->", residual, sigma, residual) / batch
        return divergence + 2.0 / lam * _kl(mean_t, cov_t, mu, sigma)

    start = np.concatenate([mean_t, _params_from_cholesky(np.linalg.cholesky(cov_t))])
    result = scipy.optimize.minimize(objective, start, method="BFGS", options={"gtol": 1e-11, "maxiter": 5000})
    lower = _cholesky_from_params(result.x[dim:], dim)
    np.testing.assert_allclose(new_mean.numpy(), result.x[:dim], atol=1e-5)
    np.testing.assert_allclose(new_cov.numpy(), lower @ lower.T, atol=1e-5)
    closed_form = objective(
        np.concatenate([new_mean.numpy(), _params_from_cholesky(np.linalg.cholesky(new_cov.numpy()))])
    )
    assert closed_form <= result.fun + 1e-10


def test_bam_with_one_sample_and_infinite_learning_rate_is_gsm():
    """B = 1, λ → ∞: U = ggᵀ, V = Σ_t + ddᵀ and μ = Σg + z, the GSM step (BaM paper, GSM as a special case)."""
    mean, cov, z, _ = _single_gsm_case(5, 11)
    g = torch.randn(1, 5, generator=_generator(12), dtype=DTYPE)
    bam_mean, bam_cov = bam_update(mean, cov, z, g, 1e12)
    gsm_mean, gsm_cov = gsm_update(mean, cov, z, g)
    torch.testing.assert_close(bam_mean, gsm_mean, rtol=0.0, atol=1e-9)
    torch.testing.assert_close(bam_cov, gsm_cov, rtol=0.0, atol=1e-9)


def test_bam_small_learning_rate_changes_q_by_order_lambda():
    """λ → 0: (Σ_{t+1} − Σ_t)/λ → C + ddᵀ − Σ_t(Γ + ḡḡᵀ)Σ_t and (μ_{t+1} − μ_t)/λ → Σ_t ḡ + z̄ − μ_t (d = μ_t − z̄),
    the first-order expansion of the update, computed here from numpy moments. The slopes' relative error shrinks
    in proportion to λ (observed ~1.5e3 λ for this batch), so the remainder is O(λ²)."""
    mean, cov, z, g = _bam_case(4, 6, seed=30)
    zbar, gbar, c, gamma = _batch_statistics(z, g)
    cov_t, mean_t = cov.numpy(), mean.numpy()
    d = mean_t - zbar
    cov_slope = c + np.outer(d, d) - cov_t @ (gamma + np.outer(gbar, gbar)) @ cov_t
    mean_slope = cov_t @ gbar + zbar - mean_t
    slope_errors = {}
    for lam in (1e-7, 1e-9):
        new_mean, new_cov = bam_update(mean, cov, z, g, lam)
        slope_errors[lam] = (
            np.linalg.norm((new_cov.numpy() - cov_t) / lam - cov_slope) / np.linalg.norm(cov_slope),
            np.linalg.norm((new_mean.numpy() - mean_t) / lam - mean_slope) / np.linalg.norm(mean_slope),
        )
    assert max(slope_errors[1e-9]) < 1e-5
    for small, large in zip(slope_errors[1e-9], slope_errors[1e-7], strict=True):
        assert 30 < large / small < 300  # ~100 for a 100-fold λ


def test_bam_large_learning_rate_reaches_the_unregularised_fit():
    """λ → ∞ with B > D: Σ solves Σ Γ Σ = C, i.e. Σ = Γ^{-1/2} (Γ^{1/2} C Γ^{1/2})^{1/2} Γ^{-1/2}, and μ = Σḡ + z̄."""
    dim = 4
    mean, cov, z, g = _bam_case(dim, 15, seed=40)
    zbar, gbar, c, gamma = _batch_statistics(z, g)
    gamma_half = np.real(scipy.linalg.sqrtm(gamma))
    gamma_inv_half = np.linalg.inv(gamma_half)
    sigma_inf = gamma_inv_half @ np.real(scipy.linalg.sqrtm(gamma_half @ c @ gamma_half)) @ gamma_inv_half
    np.testing.assert_allclose(sigma_inf @ gamma @ sigma_inf, c, atol=1e-10)  # the independent solution is right
    mean_inf = sigma_inf @ gbar + zbar
    new_mean, new_cov = bam_update(mean, cov, z, g, 1e8)
    np.testing.assert_allclose(new_cov.numpy(), sigma_inf, rtol=0.0, atol=1e-6 * np.linalg.norm(sigma_inf))
    np.testing.assert_allclose(new_mean.numpy(), mean_inf, rtol=0.0, atol=1e-6 * np.linalg.norm(mean_inf))
    far_mean, far_cov = bam_update(mean, cov, z, g, 1.0)  # a moderate λ is far from that limit
    assert np.linalg.norm(far_cov.numpy() - sigma_inf) > 1e-2 * np.linalg.norm(sigma_inf)


@pytest.mark.parametrize("batch", [11, 1000])
def test_bam_one_step_with_infinite_learning_rate_gives_a_gaussian_target(batch):
    """For a Gaussian target the scores are affine in z, so with B ≥ D + 1 the λ → ∞ step is exact from any start.

    Observed error is O(1/λ): ~5e-5 at λ = 1e8 and ~5e-10 at λ = 1e12 for B = 11; ~4e-11 at 1e12 for B = 1000.
    """
    dim = 10
    m, s = _gaussian_target(dim, seed=50)
    mean, cov = torch.zeros(dim, dtype=DTYPE), torch.eye(dim, dtype=DTYPE)
    z = _draw(mean, cov, batch, _generator(51))
    g = _gaussian_score(z, m, s)
    new_mean, new_cov = bam_update(mean, cov, z, g, 1e12)
    assert max(_relative_errors(new_mean, new_cov, m, s)) < 1e-8
    assert max(_relative_errors(*bam_update(mean, cov, z, g, 1e2), m, s)) > 1e-3  # finite λ: not yet


@pytest.mark.parametrize("lam", [1e-3, 0.5, 10.0, 1e6])
def test_bam_fixed_point_at_a_gaussian_target(lam):
    """q_t = N(m, S) and a batch with exactly those moments: the step returns the target for any λ. A generic
    batch (B < D) does too, because the target's score is affine (ḡ = −S⁻¹(z̄ − m), Γ = S⁻¹ C S⁻¹)."""
    dim = 6
    m, s = _gaussian_target(dim, seed=60, condition=30.0)
    z = _exact_moment_batch(m, s, 2 * dim, seed=61)
    torch.testing.assert_close(z.mean(dim=0), m, rtol=0.0, atol=1e-12)
    new_mean, new_cov = bam_update(m, s, z, _gaussian_score(z, m, s), lam)
    torch.testing.assert_close(new_mean, m, rtol=0.0, atol=1e-10)
    torch.testing.assert_close(new_cov, s, rtol=0.0, atol=1e-9)
    z_few = _draw(m, s, 3, _generator(62))
    few_mean, few_cov = bam_update(m, s, z_few, _gaussian_score(z_few, m, s), lam)
    torch.testing.assert_close(few_mean, m, rtol=0.0, atol=1e-9)
    torch.testing.assert_close(few_cov, s, rtol=0.0, atol=1e-8)


@pytest.mark.parametrize(
    ("batch", "schedule", "iterations", "tolerance"),
    [(20, "decaying", 20, 1e-12), (2, "decaying", 300, 1e-9), (2, "constant", 300, 1e-11)],
)
def test_bam_converges_on_a_gaussian_target(batch, schedule, iterations, tolerance):
    """D = 10, cond(S) = 100, start N(0, I); λ_t = BD/(t+1) (decaying) or λ = BD (constant).

    Observed (seeds below): B = 20 decaying ~1e-15 by iteration 20; B = 2 decaying 2.4e-11 and constant ~1e-14 by
    iteration 300 (this file's docstring). Tolerances leave a factor of 100 or more.
    """
    dim = 10
    m, s = _gaussian_target(dim, seed=0)
    mean, cov = torch.zeros(dim, dtype=DTYPE), torch.eye(dim, dtype=DTYPE)
    gen = _generator(100)
    first = None
    for t in range(iterations):
        lam = bam_learning_rate(t, batch, dim) if schedule == "decaying" else float(batch * dim)
        z = _draw(mean, cov, batch, gen)
        mean, cov = bam_update(mean, cov, z, _gaussian_score(z, m, s), lam)
        assert torch.linalg.eigvalsh(cov).min() > 0
        if first is None:
            first = max(_relative_errors(mean, cov, m, s))
    assert first > 0.1  # one step is not enough: the test measures convergence, not a lucky start
    mean_error, cov_error = _relative_errors(mean, cov, m, s)
    assert mean_error < tolerance and cov_error < tolerance


@pytest.mark.parametrize("seed", range(5))
def test_outputs_are_symmetric_positive_definite_for_rank_deficient_batches(seed):
    dim, batch = 8, 3
    mean, cov, z, g = _bam_case(dim, batch, seed=70 + seed)
    g = g * 10.0 ** (seed - 2)  # scores from tiny to large
    for lam in (1e-6, 1e-2, 1.0, 1e2, 1e6, 1e10):
        _, new_cov = bam_update(mean, cov, z, g, lam)
        assert torch.equal(new_cov, new_cov.T)
        assert torch.linalg.eigvalsh(new_cov).min() > 0
        torch.linalg.cholesky(new_cov)
    _, gsm_cov = gsm_update(mean, cov, z, g)
    assert torch.equal(gsm_cov, gsm_cov.T)
    assert torch.linalg.eigvalsh(gsm_cov).min() > 0


def test_updates_keep_the_input_dtype():
    mean, cov, z, g = _bam_case(3, 4, seed=80)
    args = [t.to(torch.float32) for t in (mean, cov, z, g)]
    for new_mean, new_cov in (bam_update(*args, 1.0), gsm_update(*args)):
        assert new_mean.dtype == torch.float32 and new_cov.dtype == torch.float32


def test_bam_learning_rate_is_bd_over_t_plus_one():
    assert bam_learning_rate(0, 5, 10) == 50.0
    assert bam_learning_rate(9, 5, 10) == 5.0
    assert bam_learning_rate(4, 2, 3, scale=0.5) == pytest.approx(0.6)
    for bad in ({"iteration": -1}, {"batch_size": 0}, {"dim": 0}, {"scale": 0.0}, {"scale": math.inf}):
        kwargs = {"iteration": 0, "batch_size": 2, "dim": 2, "scale": 1.0} | bad
        with pytest.raises(ValueError):
            bam_learning_rate(**kwargs)


def test_bad_inputs_are_rejected():
    mean, cov, z, g = _bam_case(3, 4, seed=90)
    for lam in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="learning_rate"):
            bam_update(mean, cov, z, g, lam)
    with pytest.raises(ValueError, match="scores"):
        gsm_update(mean, cov, z, g[:, :2])
    with pytest.raises(ValueError, match="covariance"):
        bam_update(mean, cov[:2, :2], z, g, 1.0)
    with pytest.raises(ValueError, match="samples"):
        gsm_update(mean, cov, z[0], g[0])
