"""The laplace-torch methods against closed forms: on Bayesian linear regression (sanity-blr) the GGN is the
Hessian, so full Laplace is the exact posterior; a subnetwork posterior is the exact conditional."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnnbench.data import load_data
from bnnbench.errors import UsageError
from bnnbench.methods import build_method
from bnnbench.methods.laplace.common import curvature_bytes
from bnnbench.models import create_model, last_layer_name
from bnnbench.reference import linear_gaussian_posterior
from bnnbench.tasks import load_task
from bnnbench.types import Budget, DataBundle, FitContext, Split

pytestmark = pytest.mark.filterwarnings("error::FutureWarning", "error::UserWarning")  # laplace-torch is quiet


def _double(split: Split) -> Split:
    return Split(split.x.double(), split.y.double())


def _fit_blr(method: str, **overrides):
    """Fit `method` on sanity-blr in float64 (full batch, the task's 3000 epochs); returns the predictive,
    and the exact posterior."""
    task = load_task("sanity-blr")
    bundle = load_data(task.data).bundle
    data = DataBundle(_double(bundle.train), _double(bundle.val), bundle.num_outputs, bundle.input_shape)
    torch.manual_seed(0)
    model = create_model(task.model, data.input_shape, data.num_outputs).double()
    predictive, _ = build_method(method, task, overrides).fit(task, model, data, task.budget,
                                                              FitContext(torch.device("cpu"), 0, False))
    exact = linear_gaussian_posterior(data.train.x.numpy(), data.train.y.numpy(), noise_std=0.7, prior_std=1.0)
    return predictive, exact


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("method", ["laplace-all", "laplace-ll"])
def test_full_laplace_is_the_exact_posterior_on_linear_regression(method):
    predictive, exact = _fit_blr(method, hessian="full")
    laplace = predictive.laplace
    assert _relative(laplace.mean.numpy(), exact.mean) < 1e-4
    assert _relative(laplace.posterior_covariance.numpy(), exact.covariance) < 1e-4
    x = torch.randn(30, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mean, log_std = predictive.predict(x, n_samples=1)[0].unbind(-1)
    np.testing.assert_allclose((2 * log_std).exp().numpy(), exact.predictive_variance(x.numpy()), rtol=1e-5)
    design = np.concatenate([x.numpy(), np.ones((30, 1))], axis=1)
    np.testing.assert_allclose(mean.numpy(), design @ exact.mean, rtol=1e-4, atol=1e-6)


def test_subnetwork_with_every_weight_equals_full_laplace():
    subnet, exact = _fit_blr("laplace-subnet", n_params=11, selection="random")
    np.testing.assert_allclose(subnet.laplace.posterior_covariance.numpy(), exact.covariance, rtol=1e-4, atol=1e-9)


def test_subnetwork_posterior_is_the_conditional_not_the_marginal():
    subnet, exact = _fit_blr("laplace-subnet", n_params=4, selection="largest-magnitude")
    chosen = subnet.indices.numpy()
    conditional = np.linalg.inv(exact.precision[np.ix_(chosen, chosen)])
    marginal = exact.covariance[np.ix_(chosen, chosen)]
    covariance = subnet.laplace.posterior_covariance.numpy()
    assert _relative(covariance, conditional) < 1e-4
    assert _relative(covariance, marginal) > 0.05  # the diabetes features are correlated
    weights = np.abs(exact.mean)  # MAP = the exact mean here: the largest |θ| are chosen
    assert set(chosen) == set(np.argsort(-weights)[:4])


def test_last_layer_names_per_model():
    shapes = {"mlp": (64,), "cnn": (1, 8, 8), "vit": (1, 8, 8), "linear": (10,)}
    expected = {"mlp": "5", "cnn": "8", "vit": "head", "linear": ""}
    for name, shape in shapes.items():
        model = create_model({"name": name}, shape, 10)
        assert last_layer_name(model) == expected[name]
    with pytest.raises(UsageError, match="does not name its last layer"):
        last_layer_name(torch.nn.Sequential(torch.nn.Linear(3, 2)))


def test_memory_guard_refuses_a_full_curvature_that_does_not_fit_and_names_one_that_does():
    task = load_task("digits-mlp")
    model = create_model(task.model, (64,), 10)
    count = sum(p.numel() for p in model.parameters())
    assert curvature_bytes(model, "full", list(model.named_parameters())) == 4 * count**2
    assert curvature_bytes(model, "diag", list(model.named_parameters())) == 4 * count
    method = build_method("laplace-all", task, {"hessian": "full", "max_curvature_gb": 1.0})
    with pytest.raises(UsageError, match=r"needs about 2\.5\d* GiB \(curvature 2\.5\d* GiB\).*"
                                         r"use hessian=diag or laplace-subnet"):
        method.fit(task, model, None, Budget(max_epochs=1), FitContext(torch.device("cpu"), 0, False))


def test_a_subnetworks_memory_estimate_is_its_covariance_and_one_batch_of_jacobians():
    """O(|S|² + batch · C · |S|): the (|S|, |S|) precision and a batch's (rows, C, |S|) Jacobians, named in the
    refusal and returned for the run's record; batches are cut to JACOBIAN_BYTES of Jacobian."""
    from bnnbench.methods.laplace.common import JACOBIAN_BYTES, check_memory, jacobian_bytes

    task = load_task("digits-mlp")
    model = create_model(task.model, (64,), 10)
    x = torch.zeros(3, 64)
    assert jacobian_bytes(model, x, 1000, 64) == 64 * 10 * 1000 * 4
    assert jacobian_bytes(model, x, 10**6, 64) == JACOBIAN_BYTES // (10 * 10**6 * 4) * 10 * 10**6 * 4
    estimate = check_memory(model, "full", 1000, 1.0, "laplace-subnet", "a smaller n_params", 64 * 10 * 1000 * 4)
    assert estimate == {"curvature": 4 * 1000**2, "jacobians": 64 * 10 * 1000 * 4}
    with pytest.raises(UsageError, match=r"needs about 0\.00611 GiB \(curvature 0\.00373 GiB \+ jacobians 0\.00238 "
                                         r"GiB\), over max_curvature_gb=0\.001; use a smaller n_params"):
        check_memory(model, "full", 1000, 1e-3, "laplace-subnet", "a smaller n_params", 64 * 10 * 1000 * 4)
    # made before MAP training: a BatchNorm network in train mode takes the one-row probe, and is left as it was
    network = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 10))
    assert jacobian_bytes(network, x, 1000, 64) == 64 * 10 * 1000 * 4
    assert network.training and network[1].num_batches_tracked == 0 and (network[1].running_mean == 0).all()


def test_kron_over_layers_without_kronecker_factors_is_refused_before_training():
    """digits-vit's LayerNorm, class token and position embedding have no Kronecker factors in laplace-torch: the
    fit stops before MAP with the variants that work, where laplace-torch stopped after it with an internal error.
    digits-cnn (Conv2d and Linear only) passes the check."""
    from bnnbench.methods.laplace.common import check_kron_layers

    task = load_task("digits-vit")
    model = create_model(task.model, (1, 8, 8), 10)
    method = build_method("laplace-all", task, {"hessian": "kron"})
    with pytest.raises(UsageError, match=r"laplace-all with hessian=kron: .*weights in .*LayerNorm.*use hessian=diag"):
        method.fit(task, model, None, Budget(max_epochs=1), FitContext(torch.device("cpu"), 0, False))
    check_kron_layers(create_model(load_task("digits-cnn").model, (1, 8, 8), 10), "kron", "laplace-all", "")


def test_monte_carlo_over_weights_takes_the_mc_link_only():
    task = load_task("digits-mlp")
    assert build_method("laplace-all", task).hparams.link_approx == "mc"
    with pytest.raises(UsageError, match="pred_type nn takes link_approx mc"):
        build_method("laplace-all", task, {"link_approx": "probit"})


def _overfitted_digits_fit(method: str, **overrides):
    """`method` on an over-fitted digits MLP (15% of the training split, no weight decay, 300 epochs): a network
    whose MAP is over-confident, so posterior spread lowers the validation NLL and its curve over α has an interior
    minimum."""
    task = load_task("digits-mlp")
    bundle = load_data(task.data).bundle
    n_train = int(0.15 * len(bundle.train))
    data = DataBundle(Split(bundle.train.x[:n_train], bundle.train.y[:n_train]), bundle.val, bundle.num_outputs,
                      bundle.input_shape)
    torch.manual_seed(0)
    model = create_model(task.model, data.input_shape, data.num_outputs)
    predictive, info = build_method(method, task, {"weight_decay": 0.0, **overrides}).fit(
        task, model, data, Budget(max_epochs=300, n_eval_samples=32), FitContext(torch.device("cpu"), 0, False))
    return predictive, info, bundle.val


def test_validation_tuning_chooses_the_argmin_of_the_validation_nll_scored_per_prior_precision():
    """laplace-torch's gridsearch default never resets its running NLL, so it walks to the top of the grid (1e8);
    the chosen α must be the argmin of the validation NLL recomputed here, independently, at every grid point."""
    predictive, info, val = _overfitted_digits_fit("laplace-ll")
    laplace, grid = predictive.laplace, info.extra["prior_precision_grid"]
    chosen = laplace.prior_precision.item()  # the posterior the evaluator will score
    curve = []
    for alpha in grid:
        laplace.prior_precision = alpha
        probs = laplace(val.x, pred_type="glm", link_approx="probit")
        curve.append(torch.nn.functional.nll_loss(probs.log(), val.y).item())
    best = int(np.argmin(curve))
    assert 0 < best < len(grid) - 1, curve  # the curve has an interior minimum...
    assert curve[best] < 0.95 * curve[-1]  # ...well below the MAP-like top of the grid
    assert info.extra["prior_precision"] == pytest.approx(grid[best], rel=1e-6)
    np.testing.assert_allclose(info.extra["val_nll_grid"], curve, rtol=1e-5)
    assert "warnings" not in info.extra
    assert chosen == pytest.approx(grid[best], rel=1e-6)  # the posterior is left at the chosen α


def test_validation_tuning_on_fixed_noise_regression_minimises_the_predictive_nll():
    """For a Gaussian likelihood the criterion is the predictive NLL (laplace-torch's default, the MSE of the GLM
    mean, does not depend on α and returns the first grid point). sanity-blr's training rows, the last 100 held out
    for validation; the validation NLL of N(f_μ, f_var + σ²) is computed here with scipy."""
    from scipy.stats import norm

    task = load_task("sanity-blr")
    bundle = load_data(task.data).bundle
    train = _double(bundle.train)
    data = DataBundle(Split(train.x[:-100], train.y[:-100]), Split(train.x[-100:], train.y[-100:]),
                      bundle.num_outputs, bundle.input_shape)
    torch.manual_seed(0)
    model = create_model(task.model, data.input_shape, data.num_outputs).double()
    predictive, info = build_method("laplace-ll", task, {"tune": "val", "hessian": "full", "grid_size": 25}).fit(
        task, model, data, task.budget, FitContext(torch.device("cpu"), 0, False))
    laplace = predictive.laplace
    chosen = laplace.prior_precision.item()
    curve = []
    for alpha in info.extra["prior_precision_grid"]:
        laplace.prior_precision = alpha
        mean, variance = laplace(data.val.x, pred_type="glm")
        std = np.sqrt(variance.reshape(-1).detach().numpy() + 0.7**2)
        curve.append(-norm.logpdf(data.val.y.numpy().reshape(-1), mean.reshape(-1).detach().numpy(), std).mean())
    assert chosen == pytest.approx(info.extra["prior_precision_grid"][int(np.argmin(curve))])
    assert chosen > 1e-4 and curve[0] - min(curve) > 1e-3  # the curve has signal; the first grid point loses
    np.testing.assert_allclose(info.extra["val_nll_grid"], curve, rtol=1e-6)


def test_a_minimum_on_the_grid_bound_is_a_warning_in_the_fit_record():
    # 2 grid points, 1e-4 and 1e8: on the over-fitted MLP the broad posterior at 1e-4 is far worse, so 1e8 wins
    _, info, _ = _overfitted_digits_fit("laplace-ll", grid_size=2)
    assert info.extra["prior_precision"] == pytest.approx(1e8)
    assert len(info.extra["warnings"]) == 1 and "upper bound" in info.extra["warnings"][0]


def test_glm_samples_of_a_subnetwork_that_leaves_outputs_untouched():
    """A subnetwork over one logit's last-layer weights: the other logits have zero variance, where laplace-torch's
    own sampler (a Cholesky factor) fails; `_glm_samples` draws the same Gaussian, N(f_μ, J Σ Jᵀ), by eigh."""
    from laplace import Laplace
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from bnnbench.likelihoods import Categorical
    from bnnbench.methods.laplace.common import LaplacePredictive

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x, y = torch.randn(64, 4, dtype=torch.float64), torch.randint(0, 3, (64,))
    first_row = torch.arange(4 * 8 + 8, 4 * 8 + 8 + 8)  # the last layer's weights into logit 0
    laplace = Laplace(model, "classification", subset_of_weights="subnetwork", hessian_structure="full",
                      subnetwork_indices=first_row, prior_precision=1.0)
    laplace.fit(DataLoader(TensorDataset(x, y), batch_size=64))
    mean, covariance = laplace._glm_predictive_distribution(x[:5])
    assert torch.all(covariance[:, 1:, 1:] == 0) and torch.all(covariance[:, 0, 0] > 0)
    with pytest.raises(RuntimeError):
        laplace.functional_samples(x[:5], pred_type="glm", n_samples=10)
    predictive = LaplacePredictive(laplace, model, first_row, Categorical(), "glm", "mc")
    torch.manual_seed(1)
    samples = predictive._glm_samples(x[:5], 20000)
    torch.testing.assert_close(samples.mean(0), mean, atol=4 * covariance.diagonal(dim1=1, dim2=2).max().sqrt()
                               / 20000 ** 0.5, rtol=0)
    centred = samples - mean
    empirical = torch.einsum("sbi,sbj->bij", centred, centred) / len(samples)
    torch.testing.assert_close(empirical, covariance, atol=0.05 * covariance.abs().max(), rtol=0)
    assert torch.isfinite(predictive.predict(x[:5], 16)).all()


# ------------------------------------------------------------------ the last layer's predictive, in feature space

def _last_layer_posterior(hessian: str, likelihood: str, n_out: int):
    """laplace-torch's last-layer posterior of a small float64 MLP on random data, fitted with a prior precision
    that leaves the curvature visible; the network, the posterior, and inputs it did not see."""
    from bnnbench.methods.laplace.common import import_laplace, quiet_jit_deprecation

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, n_out)).double()
    x = torch.randn(64, 6, dtype=torch.float64)
    y = torch.randint(0, n_out, (64,)) if likelihood == "classification" else torch.randn(64, n_out).double()
    laplace = import_laplace().Laplace(network, likelihood, subset_of_weights="last_layer",
                                       hessian_structure=hessian, prior_precision=0.5,
                                       sigma_noise=0.7 if likelihood == "regression" else 1.0)
    with quiet_jit_deprecation():  # as in fit_laplace: curvlinops' curvature runs torch.func.jvp
        laplace.fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16))
    return network, laplace, torch.randn(11, 6, dtype=torch.float64)


def _assert_laplace_torchs_glm(predicted: torch.Tensor, laplace, x: torch.Tensor, likelihood: str) -> None:
    """`predicted` (our log predictive) against laplace-torch's GLM on the same posterior: its probit
    probabilities, or its Gaussian N(f, var + σ²) with σ = 0.7."""
    if likelihood == "classification":
        np.testing.assert_allclose(predicted[0].exp(), laplace(x, pred_type="glm", link_approx="probit"), rtol=1e-10)
    else:
        mean, covariance = laplace._glm_predictive_distribution(x)
        np.testing.assert_allclose(predicted[0, :, 0], mean[:, 0], rtol=1e-12)
        np.testing.assert_allclose(predicted[0, :, 1].exp().square(), covariance[:, 0, 0] + 0.49, rtol=1e-10)


@pytest.mark.parametrize("hessian", ["kron", "full", "diag"])
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_the_last_layer_glm_from_features_is_laplace_torchs_glm(hessian, likelihood):
    """The closed form in feature space against laplace-torch's Jacobian GLM (its `_glm_predictive_distribution`)
    on the same posterior: the output covariance of every structure, the probit predictive, the regression
    predictive's variance; per prior precision, as validation tuning changes it."""
    from bnnbench.likelihoods import get_likelihood
    from bnnbench.methods.laplace.last_layer import LastLayerPredictive

    n_out = 4 if likelihood == "classification" else 1
    network, laplace, x = _last_layer_posterior(hessian, likelihood, n_out)
    ours = get_likelihood("categorical" if likelihood == "classification" else "gaussian",
                          {} if likelihood == "classification" else {"noise_std": 0.7})
    predictive = LastLayerPredictive(laplace, network, None, ours, "glm", "probit")
    for prior_precision in (0.5, 30.0):
        laplace.prior_precision = prior_precision
        mean, covariance = laplace._glm_predictive_distribution(x)
        _, features = laplace.model.forward_with_features(x)
        np.testing.assert_allclose(predictive.output_covariance(features), covariance, rtol=1e-10, atol=1e-13)
        _assert_laplace_torchs_glm(predictive.predict(x, 1), laplace, x, likelihood)


@pytest.mark.parametrize("hessian", ["kron", "full", "diag"])
def test_the_last_layer_monte_carlo_over_weights_is_laplace_torchs(hessian):
    """pred_type nn: the features through sampled heads, against laplace-torch's own last-layer nn samples (the
    same draws: both sample the head from the same seed). Its `functional_samples(pred_type="nn")` crashes here."""
    from bnnbench.likelihoods import get_likelihood
    from bnnbench.methods.laplace.last_layer import LastLayerPredictive

    network, laplace, x = _last_layer_posterior(hessian, "classification", 4)
    predictive = LastLayerPredictive(laplace, network, None, get_likelihood("categorical", {}), "nn", "mc")
    torch.manual_seed(3)
    ours = predictive.predict(x, 5).exp()
    torch.manual_seed(3)
    theirs = laplace._nn_predictive_samples(x, n_samples=5)
    assert ours.shape == (5, 11, 4)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)
    assert ours.std(dim=0).min() > 0  # the samples differ: the heads were sampled


# ------------------------------------------------------------------ every predictive of every Laplace method

LAPLACE_METHODS = {"laplace-ll": {}, "laplace-all": {"hessian": "kron"},
                   "laplace-subnet": {"selection": "random", "n_params": 60},
                   "sampled-laplace": {"em_steps": 0, "posterior_samples": 4, "sample_max_iter": 50}}
PREDICTIVES = [("glm", "probit"), ("glm", "mc"), ("nn", "mc")]


@pytest.mark.parametrize("method", LAPLACE_METHODS)
@pytest.mark.parametrize(("pred_type", "link_approx"), PREDICTIVES)
def test_every_predictive_of_every_laplace_method(method, pred_type, link_approx):
    """Each Laplace method with each pred_type x link_approx it accepts, fitted on digits: with a prior precision of
    1e6 the posterior has collapsed onto the MAP, so every predictive must be the MAP network's softmax (the
    evaluator's mixture of its samples); with a prior precision of 1 the sampling predictives' samples differ.
    (nn with probit is refused: `test_monte_carlo_over_weights_takes_the_mc_link_only`.)"""
    task = load_task("digits-mlp")
    bundle = load_data(task.data).bundle
    data = DataBundle(Split(bundle.train.x[:300], bundle.train.y[:300]), bundle.val, bundle.num_outputs,
                      bundle.input_shape)
    x = bundle.val.x[:16]
    for prior_precision in (1e6, 1.0):
        torch.manual_seed(0)
        model = create_model(task.model, data.input_shape, data.num_outputs)
        settings = {**LAPLACE_METHODS[method], "pred_type": pred_type, "link_approx": link_approx,
                    "prior_precision": prior_precision}
        if method != "sampled-laplace":  # its prior is fixed by em_steps = 0
            settings["tune"] = "none"
        predictive, _ = build_method(method, task, settings).fit(
            task, model, data, Budget(max_epochs=3), FitContext(torch.device("cpu"), 0, False))
        torch.manual_seed(1)
        log_probs = predictive.predict(x, 4)
        expected_samples = 1 if link_approx == "probit" else 4
        assert log_probs.shape == (expected_samples, 16, 10) and torch.isfinite(log_probs).all()
        np.testing.assert_allclose(log_probs.exp().sum(-1), 1.0, rtol=1e-5)
        if prior_precision == 1e6:
            with torch.no_grad():
                map_probabilities = torch.softmax(model(x), dim=-1)
            np.testing.assert_allclose(log_probs.exp().mean(0), map_probabilities, atol=2e-3)
        elif expected_samples > 1:
            assert log_probs.exp().std(dim=0).max() > 1e-3


@pytest.mark.parametrize("hessian", ["full", "diag"])
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_the_subnetwork_curvature_and_glm_from_subnet_jacobians_are_laplace_torchs(hessian, likelihood):
    """Jacobians over the selected weights alone, against laplace-torch's (Jacobians over every weight, then
    indexed) on the same subnetwork, 25 weights spread over both layers and the biases: the GGN, and the GLM
    predictive of laplace-torch's own posterior."""
    from bnnbench.likelihoods import get_likelihood
    from bnnbench.methods.laplace.common import import_laplace, quiet_jit_deprecation
    from bnnbench.methods.laplace.subnetwork import SubnetPredictive, subnet_ggn

    n_out = 4 if likelihood == "classification" else 1
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, n_out)).double()
    n_weights = sum(value.numel() for value in network.parameters())
    indices = torch.randperm(n_weights, generator=torch.Generator().manual_seed(1))[:25].sort().values
    x = torch.randn(64, 6, dtype=torch.float64)
    y = torch.randint(0, n_out, (64,)) if likelihood == "classification" else torch.randn(64, n_out).double()
    fitted = {}
    for backend in (None, subnet_ggn()):  # laplace-torch's default (curvlinops) and the subnetwork's own
        fitted[backend] = import_laplace().Laplace(
            network, likelihood, subset_of_weights="subnetwork", hessian_structure=hessian, subnetwork_indices=indices,
            prior_precision=0.5, sigma_noise=0.7 if likelihood == "regression" else 1.0, backend=backend)
        with quiet_jit_deprecation():
            fitted[backend].fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16))
    laplace = fitted[subnet_ggn()]
    np.testing.assert_allclose(laplace.H, fitted[None].H, rtol=1e-10, atol=1e-12)  # the curvature over S
    laplace = fitted[None]
    ours = get_likelihood("categorical" if likelihood == "classification" else "gaussian",
                          {} if likelihood == "classification" else {"noise_std": 0.7})
    predictive = SubnetPredictive(laplace, network, indices, ours, "glm", "probit")
    test_x = torch.randn(11, 6, dtype=torch.float64)
    _assert_laplace_torchs_glm(predictive.predict(test_x, 1), laplace, test_x, likelihood)
    _, covariance = laplace._glm_predictive_distribution(test_x)
    assert (covariance.diagonal(dim1=1, dim2=2) > 1e-6).all()  # the subnetwork reaches every output
    # validation tuning: the Jacobians are taken once for the same inputs at every prior precision
    import bnnbench.methods.laplace.subnetwork as subnetwork

    expected = {}
    for alpha in (0.5, 30.0):
        laplace.prior_precision = alpha
        expected[alpha] = predictive.predict(test_x, 1)
    calls, jacobian = [], subnetwork.subnet_jacobian
    subnetwork.subnet_jacobian = lambda *args: calls.append(1) or jacobian(*args)
    try:
        with predictive.reusing_features():
            for alpha in (0.5, 30.0):
                laplace.prior_precision = alpha
                torch.testing.assert_close(predictive.predict(test_x.clone(), 1), expected[alpha], rtol=0, atol=0)
    finally:
        subnetwork.subnet_jacobian = jacobian
    assert calls == [1]


class _TiedHead(torch.nn.Module):
    """Reads a Linear layer's weight without calling the layer (weight tying), as no hook can see."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(5, 3)

    def forward(self, x):
        return torch.nn.functional.linear(torch.tanh(self.embed(x)), self.embed.weight.T)


@pytest.mark.parametrize("network", ["conv-norm", "tied"])
def test_subnet_jacobians_equal_jacobians_over_every_weight_indexed(network, monkeypatch):
    """The sparse output terms of Linear and Conv2d weights (a padded, strided convolution), made for every such
    weight here, biases', a LayerNorm's and a plain tensor's entries, and a tied weight that the sparse terms cannot
    see: the subnetwork's Jacobians equal torch.func's Jacobian over every weight, indexed at the subnetwork, to
    rounding."""
    from torch.func import functional_call, jacrev

    import bnnbench.methods.laplace.subnetwork as subnetwork
    from bnnbench.methods.laplace.subnetwork import _sparse_offsets, _subnet_parts, subnet_jacobian

    monkeypatch.setattr(subnetwork, "SPARSE_MIN_ENTRIES", 0)
    monkeypatch.setattr(subnetwork, "SPARSE_MAX_SHARE", 1.0)

    torch.manual_seed(0)
    if network == "tied":
        model, x = _TiedHead().double(), torch.randn(7, 5, dtype=torch.float64)
    else:
        model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, stride=2, padding=1), torch.nn.Flatten(1),
                                    torch.nn.LayerNorm(36), torch.nn.Tanh(), torch.nn.Linear(36, 3)).double()
        model.register_parameter("shift", torch.nn.Parameter(torch.randn(3, dtype=torch.float64)))
        model.register_forward_hook(lambda module, inputs, output: output + module.shift)
        x = torch.randn(7, 2, 6, 6, dtype=torch.float64)
    named = dict(model.named_parameters())
    n_weights = sum(value.numel() for value in named.values())
    theta = torch.cat([value.detach().flatten() for value in named.values()])

    def flat_outputs(flat):
        weights = dict(zip(named, flat.split([value.numel() for value in named.values()]), strict=True))
        weights = {name: value.view_as(named[name]) for name, value in weights.items()}
        return functional_call(model, weights, (x,))

    every = jacrev(flat_outputs)(theta)  # (B, C, P): outputs depend on their own image only
    # every other weight (some of every tensor), and a tenth at random (a convolution's input channels in part)
    for indices in (torch.arange(1, n_weights, 2),
                    torch.randperm(n_weights, generator=torch.Generator().manual_seed(1))[:n_weights // 10].sort()[0]):
        parts = _subnet_parts(model, indices)
        if network == "conv-norm" and len(indices) > n_weights // 3:
            assert {name for name, _ in parts} == set(named)
            assert {parts[index][0] for index in _sparse_offsets(model, parts)} == {"0.weight", "4.weight"}
        jacobian, outputs = subnet_jacobian(model, parts, x)
        torch.testing.assert_close(jacobian, every[..., indices], rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            torch.testing.assert_close(outputs, model(x), rtol=0, atol=0)
        assert every[..., indices].abs().amax(dim=(0, 1)).min() > 0  # every selected weight moves some output


@pytest.mark.parametrize("hessian", ["full", "diag"])
def test_subnetwork_mc_samples_are_tangents_of_the_posterior(hessian):
    """pred_type glm + link_approx mc: subnet_jvp pushes unit tangents to the Jacobian's columns exactly, and both
    samplers, f + J_S δ_k by tangents and f + (J_S Σ_S J_Sᵀ)^½ ε from the Jacobians, have the mean f and covariance
    J_S Σ_S J_Sᵀ (40,000 samples: within 4%, the sampling error being under 1%)."""
    from bnnbench.methods.laplace.common import import_laplace, quiet_jit_deprecation
    from bnnbench.methods.laplace.subnetwork import SubnetPredictive, subnet_jacobian, subnet_jvp

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 4)).double()
    indices = torch.randperm(99, generator=torch.Generator().manual_seed(1))[:25].sort().values
    x, y = torch.randn(64, 6, dtype=torch.float64), torch.randint(0, 4, (64,))
    laplace = import_laplace().Laplace(network, "classification", subset_of_weights="subnetwork",
                                       hessian_structure=hessian, subnetwork_indices=indices, prior_precision=0.5)
    with quiet_jit_deprecation():
        laplace.fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16))

    class Samples:  # the likelihood's place: hands back the logits' samples
        def log_predictive(self, outputs):
            return outputs

    predictive = SubnetPredictive(laplace, network, indices, Samples(), "glm", "mc")
    test_x = torch.randn(5, 6, dtype=torch.float64)
    parts = predictive._parts
    jacobian, outputs = subnet_jacobian(network, parts, test_x)
    primal, columns = subnet_jvp(network, parts, test_x, torch.eye(25, dtype=torch.float64))
    torch.testing.assert_close(primal, outputs, rtol=0, atol=0)
    torch.testing.assert_close(columns.permute(1, 2, 0), jacobian, rtol=1e-12, atol=1e-12)
    posterior = laplace.posterior_covariance if hessian == "full" else torch.diag(laplace.posterior_variance)
    covariance = jacobian @ posterior @ jacobian.transpose(1, 2)
    scale = covariance.diagonal(dim1=1, dim2=2).sqrt()
    for samples in (predictive._tangent_samples(test_x, 40_000), predictive.predict(test_x, 40_000)):
        centred = samples - outputs
        torch.testing.assert_close(centred.mean(0) / scale, torch.zeros_like(outputs), rtol=0, atol=0.03)
        torch.testing.assert_close(torch.einsum("sbi,sbj->bij", centred, centred) / len(samples), covariance,
                                   rtol=0.04, atol=0.04 * scale.max().item() ** 2)
    # the predictive pushes K tangents where K < C, and takes C cotangents otherwise
    import bnnbench.methods.laplace.subnetwork as subnetwork

    calls, push = [], subnetwork.subnet_jvp
    subnetwork.subnet_jvp = lambda *args: calls.append(len(args[3])) or push(*args)
    try:
        for n_samples in (3, 4):
            assert predictive.predict(test_x, n_samples).shape == (n_samples, 5, 4)
    finally:
        subnetwork.subnet_jvp = push
    assert calls == [3]


def test_validation_tuning_runs_the_network_once_per_batch_for_a_head_posterior():
    """Inside `reusing_features` the last-layer predictive runs each batch through the network once, whatever the
    prior precision, and predicts exactly what it predicts outside; a batch that differs is run again."""
    from bnnbench.likelihoods import get_likelihood
    from bnnbench.methods.laplace.last_layer import LastLayerPredictive

    network, laplace, x = _last_layer_posterior("kron", "classification", 4)
    predictive = LastLayerPredictive(laplace, network, None, get_likelihood("categorical", {}), "glm", "probit")
    expected = {}
    for alpha in (0.5, 30.0):
        laplace.prior_precision = alpha
        expected[alpha] = predictive.predict(x, 1)
    calls = []
    forward = laplace.model.forward_with_features
    laplace.model.forward_with_features = lambda inputs: calls.append(len(inputs)) or forward(inputs)
    with predictive.reusing_features():
        for alpha in (0.5, 30.0, 0.5):
            laplace.prior_precision = alpha
            torch.testing.assert_close(predictive.predict(x.clone(), 1), expected[alpha], rtol=0, atol=0)
        predictive.predict(x + 1, 1)
    assert calls == [11, 11]
    predictive.predict(x, 1)  # outside: no reuse
    assert calls == [11, 11, 11]


def test_largest_variance_selection_leaves_no_hooks_that_break_the_subnetwork_jacobians():
    """The diagonal Laplace that "largest-variance" fits extends the model with BackPACK, which left full backward
    hooks on every layer; the subnetwork's torch.func Jacobians then failed (a tune of digits-mlp: 4 of 12 trials)."""
    from torch.func import functional_call, jacrev

    from bnnbench.methods.laplace.subnetwork import select_subnetwork

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    train = Split(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    indices = select_subnetwork(model, "classification", "largest-variance", 20, train, 32, 0)
    assert len(indices) == 20
    assert not any(module._backward_hooks or module._forward_hooks for module in model.modules())
    params = {name: value.detach() for name, value in model.named_parameters()}
    jacobian = jacrev(lambda p: functional_call(model, p, (train.x[:2],)))(params)
    assert jacobian["0.weight"].shape == (2, 3, 16, 8)
