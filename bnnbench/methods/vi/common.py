"""What score-vi and elbo-vi share on a network: hyper-parameters, MAP warm-up, the mini-batch
log-likelihood through `torch.func.functional_call`, the fitting loop and the sampling predictive.

Defaults (see ../shared/methods/score_vi.md): prior N(0, 1) (`prior_std = 1`), temperature 1, Adam on
(μ, ω) with a cosine-decayed learning rate (the spec's prototype needed the decay to converge), σ
initialised small at 1e-3 around the warm-up weights. The warm-up takes `warmup_fraction` of the budget
with the task's MAP settings, so a VI run costs the same number of epochs as a MAP run.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from bnnbench.errors import UsageError
from bnnbench.likelihoods import Likelihood, get_likelihood
from bnnbench.methods.map import train_map
from bnnbench.methods.stochastic import MAX_ROWS
from bnnbench.methods.vi.family import (
    FAMILIES,
    DiagonalGaussian,
    FullGaussian,
    GaussianFamily,
    Params,
    family_numbers,
    make_family,
)
from bnnbench.methods.vi.objectives import LogLikelihood
from bnnbench.params import StackedWeights, batched_passes
from bnnbench.train import MONITOR_SAMPLES, TrainConfig, autocast, evaluating, loop_config, split_budget, train_loop
from bnnbench.types import Budget, DataBundle, Dimension, FitContext, FitInfo, ParameterPosterior, TaskSpec

__all__ = ["VI_SEARCH_SPACE", "GaussianPosteriorPredictive", "MemoryEstimate", "VIHparams", "check_vi_memory",
           "device_memory_bytes", "fit_variational", "memory_check", "memory_refusal", "network_log_likelihood",
           "select_parameters", "vi_memory_estimate", "vi_state_bytes", "warm_up"]

PRIOR_CENTRES = ("zero", "warmup")
# A dense P × P covariance (family = "full", GSM, BaM) beyond this many weights: 128 MiB per float64 matrix and
# O(P³) work per step, which the methods' per-step solves make the cost of a fit.
MAX_FULL_DIM = 4096

# What `bnnbench tune` searches for both VI methods (each adds its own); prior_std and prior_centre leave the space on
# fidelity tasks. init_std and prior_centre are in it because they decide how far q leaves its start: on digits-mlp
# at the defaults (init_std 1e-3, prior centred at zero) score-vi's mean σ ended at 0.0015 and its test NLL at 0.262,
# against 0.172 with init_std 1e-2 and the prior centred at the warm-up weights (issue 32). vi_lr reaches 1e-1:
# elbo-vi's best hand setting on digits-mlp, 3e-2, lay outside a range ending at 1e-2 (validation NLL on seed 1000
# 0.179, against 0.189 for the best of a study in that range).
VI_SEARCH_SPACE = (Dimension("vi_lr", "log-uniform", 1e-4, 1e-1), Dimension("prior_std", "log-uniform", 0.1, 10.0),
                   Dimension("init_std", "log-uniform", 1e-4, 1e-1),
                   Dimension("prior_centre", "categorical", choices=PRIOR_CENTRES))



@dataclass(frozen=True)
class VIHparams(TrainConfig):
    """The shared training settings (`TrainConfig`) drive the MAP warm-up; these drive the VI phase.

    variational_params: comma-separated glob patterns over parameter names (`*`: all; `head.*`: the
        ViT head; `last-layer`: the network's output layer); the rest stay at the warm-up weights.
    family: q's covariance, "diag" (mean-field), "lowrank" (diagonal plus `rank` directions) or "full"
        (Cholesky; at most `MAX_FULL_DIM` variational weights).
    """

    warmup_fraction: float = 0.5
    vi_lr: float = 1e-3
    init_std: float = 1e-3
    prior_std: float = 1.0
    prior_centre: str = "zero"  # or "warmup": the prior's mean is the warm-up weights
    temperature: float = 1.0  # likelihood tempering, log p̃ = log p(θ) + log p(D | θ) / T
    variational_params: str = "*"
    train_samples: int = 1  # S, samples from q per mini-batch in the training objective
    antithetic: bool = False  # draw samples in pairs μ ± σε (variance reduction; needs an even train_samples)
    family: str = "diag"
    rank: int = 4  # R of family = "lowrank"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.family not in FAMILIES:
            raise UsageError(f"unknown family '{self.family}'; valid choices: {', '.join(FAMILIES)}")
        if self.rank < 1:
            raise UsageError(f"rank must be >= 1, got {self.rank}")
        if self.prior_centre not in PRIOR_CENTRES:
            raise UsageError(f"unknown prior_centre '{self.prior_centre}'; valid choices: {', '.join(PRIOR_CENTRES)}")
        if not 0 <= self.warmup_fraction < 1:
            raise UsageError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if min(self.vi_lr, self.init_std, self.prior_std, self.temperature) <= 0 or self.train_samples < 1:
            raise UsageError("vi_lr, init_std, prior_std and temperature must be positive and train_samples >= 1")
        if self.antithetic and self.train_samples % 2:
            raise UsageError(f"antithetic sampling needs an even train_samples, got {self.train_samples}")


def vi_posterior_settings(posterior: dict[str, float]) -> dict[str, Any]:
    """`MethodSpec.posterior_settings` of both VI methods: the prior N(0, prior_std² I) centred at zero, tempered."""
    return {"prior_std": posterior["prior_std"], "temperature": posterior["temperature"], "prior_centre": "zero"}


def select_parameters(model: nn.Module, patterns: str) -> tuple[Params, Params]:
    """(variational, fixed) parameters of `model` by glob patterns over their names; the pattern `last-layer` stands
    for the network's output layer (`models.last_layer_name`), whatever the architecture calls it."""
    from bnnbench.models import last_layer_name

    globs = [pattern.strip() for pattern in patterns.split(",") if pattern.strip()]
    globs = [f"{last_layer_name(model)}.*" if pattern == "last-layer" else pattern for pattern in globs]
    variational, fixed = {}, {}
    for name, value in model.named_parameters():
        (variational if any(fnmatch.fnmatchcase(name, g) for g in globs) else fixed)[name] = value.detach()
    if not variational:
        names = [name for name, _ in model.named_parameters()]
        raise UsageError(f"variational_params '{patterns}' matches no parameter; names are e.g. "
                         f"{', '.join(names[:6])}{', ...' if len(names) > 6 else ''}")
    return variational, fixed


def network_log_likelihood(model: nn.Module, likelihood: Likelihood, fixed: Params, n_data: int,
                           temperature: float) -> LogLikelihood:
    """θ ↦ (N / (b T)) Σ_{i∈B} log p(y_i | x_i, θ): unbiased for the tempered full-data log-likelihood."""
    def log_likelihood(theta: Params, x: Tensor, y: Tensor) -> Tensor:
        outputs = functional_call(model, {**fixed, **theta}, (x,))
        return likelihood.log_likelihood(outputs, y).sum() * (n_data / (len(y) * temperature))

    return log_likelihood


class GaussianPosteriorPredictive(ParameterPosterior):
    """Draws θ ~ q and runs the network with them (`n_samples = 0` uses the mean), as `StackedWeights`: on
    CUDA the draws run stacked in one vmapped `functional_call`, at most `MAX_ROWS` rows (draws x batch) a pass,
    a few wide passes instead of S narrow ones; on a CPU, where that was measured slower, and where vmap cannot
    run the network (the first batch decides), a loop over the same draws (`params.batched_passes`)."""

    def __init__(self, model: nn.Module, posterior: GaussianFamily, fixed: Params, likelihood: Likelihood) -> None:
        self.model, self.posterior, self.fixed, self.likelihood = model.eval(), posterior, fixed, likelihood
        self.stack = StackedWeights(model, {}, {})
        self.checked = False

    @torch.no_grad()
    def predict(self, x: Tensor, n_samples: int) -> Tensor:
        draws = self.posterior.draws(n_samples) if n_samples else self.posterior.mean.unsqueeze(0)
        per_pass = max(1, MAX_ROWS // max(len(x), 1))
        return torch.cat([self.outputs(x, rows) for rows in draws.split(per_pass)])

    def outputs(self, x: Tensor, draws: Tensor) -> Tensor:
        """The likelihood's log predictive (K, B, ...) of the network at each row θ_k of `draws` (K, P)."""
        k = len(draws)
        self.stack.params = {name: value.expand(k, *value.shape) for name, value in self.fixed.items()}
        self.stack.params |= self.posterior.named_rows(draws)
        self.stack.buffers = {name: value.expand(k, *value.shape) for name, value in self.model.named_buffers()}
        with autocast(x.device):
            if not self.checked and batched_passes(x.device):  # the loop needs no check
                self.checked = True
                self.stack.vmap_blocker(x[:2], training=False)
            return self.likelihood.log_predictive(self.stack.outputs_shared(x))

    def parameter_moments(self) -> tuple[Params, Params]:
        """Mean and variance of every model parameter (variance 0 for those kept fixed), in model order."""
        means, variances = self.posterior.named(self.posterior.mean), self.posterior.named(self.posterior.variance())
        moments: tuple[Params, Params] = ({}, {})
        for name, _ in self.model.named_parameters():
            if name in means:
                moments[0][name], moments[1][name] = means[name], variances[name]
            else:
                moments[0][name], moments[1][name] = self.fixed[name], torch.zeros_like(self.fixed[name])
        return moments


def warm_up(model: nn.Module, likelihood: Likelihood, data: DataBundle, hparams: VIHparams, budget: Budget,
             context: FitContext, name: str):
    """MAP before VI, in place. With the prior centred at zero: MAP under that prior over the variational
    parameters (for a Gaussian posterior this is its mean, so VI starts there) and no weight decay; with
    the prior centred at the warm-up weights there is no prior yet, so AdamW's decay stands in."""
    if hparams.prior_centre == "warmup":
        return train_map(model, likelihood, data, hparams, budget, context, f"{name} warm-up", reusable=True)
    names = list(select_parameters(model, hparams.variational_params)[0])

    def log_prior(params: Params) -> Tensor:  # up to a constant
        return -0.5 * sum((params[name] ** 2).sum() for name in names) / hparams.prior_std**2

    log_prior.store_key = f"gaussian std {hparams.prior_std!r} over {','.join(names)}"  # for the MAP store's key
    return train_map(model, likelihood, data, dataclasses.replace(hparams, weight_decay=0.0), budget, context,
                     f"{name} warm-up", log_prior, hparams.temperature, reusable=True)


_FLOAT32_BYTES = 4


def vi_state_bytes(n_variational: int, n_fixed: int, train_samples: int, score_matching: bool,
                   control_variate: bool = False, family: str = "diag", rank: int = 4) -> dict[str, int]:
    """What a Gaussian VI fit holds in float32, by term, for P variational and F fixed weights and a family of Q
    numbers (`family_numbers`: 2P diagonal, (2 + R)P low-rank, 2P + P² full): the network (P + F), q (Q), its
    gradients (Q), Adam's two moments (2Q), the prior's mean and precision (2P), and per mini-batch the S draws θ_s
    (SP) with their gradients (elbo-vi) or target scores ĝ_s (score-vi); score-vi adds its anchor q_t (Q, and its
    variance: P) and, with the control variate, its curvature average and lagged terms (2P). Activations are not
    counted: they scale with the batch, not with P, and are small beside these terms for a pretrained backbone
    fine-tuned at batch 16."""
    p = n_variational
    numbers = family_numbers(family, p, rank)
    terms = {"network": p + n_fixed, "q": numbers, "q gradients": numbers, "Adam moments": 2 * numbers,
             "prior": 2 * p, "draws and their " + ("scores" if score_matching else "gradients"): 2 * train_samples * p}
    if score_matching:
        terms["anchor q_t"] = numbers + p
        if control_variate:
            terms["control variate"] = 2 * p
    return {name: count * _FLOAT32_BYTES for name, count in terms.items()}


def device_memory_bytes(device: torch.device) -> int:
    """The memory a fit on `device` can hold at most: the GPU's, or on a CPU the machine's physical memory."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class MemoryEstimate:
    """A VI fit's memory estimate: the bytes by term (`vi_state_bytes`), the weights q covers and, for the refusal,
    the network's last layer with the estimate of q over it alone."""

    terms: dict[str, int]
    family: str
    n_variational: int
    last_layer: str
    last_layer_weights: int
    last_layer_bytes: int

    @property
    def total(self) -> int:
        return sum(self.terms.values())


def vi_memory_estimate(model: nn.Module, hparams: VIHparams, name: str) -> MemoryEstimate:
    """The memory of `name`'s fit (score-vi or elbo-vi) on `model` with `hparams`, and of the variant that covers the
    last layer alone. Counts come from the parameters' shapes: a network built on the meta device will do."""
    from bnnbench.models import last_layer_name

    variational, fixed = select_parameters(model, hparams.variational_params)
    score_matching = name == "score-vi"
    control_variate = bool(getattr(hparams, "control_variate", False))

    def estimate(n_variational: int, n_fixed: int) -> dict[str, int]:
        return vi_state_bytes(n_variational, n_fixed, hparams.train_samples, score_matching, control_variate,
                              hparams.family, hparams.rank)

    n_variational = sum(value.numel() for value in variational.values())
    n_all = n_variational + sum(value.numel() for value in fixed.values())
    head = last_layer_name(model)
    n_head = sum(value.numel() for key, value in model.named_parameters() if key.startswith(f"{head}."))
    return MemoryEstimate(estimate(n_variational, n_all - n_variational), _family_words(hparams), n_variational,
                          head, n_head,
                          sum(estimate(n_head, n_all - n_head).values()))


def memory_refusal(estimate: MemoryEstimate, name: str, available: int, device_type: str) -> str | None:
    """The one-line refusal of a fit whose estimate is over `available` bytes, naming the variant that fits (q over
    the last layer alone); None when it fits."""
    if estimate.total <= available:
        return None
    listed = " + ".join(f"{term} {value / 2**30:.3g}" for term, value in estimate.terms.items())
    return (f"{name} with {estimate.family} over {estimate.n_variational:,} weights needs about "
            f"{estimate.total / 2**30:.3g} GiB ({listed} GiB), over the {available / 2**30:.3g} GiB of {device_type}; "
            f"use variational_params = \"{estimate.last_layer}.*\" (the last layer's {estimate.last_layer_weights:,} "
            f"weights: about {estimate.last_layer_bytes / 2**30:.3g} GiB)")


def _family_words(hparams: VIHparams) -> str:
    return {"diag": "a diagonal Gaussian", "lowrank": f"a rank-{hparams.rank} plus diagonal Gaussian",
            "full": "a full-covariance Gaussian"}[hparams.family]


def check_vi_memory(model: nn.Module, hparams: VIHparams, name: str, device: torch.device) -> dict[str, int]:
    """The VI fit's memory estimate by term; UsageError (`memory_refusal`) when it is over the device's memory
    (`device_memory_bytes`), or when family = "full" covers more than `MAX_FULL_DIM` weights."""
    estimate = vi_memory_estimate(model, hparams, name)
    if hparams.family == "full":
        FullGaussian.check_size(estimate.n_variational, MAX_FULL_DIM, f"{name} with family = \"full\"")
    refusal = memory_refusal(estimate, name, device_memory_bytes(device), device.type)
    if refusal is not None:
        raise UsageError(refusal)
    return estimate.terms


def memory_check(name: str) -> Callable[[nn.Module, VIHparams, torch.device], None]:
    """`MethodSpec.check_memory` of VI method `name`: `check_vi_memory` at the door of a run."""
    def check(network: nn.Module, hparams: VIHparams, device: torch.device) -> None:
        check_vi_memory(network, hparams, name, device)

    return check


MakeObjective = Callable[[GaussianFamily, DiagonalGaussian, LogLikelihood, int], Any]


def fit_variational(task: TaskSpec, model: nn.Module, data: DataBundle, budget: Budget, context: FitContext,
                    hparams: VIHparams, make_objective: MakeObjective, name: str,
                    inner_steps: int = 1) -> tuple[GaussianPosteriorPredictive, FitInfo]:
    """MAP warm-up, then fit q with `make_objective(q, prior, log_likelihood, vi_steps)` in the shared loop."""
    likelihood = get_likelihood(task.likelihood, task.likelihood_options)
    # refused at the door when over the device's memory (`MethodSpec.check_memory`); run.json records the estimate
    memory = vi_memory_estimate(model, hparams, name).terms
    warm_budget, vi_budget = split_budget(budget, hparams.warmup_fraction)
    model = model.to(context.device)
    warm = warm_up(model, likelihood, data, hparams, warm_budget, context, name) if warm_budget else None
    variational, fixed = select_parameters(model, hparams.variational_params)
    q = make_family(hparams.family, variational, hparams.init_std, hparams.rank)
    centre = (variational if hparams.prior_centre == "warmup"
              else {name: torch.zeros_like(value) for name, value in variational.items()})
    prior = DiagonalGaussian.isotropic(centre, hparams.prior_std)
    model.train()
    log_likelihood = network_log_likelihood(model, likelihood, fixed, len(data.train), hparams.temperature)
    vi_config = loop_config(hparams, lr=hparams.vi_lr, weight_decay=0.0)
    batches = math.ceil(len(data.train) / hparams.batch_size)
    vi_steps = min(s for s in (vi_budget.max_steps, vi_budget.max_epochs and vi_budget.max_epochs * batches) if s)
    objective = make_objective(q, prior, log_likelihood, vi_steps * inner_steps)
    closed_form = objective.closed_form

    def sampled_predictive(x: Tensor) -> Tensor:  # q as it stands, sampled as evaluated, for a trial's monitor
        with evaluating(model):
            return GaussianPosteriorPredictive(model, q.detached(), fixed, likelihood).predict(x, MONITOR_SAMPLES)

    loop = train_loop(q.parameters(), objective.loss_and_gradients if closed_form else objective.loss, data.train,
                      vi_config, vi_budget, context, name, on_batch=getattr(objective, "on_batch", None),
                      inner_steps=inner_steps, on_epoch=objective.epoch_diagnostics, closed_form=closed_form,
                      predictive=sampled_predictive)
    warm_seconds = warm.seconds if warm else 0.0
    extra = {
        "warmup_epochs": warm.epochs if warm else 0,
        "warmup_seconds": warm_seconds,
        "warmup_losses": warm.epoch_losses if warm else [],
        "n_variational": q.numel(),
        "epoch_losses": loop.epoch_losses,
        "epoch_seconds": [warm_seconds + s for s in loop.epoch_seconds],  # since the fit started
        "vi_seconds_per_epoch": loop.seconds / max(loop.epochs, 1),
        **{key: [d[key] for d in loop.epoch_diagnostics] for key in loop.epoch_diagnostics[0]},
        "mean_std": q.mean_std(),
        "memory_estimate_bytes": memory,
    }
    info = FitInfo(steps=(warm.steps if warm else 0) + loop.steps, seconds=warm_seconds + loop.seconds,
                   epochs=(warm.epochs if warm else 0) + loop.epochs, extra=extra)
    return GaussianPosteriorPredictive(model, q.detached(), fixed, likelihood), info
