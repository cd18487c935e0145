"""sampled-laplace against closed forms: on Bayesian linear regression the linearised model is the model, so the
sample-then-optimise samples must have the exact posterior covariance; its jvp/vjp and output-curvature pieces
against explicit Jacobians and matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from test_laplace import _double, _fit_blr, _relative
from torch import nn

from bnnbench.data import load_data
from bnnbench.likelihoods import Categorical, Gaussian
from bnnbench.methods import build_method
from bnnbench.methods.laplace.sampled import Linearisation, MacKaySearch, OutputCurvature
from bnnbench.models import create_model
from bnnbench.tasks import load_task
from bnnbench.types import DataBundle, FitContext

pytestmark = pytest.mark.filterwarnings("error::FutureWarning", "error::UserWarning")  # laplace-torch is quiet


def _fit_blr_with_info(**overrides):
    task = load_task("sanity-blr")
    bundle = load_data(task.data).bundle
    data = DataBundle(_double(bundle.train), _double(bundle.val), bundle.num_outputs, bundle.input_shape)
    torch.manual_seed(0)
    model = create_model(task.model, data.input_shape, data.num_outputs).double()
    predictive, info = build_method("sampled-laplace", task, overrides).fit(
        task, model, data, task.budget, FitContext(torch.device("cpu"), 0, False))
    return predictive, info, data


@pytest.mark.parametrize("solver", [{}, {"solver": "sgd", "sample_epochs": 1000}])
def test_samples_have_the_exact_posterior_covariance_on_linear_regression(solver):
    predictive, exact = _fit_blr("sampled-laplace", **solver)  # the task's settings: 2000 samples, fixed prior
    samples = predictive.samples.numpy()
    assert samples.shape == (2000, 11)
    assert _relative(predictive.lin.theta.numpy(), exact.mean) < 1e-4  # centred on the MAP = exact mean
    covariance = samples.T @ samples / len(samples)
    assert _relative(covariance, exact.covariance) < 0.10
    x = torch.randn(30, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    log_std = predictive.predict(x, n_samples=1)[0, :, 1]
    np.testing.assert_allclose((2 * log_std).exp().numpy(), exact.predictive_variance(x.numpy()), rtol=0.10)
    mixture = predictive.__class__(predictive.lin, predictive.samples, predictive.likelihood, "glm", "mc")
    means = mixture.predict(x, n_samples=1)[..., 0]  # one component per sample: MAP + J z_k
    assert means.shape == (2000, 30)
    np.testing.assert_allclose(means.var(0).numpy() + 0.7**2, exact.predictive_variance(x.numpy()), rtol=0.10)


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double().eval()


def test_jvp_and_vjp_match_the_explicit_jacobian_and_skip_batchnorm():
    model = _network()
    lin = Linearisation(model)
    x = torch.randn(5, 4, dtype=torch.float64)
    jacobian = torch.func.jacrev(lambda flat: lin._call(flat, x))(lin.theta).reshape(15, -1)  # (B·C, P)
    batchnorm = torch.zeros_like(lin.mask, dtype=torch.bool)
    batchnorm[4 * 6 + 6: 4 * 6 + 6 + 12] = True  # BatchNorm1d(6) weight and bias follow Linear(4, 6)
    assert torch.equal(lin.mask == 0, batchnorm)
    jacobian = jacobian * lin.mask  # BN parameters are outside the tangent model
    tangents = torch.randn(3, len(lin.theta), dtype=torch.float64)
    torch.testing.assert_close(lin.jvp(x, tangents).reshape(3, 15), tangents @ jacobian.T)
    cotangents = torch.randn(3, 5, 3, dtype=torch.float64)
    outputs, pull = lin.pullback(x)
    torch.testing.assert_close(outputs, model(x))
    torch.testing.assert_close(pull(cotangents), cotangents.reshape(3, 15) @ jacobian)


@pytest.mark.parametrize("alpha", [0.1, 10.0])
def test_conjugate_gradients_reach_the_exact_samples_of_a_classifier(alpha):
    """The cg solver's samples are (M + αI)⁻¹ α z0 with the explicit GGN M = Σ_i J_iᵀ H_i J_i (softmax H_i, BatchNorm
    parameters outside the tangent space), to its tolerance; the spec's check that the optimiser reaches the exact
    solve. On digits-fidelity the default SGD budget (10 epochs) reached 30% of the exact output variance."""
    from bnnbench.methods.laplace.sampled import Hparams, _solve_samples_cg
    from bnnbench.types import Split

    model = _network()
    lin = Linearisation(model)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, dtype=torch.float64, generator=generator)
    train = Split(x, torch.zeros(40, dtype=torch.long))
    jacobian = torch.func.jacrev(lambda flat: lin._call(flat, x))(lin.theta) * lin.mask  # (B, C, P)
    probs = model(x).softmax(-1)
    curvature = torch.diag_embed(probs) - probs.unsqueeze(-1) * probs.unsqueeze(-2)
    ggn = torch.einsum("bcp,bcd,bdq->pq", jacobian, curvature, jacobian)
    anchors = torch.randn(3, len(lin.theta), dtype=torch.float64, generator=generator) * lin.mask
    kept = lin.mask.bool()
    system = ggn[kept][:, kept] + alpha * torch.eye(int(kept.sum()), dtype=torch.float64)
    exact = torch.zeros_like(anchors)
    exact[:, kept] = torch.linalg.solve(system, alpha * anchors[:, kept].T).T
    hparams = Hparams(sample_tol=1e-10, sample_max_iter=500)
    samples, residual, _ = _solve_samples_cg(lin, Categorical(), train, torch.zeros_like(anchors), anchors, alpha,
                                          hparams, ggn.diagonal())
    assert residual <= 1e-10
    torch.testing.assert_close(samples, exact, rtol=1e-7, atol=1e-9)
    coarse, coarse_residual, _ = _solve_samples_cg(lin, Categorical(), train, torch.zeros_like(anchors), anchors, alpha,
                                                Hparams(sample_tol=1e-2), ggn.diagonal())
    assert coarse_residual <= 1e-2 and (coarse - exact).norm() / exact.norm() > 1e-9  # it stopped at the tolerance


@pytest.mark.parametrize("likelihood", [Categorical(), Gaussian(noise_std=0.5)])
def test_output_curvature_and_its_square_root(likelihood):
    outputs = torch.randn(2, 4 if isinstance(likelihood, Categorical) else 1, dtype=torch.float64)
    curvature = OutputCurvature(likelihood, outputs)
    size = outputs.shape[-1]
    identity = torch.eye(size, dtype=torch.float64).unsqueeze(1).expand(size, 2, size)  # (C, B, C) basis vectors
    hessian = curvature.product(identity).permute(1, 0, 2)  # (B, C, C)
    root = curvature.sqrt_product(identity).permute(1, 2, 0)  # (B, C, C): column j is L e_j
    if isinstance(likelihood, Categorical):
        probs = outputs.softmax(-1)
        expected = torch.diag_embed(probs) - probs.unsqueeze(-1) * probs.unsqueeze(-2)
        # the exact Hessian of the cross-entropy in the logits
        logits_hessian = torch.func.hessian(lambda z: -torch.log_softmax(z, -1)[0, 0])(outputs[:1]).reshape(size, size)
        torch.testing.assert_close(logits_hessian, expected[0])
    else:
        expected = torch.full((2, 1, 1), 1 / 0.25, dtype=torch.float64)
    torch.testing.assert_close(hessian, expected)
    torch.testing.assert_close(root @ root.transpose(-1, -2), expected)


def test_em_reaches_the_evidence_maximising_prior_precision_on_linear_regression():
    """MacKay's update from samples (weight-space γ) has the exact evidence maximiser as its fixed point."""
    predictive, info, data = _fit_blr_with_info(em_steps=20, posterior_samples=500)
    design = np.concatenate([data.train.x.numpy(), np.ones((len(data.train), 1))], axis=1)
    targets = data.train.y.numpy()

    def negative_log_evidence(log_alpha: float) -> float:  # −log N(y; 0, ΦΦᵀ/α + σ²I), up to a constant
        covariance = design @ design.T / np.exp(log_alpha) + 0.7**2 * np.eye(len(targets))
        return 0.5 * (targets @ np.linalg.solve(covariance, targets) + np.linalg.slogdet(covariance)[1])

    best = np.exp(minimize_scalar(negative_log_evidence, bounds=(-5, 5), method="bounded",
                                  options={"xatol": 1e-6}).x)
    history = info.extra["prior_precision_history"]
    assert history[0] == 1.0 and abs(history[1] / best - 1) > 0.05  # EM moved, from afar
    assert abs(history[-1] / best - 1) < 0.01, (history, best)
    assert info.extra["em_converged"]


def _search(mackay, alpha=1.0, tol=0.01, steps=20):
    """Run MacKaySearch on the map α ↦ mackay(α) as the EM loop does; the α's tried and the search."""
    search, tried = MacKaySearch(tol), [alpha]
    for _ in range(steps):
        following = search.propose(alpha, mackay(alpha))
        if following is None:
            break
        alpha = following
        tried.append(alpha)
    return tried, search


@pytest.mark.parametrize("slope", [-4.5, -20.0])
def test_mackay_search_converges_where_the_fixed_point_iteration_overshoots(slope):
    """log MacKay(α) falling with slope −4.5 in log α (measured on digits-overconfident): the plain update and any
    damped step above 0.36 diverge or cycle; bracketing then false position converges to the fixed point."""
    fixed = 0.4
    tried, search = _search(lambda alpha: fixed * (alpha / fixed) ** slope)
    assert search.converged and abs(tried[-1] / fixed - 1) < 0.01, tried
    low, high = search.bracket()
    assert low <= fixed <= high
    assert len(tried) < 20


def test_mackay_search_takes_plain_steps_while_they_approach_from_one_side():
    fixed = 10.0

    def contracting(alpha):
        return fixed * (alpha / fixed) ** 0.5

    tried, search = _search(contracting)
    expected = [1.0]
    while abs(contracting(expected[-1]) / expected[-1] - 1) >= 0.01:
        expected.append(contracting(expected[-1]))
    assert search.converged and search.bracket() is None
    assert tried == pytest.approx(expected)


def test_mackay_search_locates_a_jump_in_the_update_and_says_where():
    """A discontinuous update has no fixed point; the search narrows the bracket around the jump to em_tol."""
    tried, search = _search(lambda alpha: 0.2 if alpha > 0.5 else 30.0)
    low, high = search.bracket()
    assert search.converged and low <= 0.5 <= high and high / low - 1 < 0.01


def _small_digits_em(**overrides):
    """sampled-laplace's EM on a 64-16-10 MLP trained on 400 digits (weight-space MacKay update)."""
    from bnnbench.types import Budget, Split

    task = load_task("digits-mlp")
    bundle = load_data(task.data).bundle
    data = DataBundle(Split(bundle.train.x[:400], bundle.train.y[:400]), bundle.val, bundle.num_outputs,
                      bundle.input_shape)
    torch.manual_seed(0)
    model = create_model({"name": "mlp", "hidden": [16]}, data.input_shape, data.num_outputs)
    _, info = build_method("sampled-laplace", task, {"posterior_samples": 4, **overrides}).fit(
        task, model, data, Budget(max_epochs=30), FitContext(torch.device("cpu"), 0, False))
    return info.extra


@pytest.mark.slow  # 108 s on one CPU thread
def test_em_runs_to_a_fixed_point_that_more_steps_or_a_longer_linear_fit_do_not_move():
    """The EM stops at MacKay's fixed point, not after an arbitrary count: doubling the EM cap, or the linear
    model's iteration cap with a 10x tighter tolerance, moves the chosen α by less than 2%."""
    base = _small_digits_em()
    assert base["em_converged"] and "warnings" not in base
    history, proposals = base["prior_precision_history"], base["mackay_proposals"]
    assert abs(proposals[-1] / history[len(proposals) - 1] - 1) < 0.01  # α reproduces itself under the update
    longer_em = _small_digits_em(em_steps=40, em_tol=0.005)
    longer_linear = _small_digits_em(linear_max_iter=200, linear_tol=1e-5)
    for other in (longer_em, longer_linear):
        assert other["em_converged"]
        assert abs(other["prior_precision"] / base["prior_precision"] - 1) < 0.02, (base, other)
