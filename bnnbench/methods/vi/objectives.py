"""The two objectives over the shared diagonal Gaussian; everything else about the methods is shared.

Both see the target through `log_likelihood(theta, x, y)`: an unbiased mini-batch estimate of the
(tempered) full-data log-likelihood, (N / (b T)) Σ_{i∈B} log p(y_i | x_i, θ), and a Gaussian prior.
Both plug into the shared training loop: `on_batch(x, y)` once per mini-batch, `loss(x, y)` per optimiser
step, `epoch_diagnostics()` once per epoch.

Diagnostics are computed alike for both methods, so convergence curves compare: the negative-ELBO estimate
of an epoch is the mean over its mini-batches of −log_likelihood(θ ~ q) (θ from the current q for
elbo-vi, from the anchor q_t for score-vi) plus KL(q ‖ prior) at the epoch's end.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from bnnbench.methods.vi.family import DiagonalGaussian, Params, kl_divergence

__all__ = ["LogLikelihood", "NegativeELBO", "ScoreMatching"]

LogLikelihood = Callable[[Params, Tensor, Tensor], Tensor]
WEIGHTINGS = ("q_t", "none")


class _Diagnostics:
    """Running sums over one epoch; read and reset by `epoch_diagnostics`."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: Tensor) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + value.detach().float()
        self.counts[name] = self.counts.get(name, 0) + 1

    def pop(self) -> dict[str, float]:
        means = {name: (total / self.counts[name]).item() for name, total in self.sums.items()}
        self.sums, self.counts = {}, {}
        return means


def _with_neg_elbo(values: dict[str, float], q: DiagonalGaussian, prior: DiagonalGaussian) -> dict[str, float]:
    """An epoch's means plus KL(q ‖ prior) at its end and neg_elbo = mean(−log-likelihood) + KL."""
    with torch.no_grad():
        kl = kl_divergence(q, prior).item()
    return values | {"kl": kl, "neg_elbo": values.pop("neg_log_likelihood") + kl}


class ScoreMatching:
    """score-vi: L_t(φ) = (1/S) Σ_s Σ_d w_d (∇ log q_φ(θ_s) − ĝ_s)_d² + λ KL(q_t ‖ q_φ), θ_s ~ q_t detached.

    `on_batch` refreshes the anchor q_t every `refresh_every` mini-batches, draws S samples from it and
    computes their mini-batch scores ĝ_s = ∇_θ [log p(θ) + log_likelihood(θ, x, y)] (S forward and
    backward passes, nothing flows through the sampler). `loss` is then minimised for K inner steps on that
    fixed set. The loss is linear in ĝ_s and the weight w (σ_t², `weighting="q_t"`, or 1) depends only on
    q_t, so the stochastic gradient is unbiased for the full-data one.
    """

    def __init__(self, q: DiagonalGaussian, prior: DiagonalGaussian, log_likelihood: LogLikelihood, *,
                 n_samples: int, prox_weight: float, refresh_every: int, weighting: str,
                 antithetic: bool = False) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting '{weighting}'; valid choices: {', '.join(WEIGHTINGS)}")
        self.q, self.prior, self.log_likelihood = q, prior, log_likelihood
        self.n_samples, self.prox_weight, self.antithetic = n_samples, prox_weight, antithetic
        self.refresh_every, self.weighting = refresh_every, weighting
        self.anchor = q.detached()
        self._anchor_var = self.anchor.variance()
        self._parameters = [tensor for name in q.names() for tensor in (q.mean[name], q.log_std[name])]
        self.samples: list[Params] = []
        self.scores: list[Params] = []
        self.batches = 0
        self.diagnostics = _Diagnostics()

    def target_scores(self, theta: Params, x: Tensor, y: Tensor) -> tuple[Params, Tensor]:
        """ĝ(θ) on one mini-batch, and the log-likelihood estimate at θ."""
        theta = {name: value.detach().requires_grad_(True) for name, value in theta.items()}
        log_likelihood = self.log_likelihood(theta, x, y)
        grads = torch.autograd.grad(log_likelihood + self.prior.log_prob(theta), list(theta.values()))
        return {name: grad.detach() for name, grad in zip(theta, grads, strict=True)}, log_likelihood.detach()

    def on_batch(self, x: Tensor, y: Tensor) -> None:
        if self.batches % self.refresh_every == 0:
            self.anchor = self.q.detached()
            self._anchor_var = self.anchor.variance()
        self.batches += 1
        self.samples, self.scores = [], []
        with torch.no_grad():
            draws = self.anchor.samples(self.n_samples, self.antithetic)
        for theta in draws:
            score, log_likelihood = self.target_scores(theta, x, y)
            self.samples.append(theta)
            self.scores.append(score)
            self.diagnostics.add("neg_log_likelihood", -log_likelihood)

    def reference_loss(self) -> tuple[Tensor, Tensor]:
        """(score loss, KL(q_t ‖ q)) by autograd-able tensor ops, written as in the spec; `loss` must agree."""
        weight = self.anchor.variance() if self.weighting == "q_t" else None
        score_loss = 0.0
        for theta, target in zip(self.samples, self.scores, strict=True):
            for name, value in self.q.score(theta).items():
                residual_sq = (value - target[name]) ** 2
                score_loss = score_loss + (residual_sq * weight[name] if weight else residual_sq).sum()
        return score_loss / len(self.samples), kl_divergence(self.anchor, self.q)

    def loss(self, x: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        """L_t(φ), with its gradient in closed form (score_vi.md): r_s = −(θ_s − μ) σ⁻² − ĝ_s,
        ∂/∂μ = (2/S) Σ_s w r_s σ⁻² + λ (μ − μ_t) σ⁻², ∂/∂ω = (4/S) Σ_s w r_s (θ_s − μ) σ⁻² + λ (1 − (σ_t² +
        (μ_t − μ)²) σ⁻²). Element-wise work is the whole cost of an inner step, and the closed form needs
        a third of the tensor operations that autograd would record."""
        n_samples, lam = len(self.samples), self.prox_weight
        score_loss = proximal = 0.0
        gradients = []
        with torch.no_grad():
            for name in self.q.names():
                mean, log_std = self.q.mean[name], self.q.log_std[name]
                inv_var = torch.exp(-2 * log_std)
                anchor_var = self._anchor_var[name]
                grad_mean = torch.zeros_like(mean)
                grad_log_std = torch.zeros_like(mean)
                for theta, target in zip(self.samples, self.scores, strict=True):
                    diff = theta[name] - mean
                    residual = torch.addcmul(target[name], diff, inv_var)  # = −r_s
                    weighted = residual * anchor_var if self.weighting == "q_t" else residual
                    score_loss = score_loss + torch.dot(weighted.reshape(-1), residual.reshape(-1))
                    grad_mean -= weighted
                    grad_log_std.addcmul_(weighted, diff, value=-2.0)
                shift = mean - self.anchor.mean[name]
                spread = torch.addcmul(anchor_var, shift, shift) * inv_var
                proximal = proximal + (log_std - self.anchor.log_std[name] + 0.5 * spread - 0.5).sum()
                grad_mean.mul_(2.0 / n_samples).add_(shift, alpha=lam).mul_(inv_var)
                grad_log_std.mul_(inv_var).mul_(2.0 / n_samples).sub_(spread, alpha=lam).add_(lam)
                gradients += [grad_mean, grad_log_std]
            score_loss = score_loss / n_samples
        self.diagnostics.add("score_loss", score_loss)
        self.diagnostics.add("prox_kl", proximal)
        return _with_gradients(score_loss + lam * proximal, self._parameters, gradients)

    def epoch_diagnostics(self) -> dict[str, float]:
        return _with_neg_elbo(self.diagnostics.pop(), self.q, self.prior)


class _WithGradients(torch.autograd.Function):
    """Returns `value`; its backward hands precomputed `gradients` to `parameters`. Closed-form gradients
    enter the shared training loop (which calls `loss.backward()`) as one autograd node."""

    @staticmethod
    def forward(ctx, value: Tensor, gradients: list[Tensor], *parameters: Tensor) -> Tensor:
        ctx.gradients = gradients
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        return (None, None, *(gradient.mul_(grad_output) for gradient in ctx.gradients))


def _with_gradients(value: Tensor, parameters: list[Tensor], gradients: list[Tensor]) -> Tensor:
    return _WithGradients.apply(value, gradients, *parameters)


class NegativeELBO:
    """elbo-vi: −E_q[log p(D | θ)] + β KL(q ‖ p), reparametrised θ = μ + σ ε with S samples per mini-batch,
    divided by N so the loss reads per data point. β rises linearly from 0 to 1 over the first
    `kl_anneal_steps` optimiser steps (0: no annealing)."""

    def __init__(self, q: DiagonalGaussian, prior: DiagonalGaussian, log_likelihood: LogLikelihood, *,
                 n_data: int, n_samples: int, kl_anneal_steps: int, antithetic: bool = False) -> None:
        self.q, self.prior, self.log_likelihood = q, prior, log_likelihood
        self.n_data, self.n_samples, self.kl_anneal_steps = n_data, n_samples, kl_anneal_steps
        self.antithetic = antithetic
        self.steps = 0
        self.diagnostics = _Diagnostics()

    def kl_weight(self) -> float:
        return min(1.0, self.steps / self.kl_anneal_steps) if self.kl_anneal_steps else 1.0

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        draws = self.q.samples(self.n_samples, self.antithetic)
        expected = sum(self.log_likelihood(theta, x, y) for theta in draws) / self.n_samples
        kl = kl_divergence(self.q, self.prior)
        self.diagnostics.add("neg_log_likelihood", -expected)
        self.steps += 1
        return (-expected + self.kl_weight() * kl) / self.n_data

    def epoch_diagnostics(self) -> dict[str, float]:
        return _with_neg_elbo(self.diagnostics.pop(), self.q, self.prior) | {"kl_weight": self.kl_weight()}
