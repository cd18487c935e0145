"""`gsm` and `bam`: Gaussian score matching (Modi et al. 2023) and batch-and-match (Cai et al. 2024) over a
network's weights, the closed-form full-covariance updates of `batch_updates` driven by mini-batch scores.

Each mini-batch is one update: B draws z_b ~ q_t = N(μ_t, Σ_t) (`batch_samples`), their scores
ĝ_b = ∇_θ [log p(θ) + log_likelihood(θ, x, y)] on the mini-batch (B network passes, as score-vi's S), then
(μ_t, Σ_t) → (μ_{t+1}, Σ_{t+1}) in closed form. There is no optimiser: GSM has no step size at all, and BaM's is its
paper's schedule λ_t = B·D/(t+1) times `learning_rate_scale`. Both start from N(warm-up weights, init_std² I), after
the same MAP warm-up as score-vi and elbo-vi, so the three differ in how q is fitted. The papers derive both for
exact scores; a mini-batch score is unbiased but noisy, which GSM, with no step size to damp it, does not average
out (the convergence benchmark uses exact scores).

Where they apply: a dense P × P covariance and O(P³) per BaM update (O(B P²) per GSM update) limit them to
`MAX_FULL_DIM` variational weights; a larger selection is refused at the door in one line (use `variational_params`
to choose fewer, e.g. the last layer, or score-vi with family = "lowrank"). The state is kept in float64: Σ is
updated by sums of outer products whose rounding float32 would let accumulate into a non-positive-definite Σ.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bnnbench.errors import DivergenceError, UsageError
from bnnbench.likelihoods import get_likelihood
from bnnbench.methods.vi.batch_updates import bam_learning_rate, bam_update, gsm_update
from bnnbench.methods.vi.common import (
    MAX_FULL_DIM,
    PRIOR_CENTRES,
    GaussianPosteriorPredictive,
    network_log_likelihood,
    select_parameters,
    vi_posterior_settings,
    warm_up,
)
from bnnbench.methods.vi.family import DiagonalGaussian, FullGaussian, kl_divergence
from bnnbench.train import TrainConfig, planned_batches, split_budget
from bnnbench.types import Budget, DataBundle, Dimension, FitContext, FitInfo, MethodSpec, TaskSpec

__all__ = ["BAM_SPEC", "GSM_SPEC", "BamHparams", "GsmHparams", "fit_bam", "fit_gsm"]


@dataclass(frozen=True)
class GsmHparams(TrainConfig):
    """The shared training settings drive the MAP warm-up; these the updates (as VIHparams' of the same names)."""

    warmup_fraction: float = 0.5
    init_std: float = 1e-2
    prior_std: float = 1.0
    prior_centre: str = "zero"
    temperature: float = 1.0
    variational_params: str = "*"
    batch_samples: int = 8  # B: draws of q_t, and network passes, per update

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prior_centre not in PRIOR_CENTRES:
            raise UsageError(f"unknown prior_centre '{self.prior_centre}'; valid choices: {', '.join(PRIOR_CENTRES)}")
        if not 0 <= self.warmup_fraction < 1:
            raise UsageError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if min(self.init_std, self.prior_std, self.temperature) <= 0 or self.batch_samples < 1:
            raise UsageError("init_std, prior_std and temperature must be positive and batch_samples >= 1")


@dataclass(frozen=True)
class BamHparams(GsmHparams):
    learning_rate_scale: float = 1.0  # times the paper's λ_t = B·D/(t+1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.learning_rate_scale <= 0:
            raise UsageError(f"learning_rate_scale must be positive, got {self.learning_rate_scale}")


def _check_size(name: str):
    def check(network: nn.Module, hparams: GsmHparams, device: torch.device) -> None:
        variational, _ = select_parameters(network, hparams.variational_params)
        FullGaussian.check_size(sum(value.numel() for value in variational.values()), MAX_FULL_DIM, name)

    return check


def _fit(name: str, task: TaskSpec, model: nn.Module, data: DataBundle, budget: Budget, context: FitContext,
         hparams: GsmHparams) -> tuple[GaussianPosteriorPredictive, FitInfo]:
    likelihood = get_likelihood(task.likelihood, task.likelihood_options)
    model = model.to(context.device)
    variational, _ = select_parameters(model, hparams.variational_params)
    FullGaussian.check_size(sum(value.numel() for value in variational.values()), MAX_FULL_DIM, name)
    warm_budget, update_budget = split_budget(budget, hparams.warmup_fraction)
    warm = warm_up(model, likelihood, data, hparams, warm_budget, context, name) if warm_budget else None
    variational, fixed = select_parameters(model, hparams.variational_params)
    layout_q = DiagonalGaussian.isotropic(variational, hparams.init_std)  # layout and start, in float32
    centre = (variational if hparams.prior_centre == "warmup"
              else {key: torch.zeros_like(value) for key, value in variational.items()})
    prior = DiagonalGaussian.isotropic(centre, hparams.prior_std)
    model.train()
    log_likelihood = network_log_likelihood(model, likelihood, fixed, len(data.train), hparams.temperature)
    prior_precision = prior.variance().reciprocal()
    size = layout_q.numel()
    mean = layout_q.mean.double()
    covariance = torch.eye(size, dtype=torch.float64, device=mean.device) * hparams.init_std**2

    def scores(draws: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        rows, values = [], []
        for theta in draws.float():
            theta = theta.requires_grad_(True)
            value = log_likelihood(layout_q.named(theta), x, y)
            [grad] = torch.autograd.grad(value, [theta])
            rows.append(grad - (theta.detach() - prior.mean) * prior_precision)
            values.append(value.detach())
        return torch.stack(rows).double(), torch.stack(values)

    generator = torch.Generator().manual_seed(context.seed)
    x_all, y_all = data.train.x.to(context.device), data.train.y.to(context.device)
    total = planned_batches(len(y_all), hparams.batch_size, update_budget)
    deadline = time.perf_counter() + update_budget.max_seconds if update_budget.max_seconds else math.inf
    started, steps, epochs = time.perf_counter(), 0, 0
    neg_elbo, epoch_seconds = [], []
    warm_seconds = warm.seconds if warm else 0.0
    while steps < total and time.perf_counter() < deadline:
        order = torch.randperm(len(y_all), generator=generator).to(context.device)
        neg_log_likelihoods = []
        for begin in range(0, len(y_all), hparams.batch_size):
            if steps >= total or time.perf_counter() >= deadline:
                break
            rows = order[begin:begin + hparams.batch_size]
            try:
                chol = torch.linalg.cholesky(covariance)
            except RuntimeError as error:
                raise DivergenceError(f"{name}: the covariance lost positive definiteness at update {steps}; "
                                      "lower learning_rate_scale or use more batch_samples") from error
            draws = mean + torch.randn(hparams.batch_samples, size, dtype=torch.float64,
                                       device=mean.device) @ chol.T
            batch_scores, values = scores(draws, x_all[rows], y_all[rows])
            if not (torch.isfinite(batch_scores).all() and torch.isfinite(values).all()):
                raise DivergenceError(f"{name}: a score or log-likelihood is not finite at update {steps}")
            if name == "gsm":
                mean, covariance = gsm_update(mean, covariance, draws, batch_scores)
            else:
                rate = bam_learning_rate(steps, hparams.batch_samples, size, hparams.learning_rate_scale)
                try:
                    mean, covariance = bam_update(mean, covariance, draws, batch_scores, rate)
                except RuntimeError as error:  # the factorisations of a broken covariance
                    raise DivergenceError(f"{name}: the update failed at update {steps} ({error})") from error
            covariance = 0.5 * (covariance + covariance.T)
            neg_log_likelihoods.append(-values.mean())
            steps += 1
        if not neg_log_likelihoods:
            break
        epochs += 1
        if not (torch.isfinite(mean).all() and torch.isfinite(covariance).all()):
            raise DivergenceError(f"{name}: the Gaussian is not finite after epoch {epochs}; "
                                  "lower learning_rate_scale or use more batch_samples")
        q = FullGaussian.from_moments(layout_q.layout, mean, covariance)
        with torch.no_grad():
            kl = kl_divergence(q, DiagonalGaussian(prior.layout, prior.mean.double(), prior.log_std.double()))
        neg_elbo.append(torch.stack(neg_log_likelihoods).mean().item() + kl.item())
        epoch_seconds.append(warm_seconds + time.perf_counter() - started)
    seconds = time.perf_counter() - started
    try:
        posterior = FullGaussian.from_moments(layout_q.layout, mean.float(), covariance.float())
    except RuntimeError as error:
        raise DivergenceError(f"{name}: the fitted covariance is not positive definite") from error
    extra = {"warmup_epochs": warm.epochs if warm else 0, "warmup_seconds": warm_seconds,
             "n_variational": size, "updates": steps, "neg_elbo": neg_elbo, "epoch_seconds": epoch_seconds,
             "mean_std": posterior.mean_std()}
    info = FitInfo(steps=(warm.steps if warm else 0) + steps, epochs=(warm.epochs if warm else 0) + epochs,
                   seconds=warm_seconds + seconds, extra=extra)
    return GaussianPosteriorPredictive(model, posterior, fixed, likelihood), info


def fit_gsm(task: TaskSpec, model: nn.Module, data: DataBundle, budget: Budget, context: FitContext,
            hparams: GsmHparams = GsmHparams()) -> tuple[GaussianPosteriorPredictive, FitInfo]:
    return _fit("gsm", task, model, data, budget, context, hparams)


def fit_bam(task: TaskSpec, model: nn.Module, data: DataBundle, budget: Budget, context: FitContext,
            hparams: BamHparams = BamHparams()) -> tuple[GaussianPosteriorPredictive, FitInfo]:
    return _fit("bam", task, model, data, budget, context, hparams)


_SHARED_SPACE = (Dimension("prior_std", "log-uniform", 0.1, 10.0), Dimension("init_std", "log-uniform", 1e-4, 1e-1),
                 Dimension("batch_samples", "categorical", choices=(2, 8, 32)))
GSM_SPEC = MethodSpec("gsm", GsmHparams, fit_gsm, posterior_settings=vi_posterior_settings,
                      check_memory=_check_size("gsm"), search_space=_SHARED_SPACE)
BAM_SPEC = MethodSpec("bam", BamHparams, fit_bam, posterior_settings=vi_posterior_settings,
                      check_memory=_check_size("bam"),
                      search_space=(*_SHARED_SPACE, Dimension("learning_rate_scale", "log-uniform", 0.1, 10.0)))
