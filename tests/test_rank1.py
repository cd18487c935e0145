"""Rank-1 BNN layers against closed forms (others.md §2.2): identity factors change nothing, the factors equal
a materialised rank-1 weight per component, MC moments of one layer, and the KL terms."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from scipy import integrate, stats
from torch import nn

from bnnbench.methods.rank1 import Rank1Factors, gaussian_kl
from bnnbench.models import create_model
from bnnbench.tasks import load_task


def _model(task: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(load_task(task).model, (1, 8, 8), 10).eval()


def _wrap(model: nn.Module, k: int, distribution: str = "gaussian") -> Rank1Factors:
    return Rank1Factors(model, k, distribution, prior_std=0.1, random_sign_init=0.5, init_dropout_rate=1e-3,
                        generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("task", ["digits-mlp", "digits-cnn", "digits-vit"])
def test_unit_factors_leave_the_output_unchanged(task):
    model = _model(task)
    x = torch.randn(12, 1, 8, 8)
    with torch.no_grad():
        reference = model(x)
    factors = _wrap(model, k=4)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    assert len(factors.layers) == len(layers)  # every Linear and Conv, timm's ViT included
    with torch.no_grad():
        factors.loc.fill_(1.0)
    factors.sample = False
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("task", ["digits-mlp", "digits-cnn"])
def test_each_component_is_the_network_with_weights_w_times_r_s_transpose(task):
    model = _model(task)
    original = copy.deepcopy(model)
    k, m = 3, 5
    factors = _wrap(model, k)
    with torch.no_grad():
        factors.loc.copy_(1 + 0.5 * torch.randn_like(factors.loc))
        factors.bias.add_(0.1 * torch.randn_like(factors.bias))
    factors.sample = False
    x = torch.randn(m, 1, 8, 8)
    with torch.no_grad():
        blocks = model(x.repeat(k, 1, 1, 1)).view(k, m, -1)  # rows c*m .. (c+1)*m - 1 are component c
    for c in range(k):
        materialised = copy.deepcopy(original)
        parts = factors.loc[c].split(factors.factor_sizes)
        biases = factors.bias[c].split(factors.bias_sizes)
        for index, layer in enumerate(factors.layers):
            module = materialised.get_submodule(layer.name)
            s, r = parts[2 * index], parts[2 * index + 1]
            shape = (-1, 1) if isinstance(module, nn.Linear) else (-1, 1, 1, 1)
            with torch.no_grad():
                module.weight.mul_(r.view(shape) * s.view(1, -1, *shape[2:]))
                module.bias.copy_(biases[layer.bias])
        with torch.no_grad():
            torch.testing.assert_close(blocks[c], materialised(x), atol=1e-5, rtol=1e-5)


def test_one_layer_output_moments_match_the_closed_form():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    factors = _wrap(layer, k=1)
    with torch.no_grad():
        factors.loc.copy_(1 + 0.3 * torch.randn_like(factors.loc))
        factors.rho.fill_(math.log(math.expm1(0.2)))  # σ = 0.2 on every factor
    x = torch.randn(5)
    n = 200_000
    with torch.no_grad():
        y = layer(x.expand(n, 5)).double()
        s_mu, r_mu = factors.loc[0].split(factors.factor_sizes)
        w, b, sigma = layer.weight.double(), factors.bias[0].double(), 0.2
        inner_mean = w @ (s_mu.double() * x.double())
        inner_square = inner_mean**2 + (w**2 * sigma**2) @ (x.double() ** 2)
        mean = r_mu.double() * inner_mean + b
        variance = (r_mu.double() ** 2 + sigma**2) * inner_square - (r_mu.double() * inner_mean) ** 2
    torch.testing.assert_close(y.mean(0), mean, atol=5 * (variance / n).sqrt().max().item(), rtol=0)
    torch.testing.assert_close(y.var(0), variance, rtol=0.02, atol=0)


def test_gaussian_kl_matches_torch_distributions():
    loc, scale = torch.randn(7), torch.rand(7) + 0.01
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(loc, scale),
                                                 torch.distributions.Normal(1.0, 0.1))
    torch.testing.assert_close(gaussian_kl(loc, scale, 1.0, 0.1), expected)


def test_cauchy_kl_estimate_matches_quadrature():
    layer = nn.Linear(1, 1)
    factors = _wrap(layer, k=1, distribution="cauchy")
    with torch.no_grad():
        factors.loc.copy_(torch.tensor([[1.2, 0.9]]))
        factors.rho.copy_(torch.log(torch.expm1(torch.tensor([[0.05, 0.2]]))))
    torch.manual_seed(0)
    with torch.no_grad():
        layer(torch.zeros(400_000, 1))  # draws the factors
        estimate = factors.kl("sum").item()
    exact = 0.0
    for loc, scale in ((1.2, 0.05), (0.9, 0.2)):
        q, p = stats.cauchy(loc, scale), stats.cauchy(1.0, 0.1)
        exact += integrate.quad(lambda v, q=q, p=p: q.pdf(v) * (q.logpdf(v) - p.logpdf(v)), -10, 10,
                                points=[loc], limit=500)[0]
    assert estimate == pytest.approx(exact, rel=0.03)
