"""`swag`: SWA-Gaussian (Maddox et al. 2019), diagonal plus low-rank covariance.

After a MAP warm-up (`warmup_fraction` of the budget, the shared AdamW loop), the same loop runs SGD with
momentum at a constant learning rate `swa_lr` and snapshots the weights `snapshots_per_epoch` times per
epoch (once, as in the paper, by default). From the snapshots θ_1..θ_n it keeps the running mean θ̄, the
running second moment and the last `rank` deviations D̂ = [θ_i − θ̄_i] (θ̄_i the mean after snapshot i),
and samples

    θ = θ̄ + √scale · (σ_diag ∘ z₁ + D̂ z₂ / √(K − 1)),   σ²_diag = max(E[θ²] − θ̄², 1e-30),

so that with `scale = 1/2` the covariance is ½(Σ_diag + Σ_low-rank), the paper's. Where the model has
BatchNorm, each sample's running statistics are recomputed on the training data (train-mode passes with a
cumulative average), as the paper does. The S samples are drawn once, at the first prediction, and reused
for every evaluation split (one posterior, scored everywhere). The SGD phase's weight decay is plain L2
(`swa_weight_decay`), or a Gaussian prior N(0, 1/prior_precision) when `prior_precision` > 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bnnbench.errors import UsageError
from bnnbench.likelihoods import Likelihood, get_likelihood
from bnnbench.methods.map import gaussian_log_prior, network_log_predictive, precision_prior_settings, train_map
from bnnbench.params import FlatParams, StackedWeights
from bnnbench.train import TrainConfig, autocast, loop_config, split_budget
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

__all__ = ["SPEC", "Hparams", "SwagMoments", "SwagPredictive", "fit"]


@dataclass(frozen=True)
class Hparams(TrainConfig):
    """The shared training settings drive the MAP warm-up; these drive SWAG's SGD phase and sampling.

    rank: K, the number of deviation columns kept (the paper's max_num_models).
    scale: the covariance scale of the samples (1/2: the paper's ½(Σ_diag + Σ_low-rank)).
    swa_weight_decay: the SGD phase's L2 coefficient. Not the task's `weight_decay`: that is AdamW's decoupled
        decay (a per-step shrink of lr · wd), and as SGD's coupled L2 the ViT's 0.05 shrinks the weights ~30x
        harder per step than AdamW did (SWA-mean validation NLL 0.44 against MAP's 0.28).
    prior_precision: > 0 puts a Gaussian prior N(0, 1/prior_precision) on every weight in both phases' loss
        instead of weight decay (tasks with a stated prior, e.g. sanity-blr).
    """

    warmup_fraction: float = 0.5
    swa_lr: float = 0.01
    momentum: float = 0.9
    swa_weight_decay: float = 1e-4
    rank: int = 20
    snapshots_per_epoch: float = 1.0
    scale: float = 0.5
    prior_precision: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.warmup_fraction < 1:
            raise UsageError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.rank < 2 or self.snapshots_per_epoch <= 0 or self.swa_lr <= 0 or self.scale < 0:
            raise UsageError("swag needs rank >= 2, snapshots_per_epoch > 0, swa_lr > 0 and scale >= 0")
        if not 0 <= self.momentum < 1 or self.prior_precision < 0 or self.swa_weight_decay < 0:
            raise UsageError("swag needs momentum in [0, 1), prior_precision >= 0 and swa_weight_decay >= 0")


class SwagMoments:
    """Running first and second moments of flat weight snapshots and the last `rank` deviations."""

    def __init__(self, size: int, rank: int, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        self.n = 0
        self.mean = torch.zeros(size, device=device, dtype=dtype)
        self.second = torch.zeros(size, device=device, dtype=dtype)
        self.deviations: list[Tensor] = []
        self.rank = rank

    def collect(self, theta: Tensor) -> None:
        theta = theta.detach()
        self.n += 1
        self.mean += (theta - self.mean) / self.n
        self.second += (theta**2 - self.second) / self.n
        self.deviations = [*self.deviations, theta - self.mean][-self.rank:]

    def diagonal_variance(self) -> Tensor:
        return (self.second - self.mean**2).clamp_min(1e-30)

    def sample(self, n_samples: int, scale: float) -> Tensor:
        """(S, P) draws from N(θ̄, scale · (Σ_diag + D̂D̂ᵀ/(K − 1))), from the global generator."""
        options = {"device": self.mean.device, "dtype": self.mean.dtype}
        draws = self.diagonal_variance().sqrt() * torch.randn(n_samples, len(self.mean), **options)
        if len(self.deviations) > 1:
            deviations = torch.stack(self.deviations)  # (K, P)
            z = torch.randn(n_samples, len(deviations), **options)
            draws += z @ deviations / math.sqrt(len(deviations) - 1)
        return self.mean + math.sqrt(scale) * draws

    def marginal_variance(self, scale: float) -> Tensor:
        """The diagonal of the sampling covariance."""
        low_rank = 0.0
        if len(self.deviations) > 1:
            low_rank = torch.stack(self.deviations).square().sum(0) / (len(self.deviations) - 1)
        return scale * (self.diagonal_variance() + low_rank)


def _batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def update_batchnorm(model: nn.Module, train: Split, batch_size: int) -> dict[str, Tensor]:
    """Recompute `model`'s BatchNorm running statistics at its current weights on the training data (train-mode
    passes, cumulative average) and return its buffers; the model is left in eval mode."""
    layers = _batchnorm_layers(model)
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
    model.train()
    device = next(model.parameters()).device
    seen = 0
    for begin in range(0, len(train), batch_size):
        x = train.x[begin:begin + batch_size].to(device)
        for layer in layers:  # a running average weighted by rows: every training row counts equally
            layer.momentum = len(x) / (seen + len(x))
        with autocast(device):
            model(x)
        seen += len(x)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    model.eval()
    return {name: value.clone() for name, value in model.named_buffers()}


class SwagPredictive(ParameterPosterior):
    """S weight samples from the SWAG posterior, drawn at the first prediction and reused; with BatchNorm,
    each sample has its own recomputed running statistics."""

    def __init__(self, model: nn.Module, moments: SwagMoments, scale: float, likelihood: Likelihood,
                 train: Split, batch_size: int) -> None:
        self.model, self.moments, self.scale, self.likelihood = model.eval(), moments, scale, likelihood
        self.layout = FlatParams(model)
        self.train, self.batch_size = train, batch_size
        self.stacked: StackedWeights | None = None

    def _draw(self, n_samples: int, x: Tensor) -> StackedWeights:
        samples = self.moments.sample(n_samples, self.scale)
        buffers = [dict(self.model.named_buffers())] * n_samples
        if _batchnorm_layers(self.model):
            current = self.layout.flatten(dict(self.model.named_parameters()))
            buffers = []
            for sample in samples:
                nn.utils.vector_to_parameters(sample, self.model.parameters())
                buffers.append(update_batchnorm(self.model, self.train, self.batch_size))
            nn.utils.vector_to_parameters(current, self.model.parameters())
        params = {name: torch.stack([self.layout.unflatten(sample)[name] for sample in samples])
                  for name in self.layout.names}
        stacked_buffers = {name: torch.stack([b[name] for b in buffers]) for name in buffers[0]}
        stacked = StackedWeights(self.model, params, stacked_buffers)
        stacked.vmap_blocker(x[:2], training=False)
        return stacked

    @torch.no_grad()
    def predict(self, x: Tensor, n_samples: int) -> Tensor:
        if self.stacked is None or len(self.stacked) != n_samples:
            self.stacked = self._draw(n_samples, x)
        with autocast(x.device):
            return self.likelihood.log_predictive(self.stacked.outputs_shared(x))

    def parameter_moments(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The SWA mean and the marginal variances of the sampling covariance."""
        return (self.layout.unflatten(self.moments.mean.clone()),
                self.layout.unflatten(self.moments.marginal_variance(self.scale)))


def fit(task: TaskSpec, model: nn.Module, data: DataBundle, budget: Budget, context: FitContext,
        hparams: Hparams = Hparams()) -> tuple[SwagPredictive, FitInfo]:
    """MAP warm-up, then constant-rate SGD with snapshots, then the SWAG posterior."""
    likelihood = get_likelihood(task.likelihood, task.likelihood_options)
    warm_budget, swag_budget = split_budget(budget, hparams.warmup_fraction)
    log_prior = gaussian_log_prior(hparams.prior_precision) if hparams.prior_precision > 0 else None
    weight_decay = 0.0 if log_prior else hparams.weight_decay
    warm_config = loop_config(hparams, weight_decay=weight_decay)
    steps, epochs, seconds = 0, 0, 0.0
    if warm_budget is not None:
        warm = train_map(model, likelihood, data, warm_config, warm_budget, context, "swag warm-up", log_prior,
                         reusable=True)
        steps, epochs, seconds = warm.steps, warm.epochs, warm.seconds

    layout = FlatParams(model)
    moments = SwagMoments(layout.size, hparams.rank, context.device, next(model.parameters()).dtype)
    interval = max(1, round(math.ceil(len(data.train) / hparams.batch_size) / hparams.snapshots_per_epoch))
    batches = 0

    def snapshot_every_interval(x: Tensor, y: Tensor) -> None:  # called before each step: weights after `batches`
        nonlocal batches
        if batches and batches % interval == 0:
            moments.collect(layout.flatten(dict(model.named_parameters())))
        batches += 1

    def sgd(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
        return torch.optim.SGD(groups, lr=config.lr, momentum=hparams.momentum, weight_decay=config.weight_decay)

    def swa_mean(x: Tensor) -> Tensor:  # the snapshots' running mean, for a tuning trial's monitor
        return network_log_predictive(model, likelihood, x, layout.unflatten(moments.mean) if moments.n else None)

    swa_config = loop_config(hparams, lr=hparams.swa_lr, schedule="constant",
                             weight_decay=0.0 if log_prior else hparams.swa_weight_decay)
    # a trial scores the SWA mean, which SWAG's predictive is centred on, not the SGD iterate: at the rates SWAG
    # needs the iterate bounces, and scoring it chose swa_lr 0.044 on digits-mlp where 0.1 did better (test NLL
    # 0.1662 against 0.1588)
    loop = train_map(model, likelihood, data, swa_config, swag_budget, context, "swag sgd", log_prior,
                     on_batch=snapshot_every_interval, make_optimizer=sgd, monitor_predictive=swa_mean)
    if batches % interval == 0:
        moments.collect(layout.flatten(dict(model.named_parameters())))
    if moments.n < 2:
        raise UsageError(f"swag collected {moments.n} snapshot(s) in {loop.epochs} SGD epoch(s); it needs at least "
                         "2: raise the budget, lower warmup_fraction or raise snapshots_per_epoch")
    model.eval()
    predictive = SwagPredictive(model, moments, hparams.scale, likelihood, data.train, hparams.batch_size)
    extra = {"n_snapshots": moments.n, "rank_used": len(moments.deviations), "swag_epochs": loop.epochs,
             "swag_seconds": loop.seconds, "epoch_losses": loop.epoch_losses}
    return predictive, FitInfo(steps=steps + loop.steps, epochs=epochs + loop.epochs, seconds=seconds + loop.seconds,
                               extra=extra)


SPEC = MethodSpec("swag", Hparams, fit,
                  posterior_settings=precision_prior_settings("swag"),
                  search_space=(Dimension("swa_lr", "log-uniform", 1e-3, 3.0),
                                Dimension("swa_weight_decay", "log-uniform", 1e-6, 1e-2),
                                Dimension("scale", "categorical", choices=(0.5, 1.0))))
