"""`sampled-laplace`: linearised Laplace by sample-then-optimise (Antorán et al., ICLR 2023), written here because
no PyTorch library does it.

Around the MAP θ*, the linearised network f(x; θ*) + J(x)(θ − θ*) with the likelihood's curvature H_i in the
outputs and the prior N(0, I/α) is a conjugate Gaussian linear model: its posterior covariance is
Σ = (Σ_i J_iᵀ H_i J_i + αI)⁻¹. Each zero-mean sample z_k ~ N(0, Σ) is the minimiser of the low-variance objective

    ½ Σ_i ‖J_i z‖²_{H_i} + ½ α ‖z − z0_k‖²,    z0_k = θ0_k + α⁻¹ Σ_i J_iᵀ L_i e_ik,

with θ0_k ~ N(0, I/α), L_i L_iᵀ = H_i and e_ik ~ N(0, I): the target noise sits in z0, so minibatch gradients carry
none. The minimiser solves (Σ_i J_iᵀ H_i J_i + αI) z_k = α z0_k. By default the K systems are solved together by
conjugate gradients (full-batch products, Jacobi-preconditioned) to a stated residual (`sample_tol`); the authors'
minibatch SGD (Nesterov momentum, step lr_scale / λ_max of the objective's Hessian, found by power iteration, decayed
linearly to 0) is `solver = "sgd"`, for data too large for full-batch passes. SGD has no stopping test, and its
budget is the danger: on digits-fidelity, 10 epochs left the samples' output variance at 0.30 of the exact
linearised posterior's (explicit GGN, float64), 100 epochs at 0.63 and 400 at 0.91, so the predictive was narrow
for want of convergence; conjugate gradients reached 0.985 (256 samples). The network is only touched through
Jacobian-vector products (forward mode, `torch.func.jvp`) and vector-Jacobian products (reverse mode): no Jacobian,
GGN or covariance is formed, so memory is K·P floats and a step costs about K × (1 jvp + 1 vjp).

Prior precision: fixed at `prior_precision` (`em_steps = 0`), or MacKay's update inside EM (`em_steps > 0`):
α ← γ / ‖w_lin‖², with w_lin the MAP of the linear model J(x)w fitted to the labels and γ, the effective number of
parameters, estimated from the samples in weight space (d − α Σ_j mean_k z_kj²) or function space
(mean_k Σ_i ‖J_i z_k‖²_{H_i}). The same random draws are re-targeted to each new α (θ0 ∝ α^-½, the data part ∝ α⁻¹)
and the samples are warm-started.

The EM runs to the update's fixed point, not for a fixed count. The authors run 10 steps with w_lin fitted by 15-25
epochs of SGD (spec §4.1). Measured on digits-mlp (ci budget, seed 0) with 5 SGD epochs for w_lin, α went
1 → 87 → 9.9 → 122 → 28 → 165: an under-fitted w_lin (its first update moved from 87 to 180 between 5 and 200
epochs) and an update that overshoots. So here w_lin is the linear model's MAP to a stated tolerance (full-batch
L-BFGS on the convex objective, warm-started across steps), and the fixed point of α ↦ MacKay(α) is found as a root
in log α (`MacKaySearch`): plain MacKay steps while they keep one direction, and once two proposals have bracketed
the fixed point (one above its α, one below), Illinois false position inside the bracket. The fixed point is
MacKay's; only the path to it differs. A damped step is not enough: on digits-overconfident (189 training rows,
an interpolating network) log MacKay(α) falls with slope about -4.5 in log α near its fixed point, so every step
of size above 0.36 overshoots, and a step size that halves on a reversal and doubles back cycled α through
0.19 → 2.4 → 1.4 → 0.6 → 0.19 for all 20 steps. EM stops when a proposal is within `em_tol` of its α, or when the
bracket is narrower than `em_tol` (relative), or after `em_steps`.

Predictive: MAP outputs + J(x) z_k (`pred_type = "glm"`), mixed by the evaluator (`link_approx = "mc"`) or in
closed form with the samples' output variance (`"probit"`, the default: softmax(f / √(1 + π/8 · v)) for
classification, the Gaussian N(f, v + σ²) for regression); or the network at θ* + z_k (`"nn"`). Neither link wins
everywhere with K = 8 (test NLL, mixed against probit): digits-mlp seed 0 0.232 against 0.290; digits-overconfident
seeds 2 and 3 0.628 and 0.556 against 0.513 and 0.382. w_lin is used by the M-step only.

BatchNorm affine parameters are left out of the linear model (zero tangents), as in the authors' code.
Attention runs through PyTorch's math kernel here (`math_attention`), the one that has forward-mode derivatives.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp, vmap

from bnnbench.errors import UsageError
from bnnbench.likelihoods import Categorical, Gaussian, Likelihood, get_likelihood
from bnnbench.methods.laplace.common import (
    LINK_APPROXIMATIONS,
    PRED_TYPES,
    TANGENT_ROWS,
    quiet_jit_deprecation,
    train_map_phase,
)
from bnnbench.methods.map import precision_prior_settings
from bnnbench.params import FlatParams, batchnorm_parameter_names, math_attention
from bnnbench.train import LoopResult, TrainConfig
from bnnbench.types import (
    Budget,
    DataBundle,
    Dimension,
    FitContext,
    FitInfo,
    MethodSpec,
    ParameterPosterior,
    Split,
    TaskSpec,
)

__all__ = ["SPEC", "Hparams", "Linearisation", "MacKaySearch", "OutputCurvature", "SampledLaplacePredictive", "fit"]

MACKAY_ESTIMATES = ("weight", "function")
SOLVERS = ("cg", "sgd")
LBFGS_ROUND = 10  # L-BFGS iterations between checks of the linear fit's tolerance


@dataclass(frozen=True)
class Hparams(TrainConfig):
    """Settings of `sampled-laplace`; the MAP phase uses `TrainConfig`'s (and `batch_size` is the SGD batch).

    posterior_samples: K, posterior samples kept (the authors' MNIST setting is 8).
    prior_precision: α, fixed when em_steps = 0, else EM's starting point.
    em_steps: at most this many MacKay updates of α, each followed by re-solving the samples; 0 keeps α fixed.
    em_tol: EM has converged when a MacKay proposal is within this of its α (relative), or the fixed point is
        bracketed that closely.
    mackay: how γ is estimated from the samples, "weight" or "function" (see the module docstring).
    solver: how the K sample objectives are minimised: "cg" (full-batch conjugate gradients, Jacobi-preconditioned,
        until every sample's residual is below sample_tol of its right-hand side, or sample_max_iter iterations of
        one pass over the data each) or "sgd" (the authors' minibatch SGD for sample_epochs epochs, no stopping
        test: for data too large for full-batch passes).
    sample_epochs: SGD epochs per solve of the K samples (solver "sgd").
    linear_tol, linear_max_iter: w_lin is fitted by full-batch L-BFGS until its gradient norm is below linear_tol
        times the norm at w = 0, or for at most linear_max_iter iterations (each about one pass over the data).
    lr_scale: SGD step = lr_scale / λ_max(objective Hessian per data point); momentum: Nesterov momentum.
    pred_type, link_approx: the predictive (see the module docstring).
    """

    posterior_samples: int = 8
    prior_precision: float = 1.0
    em_steps: int = 20
    em_tol: float = 0.01
    mackay: str = "weight"
    solver: str = "cg"
    sample_tol: float = 1e-3
    sample_max_iter: int = 300
    sample_epochs: int = 10
    linear_tol: float = 1e-4
    linear_max_iter: int = 100
    lr_scale: float = 0.5
    momentum: float = 0.9
    pred_type: str = "glm"
    link_approx: str = "probit"

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, value, choices in (("mackay", self.mackay, MACKAY_ESTIMATES), ("solver", self.solver, SOLVERS),
                                    ("pred_type", self.pred_type, PRED_TYPES),
                                    ("link_approx", self.link_approx, LINK_APPROXIMATIONS)):
            if value not in choices:
                raise UsageError(f"unknown {key} '{value}'; valid choices: {', '.join(choices)}")
        if self.posterior_samples < 1 or self.em_steps < 0 or self.sample_epochs < 1 or self.linear_max_iter < 1:
            raise UsageError("posterior_samples, sample_epochs and linear_max_iter must be >= 1 and em_steps >= 0")
        if self.em_tol <= 0 or self.linear_tol <= 0 or self.sample_tol <= 0 or self.sample_max_iter < 1:
            raise UsageError("em_tol, linear_tol and sample_tol must be positive and sample_max_iter >= 1")
        if self.prior_precision <= 0 or self.lr_scale <= 0 or not 0 <= self.momentum < 1:
            raise UsageError("prior_precision and lr_scale must be positive and momentum in [0, 1)")


class OutputCurvature:
    """H_i, the Hessian of −log p(y_i | f_i) in the outputs f_i at the MAP (the GGN's inner factor), as products:
    categorical diag(p) − ppᵀ, gaussian I/σ² (learned scale σ: the Fisher diag(a/σ², b) in (μ, log σ),
    `Likelihood.fisher`). `sqrt_product` applies L_i with L_i L_iᵀ = H_i; for the softmax,
    L = diag(√p) − p√pᵀ (it squares to diag(p) − ppᵀ because Σ p = 1)."""

    def __init__(self, likelihood: Likelihood, outputs: Tensor) -> None:
        self.check(likelihood)
        if isinstance(likelihood, Categorical):
            self.probs, self.precision = torch.softmax(outputs, dim=-1), None
        elif likelihood.noise_std is None:  # outputs (μ, log σ): the Fisher diag(a/σ², b), per output
            a, b = likelihood.fisher()
            self.probs = None
            self.precision = torch.stack([a * torch.exp(-2 * outputs[..., 1]), torch.full_like(outputs[..., 1], b)], -1)
        else:
            self.probs, self.precision = None, likelihood.noise_std ** -2

    @staticmethod
    def check(likelihood: Likelihood) -> None:
        if not isinstance(likelihood, Categorical | Gaussian):
            raise UsageError(f"sampled-laplace takes a categorical or gaussian likelihood, not '{likelihood.name}'")

    def product(self, vectors: Tensor) -> Tensor:
        if self.probs is None:
            return vectors * self.precision
        return self.probs * vectors - self.probs * (self.probs * vectors).sum(-1, keepdim=True)

    def sqrt_product(self, vectors: Tensor) -> Tensor:
        if self.probs is None:
            return vectors * (self.precision.sqrt() if isinstance(self.precision, Tensor)
                              else math.sqrt(self.precision))
        root = self.probs.sqrt()
        return root * vectors - self.probs * (root * vectors).sum(-1, keepdim=True)


class Linearisation:
    """The network around θ* on flat parameter vectors: outputs f(x; θ*), J(x)v and J(x)ᵀu for K vectors at once
    (vmapped), with BatchNorm parameters masked out of the tangent space."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        self.layout = FlatParams(model)
        named = dict(model.named_parameters())
        self.theta = self.layout.flatten(named)
        frozen = batchnorm_parameter_names(model)
        self.mask = torch.cat([torch.full((value.numel(),), float(name not in frozen), dtype=self.theta.dtype,
                                          device=self.theta.device) for name, value in named.items()])

    @property
    def n_params(self) -> int:
        return int(self.mask.sum().item())

    def _call(self, flat: Tensor, x: Tensor) -> Tensor:
        return functional_call(self.model, self.unflatten(flat), (x,))

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        return self.layout.unflatten(flat)

    @torch.no_grad()
    def outputs(self, x: Tensor) -> Tensor:
        return self._call(self.theta, x)

    def jvp(self, x: Tensor, tangents: Tensor) -> Tensor:
        """J(x) v for each row v of `tangents` (K, P): (K, B, C)."""
        return self.outputs_and_jvp(x, tangents)[1]

    def outputs_and_jvp(self, x: Tensor, tangents: Tensor) -> tuple[Tensor, Tensor]:
        """f(x; θ*) (B, C) and J(x) v for each row v of `tangents` (K, B, C), in one vmapped forward-mode pass: the
        primal does not depend on the tangent, so vmap computes it once and it is not run again."""
        def push(tangent: Tensor) -> tuple[Tensor, Tensor]:
            return jvp(lambda flat: self._call(flat, x), (self.theta,), (tangent * self.mask,))
        with math_attention(), quiet_jit_deprecation():
            outputs, offsets = vmap(push, out_dims=(None, 0))(tangents)
        return outputs.detach(), offsets.detach()

    def pullback(self, x: Tensor) -> tuple[Tensor, Any]:
        """f(x; θ*) and the map (K, B, C) -> (K, P), u -> J(x)ᵀu (masked)."""
        with math_attention():
            outputs, pull = vjp(lambda flat: self._call(flat, x), self.theta)

        def apply(cotangents: Tensor) -> Tensor:
            with math_attention():
                return vmap(pull)(cotangents)[0].detach() * self.mask
        return outputs.detach(), apply

    @torch.no_grad()
    def network_at(self, x: Tensor, offsets: Tensor) -> Tensor:
        """f(x; θ* + z) for each row z of `offsets` (K, P): (K, B, C)."""
        with math_attention():
            return vmap(lambda offset: self._call(self.theta + offset * self.mask, x))(offsets)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    return list(torch.randperm(n, generator=generator).split(batch_size))


@dataclass(frozen=True)
class _Preconditioner:
    """Diagonal preconditioning of the per-data-point objective: the step on z is lr · scale² ∘ gradient.

    scale² = N / (diag(M) + α), with diag(M) = Σ_i diag(J_iᵀH_iJ_i) estimated from the anchors' data parts
    (E[(Σ_i J_iᵀL_ie_i)²] = diag M, the probes of the authors' g-prior scaling). It changes the path, not the
    minimiser, so the samples stay exact; it makes one step size fit weights of very different curvature.
    """

    scale: Tensor  # the square root of the diagonal preconditioner
    lr: float

    @classmethod
    def build(cls, lin: Linearisation, likelihood: Likelihood, x: Tensor, diag_ggn: Tensor, alpha: float,
              n_train: int, lr_scale: float, generator: torch.Generator, iterations: int = 30) -> _Preconditioner:
        """lr = lr_scale / λ_max of the preconditioned objective Hessian on one batch (power iteration)."""
        scale = (n_train / (diag_ggn + alpha)).sqrt() * lin.mask
        outputs, pull = lin.pullback(x)
        curvature = OutputCurvature(likelihood, outputs)
        vector = torch.randn(1, len(lin.theta), generator=generator, device=lin.theta.device, dtype=lin.theta.dtype)
        eigenvalue = 0.0
        for _ in range(iterations):
            vector = vector * lin.mask / (vector * lin.mask).norm()
            scaled = vector * scale
            product = scale * (pull(curvature.product(lin.jvp(x, scaled))) / len(x) + alpha / n_train * scaled)
            eigenvalue = (vector * product).sum().item()
            vector = product
        return cls(scale, lr_scale / eigenvalue)

    def direction(self, gradient: Tensor) -> Tensor:
        return self.scale ** 2 * gradient


class _Sgd:
    """Nesterov SGD on K stacked vectors, preconditioned, with a linear decay of the step to 0 over `steps`."""

    def __init__(self, start: Tensor, preconditioner: _Preconditioner, momentum: float, steps: int) -> None:
        self.preconditioner = preconditioner
        self.parameter = nn.Parameter(start.clone())
        self.optimizer = torch.optim.SGD([self.parameter], lr=preconditioner.lr, momentum=momentum,
                                         nesterov=momentum > 0)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: max(0.0, 1 - step / steps))

    def step(self, gradient: Tensor) -> None:
        if not torch.isfinite(gradient).all():
            raise UsageError("sampled-laplace: SGD diverged (non-finite gradient); lower lr_scale")
        self.parameter.grad = self.preconditioner.direction(gradient)
        self.optimizer.step()
        self.schedule.step()

    @property
    def result(self) -> Tensor:
        return self.parameter.detach()


def _system(lin: Linearisation, likelihood: Likelihood, train: Split, alpha: float):
    """v -> (M + αI) v for K stacked vectors, M = Σ_i J_iᵀ H_i J_i over the whole training split (masked)."""
    def product(vectors: Tensor) -> Tensor:
        result = alpha * vectors * lin.mask
        for rows in torch.arange(len(train), device=train.x.device).split(TANGENT_ROWS):
            x = train.x[rows]
            outputs, pull = lin.pullback(x)
            result += pull(OutputCurvature(likelihood, outputs).product(lin.jvp(x, vectors)))
        return result
    return product


def _relative_residual(residual: Tensor, target_norm: Tensor) -> float:
    """The largest ‖residual_k‖ / ‖α anchors_k‖ over the samples: how far a solve is from the exact samples."""
    return (residual.norm(dim=1) / target_norm).max().item()


def _solve_samples(lin: Linearisation, likelihood: Likelihood, train: Split, start: Tensor, anchors: Tensor,
                   alpha: float, hparams: Hparams, preconditioner: _Preconditioner,
                   generator: torch.Generator) -> tuple[Tensor, float]:
    """Minimise, for each row k, (1/N)[½ Σ_i ‖J_i z_k‖²_{H_i} + ½ α ‖z_k − anchors_k‖²] by minibatch SGD for
    sample_epochs; returns the samples and their relative residual (one more full-batch pass, to report how far
    SGD got: it has no stopping test)."""
    n_train = len(train)
    steps = hparams.sample_epochs * math.ceil(n_train / hparams.batch_size)
    sgd = _Sgd(start, preconditioner, hparams.momentum, steps)
    for _ in range(hparams.sample_epochs):
        for rows in _batches(n_train, hparams.batch_size, generator):
            x = train.x[rows.to(train.x.device)]
            outputs, pull = lin.pullback(x)
            curvature = OutputCurvature(likelihood, outputs)
            samples = sgd.result
            gradient = pull(curvature.product(lin.jvp(x, samples))) / len(x)
            sgd.step(gradient + alpha / n_train * (samples - anchors) * lin.mask)
    target = alpha * anchors * lin.mask
    residual = target - _system(lin, likelihood, train, alpha)(sgd.result)
    return sgd.result, _relative_residual(residual, target.norm(dim=1).clamp_min(torch.finfo(target.dtype).tiny))


def _solve_samples_cg(lin: Linearisation, likelihood: Likelihood, train: Split, start: Tensor, anchors: Tensor,
                      alpha: float, hparams: Hparams, diag_ggn: Tensor) -> tuple[Tensor, float, int]:
    """The same minimisers as `_solve_samples`, (M + αI) z_k = α anchors_k, by conjugate gradients on all K
    right-hand sides at once, Jacobi-preconditioned by diag(M) + α, each product one full-batch pass (K jvps and
    vjps). Stops when every ‖residual_k‖ ≤ sample_tol · ‖α anchors_k‖ or after sample_max_iter; returns the
    samples, the largest relative residual and the iterations."""
    mask = lin.mask
    product = _system(lin, likelihood, train, alpha)
    inverse_diagonal = mask / (diag_ggn + alpha)
    target = alpha * anchors * mask
    target_norm = target.norm(dim=1).clamp_min(torch.finfo(target.dtype).tiny)
    samples = start * mask
    residual = target - product(samples)
    preconditioned = residual * inverse_diagonal
    direction = preconditioned.clone()
    inner = (residual * preconditioned).sum(1)
    ratio = _relative_residual(residual, target_norm)
    iterations = 0
    while ratio > hparams.sample_tol and iterations < hparams.sample_max_iter:
        iterations += 1
        curvature_direction = product(direction)
        step = inner / (direction * curvature_direction).sum(1)
        samples = samples + step[:, None] * direction
        residual = residual - step[:, None] * curvature_direction
        ratio = _relative_residual(residual, target_norm)
        if not math.isfinite(ratio):
            raise UsageError("sampled-laplace: conjugate gradients diverged (non-finite residual)")
        preconditioned = residual * inverse_diagonal
        following = (residual * preconditioned).sum(1)
        direction = preconditioned + (following / inner)[:, None] * direction
        inner = following
    return samples, ratio, iterations


class LinearFit(NamedTuple):
    """w_lin and how its fit ended: L-BFGS iterations, and the final gradient norm relative to the one at w = 0."""

    weights: Tensor
    iterations: int
    gradient_ratio: float


def _fit_linear_map(lin: Linearisation, likelihood: Likelihood, train: Split, start: Tensor, alpha: float,
                    hparams: Hparams, preconditioner: _Preconditioner) -> LinearFit:
    """w_lin = argmin_w (1/N)[−Σ_i log p(y_i | J_i w) + ½ α ‖w‖²], the linear model's MAP: a smooth convex problem,
    solved by full-batch L-BFGS (strong Wolfe line search) in the preconditioned coordinates w = scale ∘ u, from
    `start`, until ‖∇‖ ≤ linear_tol · ‖∇ at w = 0‖ or linear_max_iter iterations."""
    n_train, scale = len(train), preconditioner.scale
    parameter = nn.Parameter(torch.where(scale > 0, start / scale.clamp_min(torch.finfo(scale.dtype).tiny), 0.0))

    def objective_and_gradient(weights: Tensor) -> tuple[float, Tensor]:
        loss, gradient = 0.0, torch.zeros_like(weights)
        # full-batch passes in large chunks: per-call overhead of vmap/jvp/vjp, not flops, dominates at SGD batch sizes
        for rows in torch.arange(n_train, device=train.x.device).split(TANGENT_ROWS):
            x, y = train.x[rows], train.y[rows]
            _, pull = lin.pullback(x)
            linear_outputs = lin.jvp(x, weights.unsqueeze(0))[0].requires_grad_(True)
            with torch.enable_grad():
                batch_loss = -likelihood.log_likelihood(linear_outputs, y).sum()
                (output_gradient,) = torch.autograd.grad(batch_loss, linear_outputs)
            loss += batch_loss.item()
            gradient += pull(output_gradient.unsqueeze(0))[0]
        loss += 0.5 * alpha * (weights * lin.mask).square().sum().item()
        return loss / n_train, (gradient + alpha * weights * lin.mask) / n_train

    reference = (objective_and_gradient(torch.zeros_like(start))[1] * scale).norm().item()
    optimizer = torch.optim.LBFGS([parameter], lr=1.0, max_iter=LBFGS_ROUND, history_size=20,
                                  tolerance_grad=0.0, tolerance_change=0.0, line_search_fn="strong_wolfe")
    last = {"ratio": math.inf}

    def closure() -> Tensor:
        loss, gradient = objective_and_gradient(parameter.detach() * scale)
        parameter.grad = gradient * scale
        last["ratio"] = parameter.grad.norm().item() / reference if reference > 0 else 0.0
        return torch.tensor(loss, dtype=parameter.dtype)

    iterations = 0
    while iterations < hparams.linear_max_iter:
        optimizer.step(closure)
        iterations = optimizer.state[parameter]["n_iter"]
        if last["ratio"] <= hparams.linear_tol or not math.isfinite(last["ratio"]):
            break
    if not math.isfinite(last["ratio"]):
        if bool((start != 0).any()):  # J θ-like starts can put a learned log-scale where exp overflows; 0 is safe
            return _fit_linear_map(lin, likelihood, train, torch.zeros_like(start), alpha, hparams, preconditioner)
        raise UsageError("sampled-laplace: the linear model's fit diverged (non-finite gradient)")
    return LinearFit(parameter.detach() * scale, iterations, last["ratio"])


def _effective_dimension(lin: Linearisation, likelihood: Likelihood, train: Split, samples: Tensor, alpha: float,
                         estimate: str, batch_size: int) -> float:
    """γ = tr(ΣM) estimated from the samples, clipped to [1, d − 1]."""
    d = lin.n_params
    if estimate == "weight":
        gamma = d - alpha * (samples ** 2).mean(0).sum().item()
    else:
        gamma = 0.0
        for x in train.x.split(batch_size):
            projected = lin.jvp(x, samples)
            gamma += (projected * OutputCurvature(likelihood, lin.outputs(x)).product(projected)).sum().item()
        gamma /= len(samples)
    return min(max(gamma, 1.0), d - 1.0)


class MacKaySearch:
    """The fixed point of α ↦ MacKay(α) as the root of g(u) = log MacKay(e^u) − u.

    `propose(α, proposal)` returns the next α to try, or None when the search has converged: the proposal is within
    `tol` of α, or the bracket around the root is narrower than `tol` (relative). Until a proposal above its α and
    one below it bracket the root, the next α is the proposal itself (MacKay's plain step); then it is Illinois
    false position inside the bracket, which converges on any continuous g, however steep, where a fixed-point
    iteration with slope g' < −2 diverges."""

    def __init__(self, tol: float) -> None:
        self.tol = tol
        self.below: tuple[float, float] | None = None  # (u, g) with g > 0: the root lies above u
        self.above: tuple[float, float] | None = None  # (u, g) with g < 0: the root lies below u
        self.last_side = 0
        self.converged = False

    def propose(self, alpha: float, proposal: float) -> float | None:
        if abs(proposal / alpha - 1) < self.tol:
            self.converged = True
            return None
        u, g = math.log(alpha), math.log(proposal / alpha)
        side = 1 if g > 0 else -1
        if side > 0:
            self.below = (u, g)
        else:
            self.above = (u, g)
        if self.below is None or self.above is None:
            return proposal
        if side == self.last_side:  # Illinois: the same end moved twice, so halve the other end's weight
            if side > 0:
                self.above = (self.above[0], self.above[1] / 2)
            else:
                self.below = (self.below[0], self.below[1] / 2)
        self.last_side = side
        (u_low, g_low), (u_high, g_high) = self.below, self.above
        if abs(u_high - u_low) < math.log1p(self.tol):
            self.converged = True
            return None
        return math.exp(u_low - g_low * (u_high - u_low) / (g_high - g_low))

    def bracket(self) -> list[float] | None:
        """The α interval known to hold the fixed point, once there is one."""
        if self.below is None or self.above is None:
            return None
        return sorted(math.exp(end[0]) for end in (self.below, self.above))


class SampledLaplacePredictive(ParameterPosterior):
    """Predictive from the K zero-mean samples `samples` (K, P) around the network's MAP."""

    def __init__(self, lin: Linearisation, samples: Tensor, likelihood: Likelihood, pred_type: str,
                 link_approx: str) -> None:
        self.lin, self.samples, self.likelihood = lin, samples, likelihood
        self.pred_type, self.link_approx = pred_type, link_approx

    def parameter_moments(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Mean θ* and the samples' second moment per parameter (the samples have mean 0 by construction)."""
        return self.lin.unflatten(self.lin.theta.clone()), self.lin.unflatten((self.samples ** 2).mean(0))

    @torch.no_grad()
    def predict(self, x: Tensor, n_samples: int) -> Tensor:
        return torch.cat([self._predict(part) for part in x.split(TANGENT_ROWS)], dim=1)

    def _predict(self, x: Tensor) -> Tensor:
        if self.pred_type == "nn":
            return self.likelihood.log_predictive(self.lin.network_at(x, self.samples))
        outputs, offsets = self.lin.outputs_and_jvp(x, self.samples)
        if self.link_approx == "mc":
            return self.likelihood.log_predictive(outputs + offsets)
        variance = (offsets ** 2).mean(0)
        if isinstance(self.likelihood, Gaussian) and self.likelihood.noise_std is None:
            # the noise is an output too: no closed form, so the linearised samples are mixed
            return self.likelihood.log_predictive(outputs + offsets)
        if isinstance(self.likelihood, Gaussian):
            std = (variance + self.likelihood.noise_std ** 2).sqrt()
            return torch.stack([outputs, std.log()], dim=-1).squeeze(-2).unsqueeze(0)
        return self.likelihood.log_predictive(outputs / (1 + math.pi / 8 * variance).sqrt()).unsqueeze(0)


class _SampleSolver:
    """The K sample objectives (M + αI) z_k = α z0_k at any α, solved by `hparams.solver`. The anchors' random draws
    are made once and α only rescales them (θ0 ∝ α^-½, the data part ∝ α⁻¹), so EM re-targets the same draws."""

    def __init__(self, lin: Linearisation, likelihood: Likelihood, train: Split, hparams: Hparams,
                 context: FitContext) -> None:
        self.lin, self.likelihood, self.train, self.hparams = lin, likelihood, train, hparams
        self.device = context.device
        self.generator = torch.Generator(device=self.device).manual_seed(context.seed)
        self.cpu_generator = torch.Generator().manual_seed(context.seed)
        self.prior_part, self.data_part = self._draw_anchor_parts()
        self.diag_ggn = (self.data_part ** 2).mean(0)
        self.cg_iterations: list[int] = []  # per solve, with solver "cg"

    def _draw_anchor_parts(self) -> tuple[Tensor, Tensor]:
        """θ0's draws at α = 1, and in one pass over the data, the data part Σ_i J_iᵀ L_i e_ik of every anchor."""
        lin, samples = self.lin, self.hparams.posterior_samples
        prior_part = torch.randn((samples, len(lin.theta)), generator=self.generator, device=self.device,
                                 dtype=lin.theta.dtype) * lin.mask
        data_part = torch.zeros_like(prior_part)
        for x in self.train.x.split(self.hparams.batch_size):
            outputs, pull = lin.pullback(x)
            noise = torch.randn((samples, *outputs.shape), generator=self.generator, device=self.device,
                                dtype=outputs.dtype)
            data_part += pull(OutputCurvature(self.likelihood, outputs).sqrt_product(noise))
        return prior_part, data_part

    def anchors(self, alpha: float) -> Tensor:
        return self.prior_part / math.sqrt(alpha) + self.data_part / alpha

    def jacobi_start(self, alpha: float) -> Tensor:
        return self.anchors(alpha) * alpha / (self.diag_ggn + alpha)

    def preconditioner(self, alpha: float) -> _Preconditioner:
        return _Preconditioner.build(self.lin, self.likelihood, self.train.x[:self.hparams.batch_size], self.diag_ggn,
                                     alpha, len(self.train), self.hparams.lr_scale, self.generator)

    def solve(self, alpha: float) -> tuple[Tensor, float]:
        """The K samples at α from the Jacobi start, and their relative residual."""
        if self.hparams.solver == "cg":
            samples, residual, iterations = _solve_samples_cg(self.lin, self.likelihood, self.train,
                                                              self.jacobi_start(alpha), self.anchors(alpha), alpha,
                                                              self.hparams, self.diag_ggn)
            self.cg_iterations.append(iterations)
            return samples, residual
        return _solve_samples(self.lin, self.likelihood, self.train, self.jacobi_start(alpha), self.anchors(alpha),
                              alpha, self.hparams, self.preconditioner(alpha), self.cpu_generator)


@dataclass
class _EmResult:
    """Where EM left α and the samples, and its path: the αs tried, MacKay's proposals, the linear fits."""

    alpha: float
    samples: Tensor
    residual: float
    history: list[float]
    proposals: list[float]
    linear_fits: list[dict[str, float]]
    search: MacKaySearch


def _expectation_maximisation(lin: Linearisation, likelihood: Likelihood, train: Split, hparams: Hparams,
                              solver: _SampleSolver) -> _EmResult:
    """The samples at `prior_precision`, then up to `em_steps` rounds of: fit w_lin, MacKay's proposal for α, the
    search's next α, the samples re-solved at it."""
    alpha = hparams.prior_precision
    samples, residual = solver.solve(alpha)
    weights, history, proposals, linear_fits = lin.theta * lin.mask, [alpha], [], []
    search = MacKaySearch(hparams.em_tol)
    for _ in range(hparams.em_steps):
        linear = _fit_linear_map(lin, likelihood, train, weights, alpha, hparams, solver.preconditioner(alpha))
        weights = linear.weights
        linear_fits.append({"iterations": linear.iterations, "gradient_ratio": linear.gradient_ratio})
        gamma = _effective_dimension(lin, likelihood, train, samples, alpha, hparams.mackay, hparams.batch_size)
        proposals.append(gamma / (weights ** 2).sum().item())
        following = search.propose(alpha, proposals[-1])
        if following is None:
            break
        alpha = following
        history.append(alpha)
        samples, residual = solver.solve(alpha)
    return _EmResult(alpha, samples, residual, history, proposals, linear_fits, search)


def _fit_info(loop: LoopResult, seconds: float, em: _EmResult, lin: Linearisation, hparams: Hparams,
              cg_iterations: list[int]) -> FitInfo:
    """The run's record: the MAP phase's and the Laplace part's seconds, EM's path, and warnings for samples or an
    α that did not converge."""
    converged = hparams.em_steps == 0 or em.search.converged
    info = FitInfo(steps=loop.steps, epochs=loop.epochs, seconds=loop.seconds + seconds,
                   extra={"map_seconds": loop.seconds, "laplace_seconds": seconds, "prior_precision": em.alpha,
                          "prior_precision_history": em.history, "mackay_proposals": em.proposals,
                          "em_converged": converged, "em_bracket": em.search.bracket(),
                          "linear_fits": em.linear_fits, "n_posterior_params": lin.n_params,
                          "sample_residual": em.residual,
                          **({"sample_cg_iterations": cg_iterations} if cg_iterations else {})})
    warnings = []
    if em.residual > hparams.sample_tol:
        stopped = (f"conjugate gradients stopped at sample_max_iter={hparams.sample_max_iter}" if hparams.solver == "cg"
                   else f"SGD stopped after sample_epochs={hparams.sample_epochs}")
        warnings.append(f"sampled-laplace: {stopped} with the samples' relative residual {em.residual:.3g} > "
                        f"sample_tol {hparams.sample_tol:g}: they are not yet posterior samples")
    if not converged:
        warnings.append(f"sampled-laplace: EM did not converge in em_steps={hparams.em_steps} (last MacKay "
                        f"proposal {em.proposals[-1]:.4g} for α = {em.alpha:.4g}, em_tol {hparams.em_tol:g})")
    if warnings:
        info.extra["warnings"] = warnings
    return info


def fit(task: TaskSpec, model: nn.Module, data: DataBundle, budget: Budget, context: FitContext,
        hparams: Hparams = Hparams()) -> tuple[SampledLaplacePredictive, FitInfo]:
    likelihood = get_likelihood(task.likelihood, task.likelihood_options)
    OutputCurvature.check(likelihood)  # before training, not after
    fixed = hparams.prior_precision if hparams.em_steps == 0 else None
    loop = train_map_phase(model, likelihood, data, hparams, budget, context, "sampled-laplace", fixed)
    start = time.perf_counter()
    train = Split(data.train.x.to(context.device), data.train.y.to(context.device))
    lin = Linearisation(model)
    solver = _SampleSolver(lin, likelihood, train, hparams, context)
    em = _expectation_maximisation(lin, likelihood, train, hparams, solver)
    info = _fit_info(loop, time.perf_counter() - start, em, lin, hparams, solver.cg_iterations)
    return SampledLaplacePredictive(lin, em.samples, likelihood, hparams.pred_type, hparams.link_approx), info


SPEC = MethodSpec("sampled-laplace", Hparams, fit, post_hoc=True,
                  posterior_settings=precision_prior_settings("sampled-laplace", em_steps=0),
                  search_space=(Dimension("prior_precision", "log-uniform", 1e-2, 1e3),
                                Dimension("mackay", "categorical", choices=MACKAY_ESTIMATES),
                                Dimension("link_approx", "categorical", choices=LINK_APPROXIMATIONS)))
