"""SWAG: the SWA mean on Bayesian linear regression against the exact posterior mean, the sampler against the
covariance it claims, and the per-sample BatchNorm refresh against statistics computed directly."""

from __future__ import annotations

import copy

import numpy as np
import torch
from test_laplace import _double, _relative
from torch import nn

from bnnbench.data import load_data
from bnnbench.likelihoods import Categorical
from bnnbench.methods import build_method
from bnnbench.methods.swag import SwagMoments, SwagPredictive, update_batchnorm
from bnnbench.models import create_model
from bnnbench.params import FlatParams
from bnnbench.reference import linear_gaussian_posterior
from bnnbench.tasks import load_task
from bnnbench.types import Budget, DataBundle, FitContext, Split


def test_swa_mean_is_the_exact_posterior_mean_on_linear_regression():
    task = load_task("sanity-blr")  # its [methods.swag]: prior N(0, 1) in the loss, mini-batches of 32
    bundle = load_data(task.data).bundle
    data = DataBundle(_double(bundle.train), _double(bundle.val), bundle.num_outputs, bundle.input_shape)
    torch.manual_seed(0)
    model = create_model(task.model, data.input_shape, data.num_outputs).double()
    predictive, info = build_method("swag", task).fit(task, model, data, Budget(max_epochs=200),
                                                      FitContext(torch.device("cpu"), 0, False))
    exact = linear_gaussian_posterior(data.train.x.numpy(), data.train.y.numpy(), noise_std=0.7, prior_std=1.0)
    means, variances = predictive.parameter_moments()
    mean = torch.cat([means["weight"].reshape(-1), means["bias"]]).numpy()
    assert info.extra["n_snapshots"] == 100 and info.extra["rank_used"] == 20
    assert _relative(mean, exact.mean) < 0.05
    marginal = torch.cat([variances["weight"].reshape(-1), variances["bias"]]).numpy()
    assert np.all(marginal > 0) and np.all(marginal < np.diag(exact.covariance) * 10)  # SGD noise, not 0


def test_samples_have_the_covariance_of_diagonal_plus_low_rank():
    generator = torch.Generator().manual_seed(0)
    moments = SwagMoments(size=6, rank=4, device=torch.device("cpu"), dtype=torch.float64)
    for _ in range(10):
        moments.collect(torch.randn(6, generator=generator, dtype=torch.float64) * torch.arange(1.0, 7.0))
    assert moments.n == 10 and len(moments.deviations) == 4
    deviations = torch.stack(moments.deviations)
    claimed = 0.5 * (torch.diag(moments.diagonal_variance()) + deviations.T @ deviations / 3)
    torch.manual_seed(0)
    samples = moments.sample(200_000, scale=0.5)
    torch.testing.assert_close(samples.mean(0), moments.mean, atol=0.05, rtol=0)
    empirical = torch.cov(samples.T)
    assert torch.linalg.norm(empirical - claimed) / torch.linalg.norm(claimed) < 0.02
    torch.testing.assert_close(moments.marginal_variance(0.5), torch.diag(claimed))


def test_batchnorm_statistics_are_recomputed_on_the_training_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    model[1].running_mean.fill_(5.0)  # stale statistics of other weights
    train = Split(torch.randn(100, 3) * 2 + 1, torch.zeros(100))
    buffers = update_batchnorm(model, train, batch_size=32)
    with torch.no_grad():
        hidden = model[0](train.x)
    torch.testing.assert_close(buffers["1.running_mean"], hidden.mean(0), atol=1e-5, rtol=0)
    # the row-weighted average of per-batch unbiased variances (batches of 32, 32, 32, 4), as BatchNorm keeps it
    batch_vars = torch.stack([hidden[i:i + 32].var(0) * len(hidden[i:i + 32]) for i in range(0, 100, 32)])
    torch.testing.assert_close(buffers["1.running_var"], batch_vars.sum(0) / 100, atol=1e-5, rtol=0)
    assert not model.training


def test_each_sample_predicts_with_its_own_batchnorm_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    layout = FlatParams(model)
    start = layout.flatten(dict(model.named_parameters())).clone()
    moments = SwagMoments(layout.size, rank=3, device=torch.device("cpu"))
    for _ in range(5):
        moments.collect(start + 0.3 * torch.randn(layout.size))
    train = Split(torch.randn(64, 3), torch.zeros(64, dtype=torch.long))
    predictive = SwagPredictive(model, moments, 0.5, Categorical(), train, batch_size=16)
    x = torch.randn(6, 3)
    log_probs = predictive.predict(x, n_samples=3)
    torch.testing.assert_close(layout.flatten(dict(model.named_parameters())), start)  # weights put back
    stacked = predictive.stacked
    assert stacked.buffers["1.running_mean"].shape == (3, 4)
    for k in range(3):
        sample = copy.deepcopy(model)
        nn.utils.vector_to_parameters(torch.cat([stacked.params[n][k].reshape(-1) for n in layout.names]),
                                      sample.parameters())
        buffers = update_batchnorm(sample, train, batch_size=16)
        torch.testing.assert_close(stacked.buffers["1.running_var"][k], buffers["1.running_var"])
        with torch.no_grad():
            torch.testing.assert_close(log_probs[k], torch.log_softmax(sample(x), -1))
    assert (stacked.buffers["1.running_mean"][0] - stacked.buffers["1.running_mean"][1]).abs().max() > 1e-3
