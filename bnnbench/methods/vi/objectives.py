"""The two objectives over the shared Gaussian families; everything else about the methods is shared.

Both see the target through `log_likelihood(theta, x, y)`: an unbiased mini-batch estimate of the
(tempered) full-data log-likelihood, (N / (b T)) Σ_{i∈B} log p(y_i | x_i, θ), and a Gaussian prior. With no
prior (`prior=None`), `log_likelihood` is the whole unnormalised log density log p̃ (a synthetic target of the
convergence benchmark) and KL(q ‖ prior) becomes −H(q) throughout.
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

from bnnbench.methods.vi.family import DiagonalGaussian, GaussianFamily, Params, entropy, kl_divergence

__all__ = ["LogLikelihood", "NegativeELBO", "ScoreMatching"]

LogLikelihood = Callable[[Params, Tensor, Tensor], Tensor]
# the residual's weight: the anchor's variances σ_t² ("q_t"), its whole covariance Σ_t ("q_t_full", the same for
# the diagonal family), or none; each depends on q_t alone, so the gradient stays unbiased
WEIGHTINGS = ("q_t", "q_t_full", "none")
CV_DECAY = 0.98  # score-vi's control variate: decay of the running curvature estimate (≈ 100 batches' memory)


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


def prior_term(q: GaussianFamily, prior: DiagonalGaussian | None) -> Tensor:
    """KL(q ‖ prior), or −H(q) without a prior (the log-likelihood is then the whole log p̃)."""
    return kl_divergence(q, prior) if prior is not None else -entropy(q)


def _with_neg_elbo(values: dict[str, float], q: GaussianFamily, prior: DiagonalGaussian | None) -> dict[str, float]:
    """An epoch's means plus KL(q ‖ prior) at its end and neg_elbo = mean(−log-likelihood) + KL."""
    with torch.no_grad():
        kl = prior_term(q, prior).item()
    return values | {"kl": kl, "neg_elbo": values.pop("neg_log_likelihood") + kl}


class ScoreMatching:
    """score-vi: L_t(φ) = (1/S) Σ_s Σ_d w_d (∇ log q_φ(θ_s) − ĝ_s)_d² + λ KL(q_t ‖ q_φ), θ_s ~ q_t detached.

    `on_batch` refreshes the anchor q_t every `refresh_every` mini-batches, draws S samples from it and
    computes their mini-batch scores ĝ_s = ∇_θ [log p(θ) + log_likelihood(θ, x, y)] (S forward and
    backward passes, nothing flows through the sampler). `loss` is then minimised for K inner steps on that
    fixed set. The loss is linear in ĝ_s and the weight w (σ_t², `weighting="q_t"`, or 1) depends only on
    q_t, so the stochastic gradient is unbiased for the full-data one.

    `control_variate` (off by default; off, every operation is the plain estimator's) subtracts a zero-mean
    term from the μ-gradient. With θ_s = μ_t + σ_t ε_s, the anchor's own score u_s = ∇log q_t(θ_s) = −(θ_s −
    μ_t) σ_t⁻² has E_{q_t}[u_s] = 0, so for any c fixed given q_t and the past, replacing the residual R_s =
    ĝ_s − ∇log q(θ_s) = ĝ_s + (θ_s − μ) σ⁻² by R_s − c ⊙ u_s in ∂/∂μ = −(2/S) Σ_s w R_s σ⁻² + λ (μ − μ_t) σ⁻²
    (linear in R_s, coefficients fixed given q and q_t) leaves its expectation unchanged. Since
    (θ_s − μ) σ⁻² = (μ_t − μ) σ⁻² − σ_t² σ⁻² u_s, the plain estimator is the member c = 0 of the family
    R_s − c u_s = ĝ_s − β ⊙ u_s + (μ_t − μ) σ⁻², β = c + σ_t² σ⁻² (the plain one has β = σ_t² σ⁻²: q's own
    precision). Per coordinate the variance Var(ĝ_d − β_d u_d) is least at the regression coefficient
    β_d = Cov(ĝ_d, u_d) / Var(u_d) = σ_t,d² E_{q_t}[ĝ_d u_d] = σ_t,d² h_d, where by Stein's lemma
    h_d = E_{q_t}[−∂² log p̃ / ∂θ_d²] is the target's mean diagonal curvature. The rule: h is an exponential
    moving average (decay `CV_DECAY`, bias-corrected as Adam's moments) of the per-batch means of ĝ_s ⊙ u_s
    over the *previous* mini-batches only, so it is independent of this batch's ε_s and the gradient stays
    unbiased; before any batch has been seen, c = 0. The μ-gradient then uses R_s + (h − σ⁻²) ⊙ (θ_s − μ_t):
    the noise of q's own score, σ⁻² σ_t ε_s, is replaced by h σ_t ε_s, which cancels the part of ĝ_s that
    its own coordinate's ε_s predicts (−h σ_t ε_s). It helps where σ⁻² is far from h (early, from a small
    init_std, or wherever the iterate's σ is off) and is the plain estimator at the per-coordinate fixed
    point σ⁻² = h; it cannot remove noise from other coordinates' ε (off-diagonal curvature) or from the
    mini-batch. No extra network evaluation: u_s comes from the stored θ_s, h from the stored ĝ_s.
    The loss value and the ω-gradient are the plain ones: the same substitution in ∂/∂ω, which carries
    R_s (θ_s − μ), would add a term of mean c (E[u_s (θ_s − μ)] = −1), a bias. Antithetic pairs already
    cancel the term (the u_s of a pair sum to zero), so with `antithetic` it changes nothing but rounding.
    """

    def __init__(self, q: GaussianFamily, prior: DiagonalGaussian | None, log_likelihood: LogLikelihood, *,
                 train_samples: int, prox_weight: float, refresh_every: int, weighting: str,
                 antithetic: bool = False, inner_steps: int = 1, control_variate: bool = False) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting '{weighting}'; valid choices: {', '.join(WEIGHTINGS)}")
        # the closed-form inner step is written for the diagonal family; the others take autograd's gradient of
        # the same loss (`reference_loss`), and the control variate's derivation is per coordinate
        self.closed_form = isinstance(q, DiagonalGaussian)
        if control_variate and not self.closed_form:
            raise ValueError("the control variate is derived for the diagonal family only")
        self.q, self.prior, self.log_likelihood = q, prior, log_likelihood
        self.inner_steps, self._steps_left = inner_steps, inner_steps
        self.train_samples, self.prox_weight, self.antithetic = train_samples, prox_weight, antithetic
        self.refresh_every, self.weighting = refresh_every, weighting
        self._prior_precision = prior.variance().reciprocal() if prior is not None else None
        self.set_anchor(self.q.detached())
        self.samples: list[Tensor] = []  # θ_s, flat
        self.scores: list[Tensor] = []  # ĝ_s, flat
        self.batches = 0
        self.diagnostics = _Diagnostics()
        self.control_variate = control_variate
        self._curvature = torch.zeros_like(self.q.mean.detach()) if control_variate else None  # h, un-corrected
        self._curvature_batches = 0
        self._cv_terms: tuple[Tensor, Tensor] | None = None  # (h lagged, Σ_s (θ_s − μ_t)) for this batch

    def target_scores(self, theta: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """ĝ(θ) on one mini-batch (flat, like θ), and the log-likelihood estimate at θ."""
        theta = theta.detach().requires_grad_(True)
        log_likelihood = self.log_likelihood(self.q.named(theta), x, y)
        [grads] = torch.autograd.grad(log_likelihood, [theta])
        if self.prior is None:
            return grads, log_likelihood.detach()
        with torch.no_grad():  # the prior's score in closed form, −(θ − μ_p) σ_p⁻²
            return torch.addcmul(grads, self.prior.mean - theta, self._prior_precision), log_likelihood.detach()

    def on_batch(self, x: Tensor, y: Tensor) -> None:
        if self.batches % self.refresh_every == 0:
            self.set_anchor(self.q.detached())
        self.batches += 1
        self._steps_left = self.inner_steps
        self.samples, self.scores = [], []
        with torch.no_grad():
            draws = self.anchor.draws(self.train_samples, self.antithetic)
        for theta in draws:
            score, log_likelihood = self.target_scores(theta, x, y)
            self.samples.append(theta)
            self.scores.append(score)
            self.diagnostics.add("neg_log_likelihood", -log_likelihood)
        if self.control_variate:
            self._prepare_control_variate()

    def _prepare_control_variate(self) -> None:
        """This batch's control-variate terms from the previous batches' curvature estimate h (lagged: the
        coefficient must not depend on this batch's draws), then h updated with this batch's ĝ_s ⊙ u_s."""
        with torch.no_grad():
            offsets = [theta - self.anchor.mean for theta in self.samples]  # θ_s − μ_t = σ_t ε_s
            offset_sum = torch.stack(offsets).sum(0)
            self._cv_terms = None
            if self._curvature_batches:
                lagged = self._curvature / (1.0 - CV_DECAY**self._curvature_batches)
                self._cv_terms = (lagged, offset_sum)
            # mean over s of ĝ_s ⊙ u_s, u_s = −(θ_s − μ_t) σ_t⁻²: Stein's unbiased estimate of h under q_t
            product = torch.stack([score * offset for score, offset in zip(self.scores, offsets, strict=True)])
            estimate = product.mean(0).div_(self._anchor_var).neg_()
            self._curvature.mul_(CV_DECAY).add_(estimate, alpha=1.0 - CV_DECAY)
            self._curvature_batches += 1

    def set_anchor(self, anchor: GaussianFamily) -> None:
        """Make `anchor` the q_t of the proximal term and of the sampler (on_batch does, every
        `refresh_every` mini-batches, with a frozen copy of q)."""
        self.anchor = anchor
        # σ_t² (the diagonal of Σ_t), rounded for the diagonal family as the runs before issue 23 had it
        self._anchor_var = (torch.exp(anchor.log_std).square() if isinstance(anchor, DiagonalGaussian)
                            else anchor.variance())

    def reference_loss(self) -> tuple[Tensor, Tensor]:
        """(score loss, KL(q_t ‖ q)) by autograd-able tensor ops, written as in the spec; `loss` must agree."""
        weight = self.anchor.variance() if self.weighting != "none" else 1.0
        score_loss = sum((weight * (self.q.score(theta) - target) ** 2).sum()
                         for theta, target in zip(self.samples, self.scores, strict=True))
        return score_loss / len(self.samples), kl_divergence(self.anchor, self.q)

    def _autograd_loss(self) -> Tensor:
        """L_t(φ) for any family, differentiable in its parameters (the score loss batched over the S samples).
        "q_t" weighs by the anchor's variances σ_t²; "q_t_full" by its whole covariance,
        ‖r‖²_{Σ_t} = Σ_d d_t,d r_d² + ‖F_tᵀ r‖², which makes the loss invariant to linear reparametrisations of θ
        (BaM's weighting). Measured on the convergence benchmark's tuning seed (full family, 300 updates, S = 8):
        logreg-breast-cancer's negative ELBO 88.1 with "q_t" (rate 3e-3) and 61.2 with "q_t_full" (1e-2), at the
        best rate of each; gauss-d100-k1000's 40.9 ("q_t", 1e-2) and 70.1 ("q_t_full", 1e-3). Neither wins on both,
        so "q_t", the spec's weighting, stays the default."""
        samples, targets = torch.stack(self.samples), torch.stack(self.scores)
        residuals = self.q.score(samples) - targets
        if self.weighting == "q_t":
            squared = (self._anchor_var * residuals.square()).sum()
        elif self.weighting == "q_t_full":
            squared = (self.anchor.diagonal_part() * residuals.square()).sum()
            factor = self.anchor.factor()
            if factor is not None:
                squared = squared + (residuals @ factor).square().sum()
        else:
            squared = residuals.square().sum()
        score_loss = squared / len(self.samples)
        proximal = kl_divergence(self.anchor, self.q)
        self.diagnostics.add("score_loss", score_loss)
        self.diagnostics.add("prox_kl", proximal)
        return score_loss + self.prox_weight * proximal

    def loss_and_gradients(self, x: Tensor | None = None,
                           y: Tensor | None = None) -> tuple[Tensor | None, list[Tensor]]:
        """The gradient of L_t with respect to (μ, ω), and L_t(φ) itself at the last of the mini-batch's
        `inner_steps` steps only (None before it: the value is a diagnostic, the steps need only the gradient).
        """
        self._steps_left -= 1
        return self._closed_form(with_value=self._steps_left <= 0)

    def _closed_form(self, with_value: bool) -> tuple[Tensor | None, list[Tensor]]:
        """L_t(φ) and its gradient with respect to (μ, ω) in closed form (score_vi.md): r_s = −(θ_s − μ) σ⁻² − ĝ_s,
        ∂/∂μ = (2/S) Σ_s w r_s σ⁻² + λ (μ − μ_t) σ⁻², ∂/∂ω = (4/S) Σ_s w r_s (θ_s − μ) σ⁻² + λ (1 − (σ_t² +
        (μ_t − μ)²) σ⁻²). An inner step is element-wise work on the two flat vectors only, so its cost is the
        number of operations, each one kernel over all coordinates: about 20, where autograd would record
        three times as many and the optimiser's backward pass and bookkeeping cost more than the work."""
        train_samples, lam = len(self.samples), self.prox_weight
        mean, log_std, anchor = self.q.mean.detach(), self.q.log_std.detach(), self.anchor
        with torch.no_grad():
            inv_var = torch.exp(log_std * -2.0)
            score_loss, weighted_sum, weighted_spread = 0.0, None, None
            for theta, target in zip(self.samples, self.scores, strict=True):
                diff = theta - mean
                residual = torch.addcmul(target, diff, inv_var)  # = −r_s
                weighted = residual * self._anchor_var if self.weighting != "none" else residual
                if with_value:
                    score_loss = score_loss + torch.dot(residual, weighted) / train_samples  # Σ_d w r²
                if weighted_sum is None:
                    weighted_sum, weighted_spread = weighted, weighted * diff
                else:
                    weighted_sum.add_(weighted)
                    weighted_spread.addcmul_(weighted, diff)
            shift = mean - anchor.mean
            spread = torch.addcmul(self._anchor_var, shift, shift).mul_(inv_var)  # (σ_t² + (μ − μ_t)²) σ⁻²
            value = None
            if with_value:
                # KL(q_t ‖ q) = Σ_d ω − ω_t + (spread − 1) / 2, summed per coordinate: the two halves are each
                # about P / 2 (P up to millions), their difference small, and float32 keeps 7 digits
                proximal = (log_std - anchor.log_std).add_(spread, alpha=0.5).sub_(0.5).sum()
                self.diagnostics.add("score_loss", score_loss)
                self.diagnostics.add("prox_kl", proximal)
                value = score_loss + lam * proximal
            if self._cv_terms is not None:  # Σ_s w (R_s − c u_s) = Σ_s w R_s + w (h − σ⁻²) Σ_s (θ_s − μ_t)
                curvature, offset_sum = self._cv_terms
                correction = (curvature - inv_var).mul_(offset_sum)
                if self.weighting != "none":
                    correction.mul_(self._anchor_var)
                weighted_sum = weighted_sum + correction
            grad_mean = shift.mul_(lam).sub_(weighted_sum, alpha=2.0 / train_samples).mul_(inv_var)
            grad_log_std = spread.mul_(-lam).add_(lam).addcmul_(weighted_spread, inv_var, value=-4.0 / train_samples)
        return value, [grad_mean, grad_log_std]

    def loss(self, x: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        """L_t(φ) as a tensor whose backward pass hands (μ, ω) the closed-form gradient (for callers that use
        autograd; the training loop takes `loss_and_gradients` and skips it); autograd's for the other families."""
        if not self.closed_form:
            return self._autograd_loss()
        value, gradients = self._closed_form(with_value=True)
        return _with_gradients(value, self.q.parameters(), gradients)

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
        torch._foreach_mul_(ctx.gradients, grad_output)
        return (None, None, *ctx.gradients)


def _with_gradients(value: Tensor, parameters: list[Tensor], gradients: list[Tensor]) -> Tensor:
    return _WithGradients.apply(value, gradients, *parameters)


class NegativeELBO:
    """elbo-vi: −E_q[log p(D | θ)] + β KL(q ‖ p), reparametrised θ = μ + σ ε with S samples per mini-batch,
    divided by N so the loss reads per data point. β rises linearly from 0 to 1 over the first
    `kl_anneal_steps` optimiser steps (0: no annealing)."""

    closed_form = False

    def __init__(self, q: GaussianFamily, prior: DiagonalGaussian | None, log_likelihood: LogLikelihood, *,
                 n_data: int, train_samples: int, kl_anneal_steps: int, antithetic: bool = False) -> None:
        self.q, self.prior, self.log_likelihood = q, prior, log_likelihood
        self.n_data, self.train_samples, self.kl_anneal_steps = n_data, train_samples, kl_anneal_steps
        self.antithetic = antithetic
        self.steps = 0
        self.diagnostics = _Diagnostics()

    def kl_weight(self) -> float:
        return min(1.0, self.steps / self.kl_anneal_steps) if self.kl_anneal_steps else 1.0

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        draws = self.q.samples(self.train_samples, self.antithetic)
        expected = sum(self.log_likelihood(theta, x, y) for theta in draws) / self.train_samples
        kl = prior_term(self.q, self.prior)
        self.diagnostics.add("neg_log_likelihood", -expected)
        self.steps += 1
        return (-expected + self.kl_weight() * kl) / self.n_data

    def epoch_diagnostics(self) -> dict[str, float]:
        return _with_neg_elbo(self.diagnostics.pop(), self.q, self.prior) | {"kl_weight": self.kl_weight()}
