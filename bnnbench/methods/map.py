"""`map`: the maximum a posteriori point estimate, trained by the shared loop.

The prior is Gaussian through AdamW's weight decay; the predictive is the network at the estimate,
a single "sample" (S = 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from bnnbench.errors import UsageError
from bnnbench.likelihoods import Likelihood, get_likelihood
from bnnbench.train import LoopResult, TrainConfig, autocast, evaluating, loop_config, train_loop
from bnnbench.types import Budget, DataBundle, Dimension, FitContext, FitInfo, MethodSpec, ParameterPosterior, TaskSpec

__all__ = ["SPEC", "Hparams", "PointPredictive", "fit", "gaussian_log_prior", "map_objective", "network_log_predictive",
           "precision_prior_settings", "train_map"]


@dataclass(frozen=True)
class Hparams(TrainConfig):
    """MAP has exactly the shared training settings (see `TrainConfig`)."""


class PointPredictive(ParameterPosterior):
    """The network at one weight setting; returns (1, B, C) log-probabilities whatever `n_samples` is."""

    def __init__(self, model: nn.Module, likelihood: Likelihood) -> None:
        self.model = model.eval()
        self.likelihood = likelihood

    @torch.no_grad()
    def predict(self, x: Tensor, n_samples: int) -> Tensor:
        with autocast(x.device):
            outputs = self.model(x)
        return self.likelihood.log_predictive(outputs).unsqueeze(0)

    def parameter_moments(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """A point mass: the weights, with zero variance."""
        means = {name: value.detach() for name, value in self.model.named_parameters()}
        return means, {name: torch.zeros_like(value) for name, value in means.items()}


def gaussian_log_prior(precision: float) -> Callable[[dict[str, Tensor]], Tensor]:
    """log N(θ; 0, I/precision) over all given parameters, up to a constant (a stated prior for `train_map`)."""
    def log_prior(params: dict[str, Tensor]) -> Tensor:
        return -0.5 * precision * sum(value.square().sum() for value in params.values())

    log_prior.store_key = f"gaussian precision {precision!r}"  # what the MAP store's key says of this prior
    return log_prior


def map_objective(task: TaskSpec, config: TrainConfig) -> dict[str, Any]:
    """`train_map`'s config, log_prior and temperature for `task`. A task's [posterior] table replaces AdamW's
    decoupled weight decay (whose fixed point is not the mode of any stated prior) by its Gaussian prior as an
    explicit loss term, and sets its temperature, so the optimum is that posterior's mode."""
    if not task.posterior:
        return {"config": config}
    return {"config": dataclasses.replace(config, weight_decay=0.0),
            "log_prior": gaussian_log_prior(task.posterior["prior_std"] ** -2),
            "temperature": task.posterior["temperature"]}


def precision_prior_settings(method: str, **fixed: Any) -> Callable[[dict[str, float]], dict[str, Any]]:
    """`MethodSpec.posterior_settings` for a method whose prior is N(0, 1/prior_precision) at likelihood temperature
    1: `prior_precision` = 1/prior_std², plus `fixed` (what turns its own prior tuning off)."""
    def settings(posterior: dict[str, float]) -> dict[str, Any]:
        if posterior["temperature"] != 1.0:
            raise UsageError(f"method '{method}' has no likelihood temperature; the task's [posterior] table sets "
                             f"temperature = {posterior['temperature']}")
        return {"prior_precision": posterior["prior_std"] ** -2, **fixed}

    return settings


def network_log_predictive(model: nn.Module, likelihood: Likelihood, x: Tensor,
                           params: dict[str, Tensor] | None = None) -> Tensor:
    """The (1, B, ...) log predictive of `model` (at `params` when given) in eval mode, the model back in train
    mode after: what a tuning trial's monitor scores of a point estimate being trained."""
    with evaluating(model), torch.no_grad(), autocast(x.device):
        outputs = model(x) if params is None else functional_call(model, params, (x,))
    return likelihood.log_predictive(outputs).unsqueeze(0)


def train_map(model: nn.Module, likelihood: Likelihood, data: DataBundle, config: TrainConfig, budget: Budget,
              context: FitContext, description: str = "map",
              log_prior: Callable[[dict[str, Tensor]], Tensor] | None = None,
              temperature: float = 1.0, reusable: bool = False,
              monitor_predictive: Callable[[Tensor], Tensor] | None = None, **loop_options) -> LoopResult:
    """Train `model` in place to the MAP estimate on `data.train` (also the warm-up of other methods).

    Without `log_prior` the prior is AdamW's weight decay; with it (a method's own prior), the loss is
    −(1/T) mean log p(y | x, θ) − log p(θ) / N, the negative log posterior per data point. `loop_options` go
    to `train_loop` (e.g. SWAG's snapshot hook and SGD).

    `reusable`: a MAP that other runs start from too (Laplace's, SWAG's warm start, a VI warm-up): with a MAP
    store in `context` (`bnnbench.map_store`), a training the store holds is loaded instead of run, and one it
    lacks is stored. A loop with hooks (`loop_options`), a time limit or a prior that does not name itself is always
    run. With a monitor in `context` (a tuning trial), each epoch's network (or `monitor_predictive`, a method's
    own predictive of what it trains) is scored on the validation split, and reported to the trial unless the MAP
    is `reusable` (a shared phase, `bnnbench.pruning`)."""
    model.to(context.device).train()
    n_data = len(data.train)

    def network_predictive(x: Tensor) -> Tensor:  # the network as it stands (dropout off), for the monitor
        return network_log_predictive(model, likelihood, x)

    monitored = monitor_predictive or network_predictive
    store, key = context.map_store, None
    prior = "weight decay" if log_prior is None else getattr(log_prior, "store_key", None)
    if reusable and store is not None and not loop_options and budget.max_seconds is None and prior is not None:
        key = store.key(model, data.train, loop_config(config), budget, prior, temperature, context.seed,
                        context.device)
        stored = store.load(key, model, context.device)
        if stored is not None:
            loop = stored["loop"]
            if context.monitor is not None:
                context.monitor.skip(loop["epochs"])
            return LoopResult(loop["steps"], loop["epochs"], 0.0, loop["epoch_losses"], loop["epoch_seconds"],
                              loop["epoch_diagnostics"])

    def loss_fn(x: Tensor, y: Tensor) -> Tensor:
        loss = -likelihood.log_likelihood(model(x), y).mean() / temperature
        if log_prior is not None:
            loss = loss - log_prior(dict(model.named_parameters())) / n_data
        return loss

    loop = train_loop(model.parameters(), loss_fn, data.train, config, budget, context, description=description,
                      predictive=monitored, report_to_trial=not reusable, **loop_options)
    if key is not None:
        store.save(key, model, context.device, {"description": description, "seconds": loop.seconds,
                                                "loop": dataclasses.asdict(loop)})
    return loop


def fit(task: TaskSpec, model: nn.Module, data: DataBundle, budget: Budget, context: FitContext,
        hparams: Hparams = Hparams()) -> tuple[PointPredictive, FitInfo]:
    """Train `model` to the MAP estimate on `data.train`."""
    likelihood = get_likelihood(task.likelihood, task.likelihood_options)
    loop = train_map(model, likelihood, data, budget=budget, context=context, **map_objective(task, hparams))
    info = FitInfo(steps=loop.steps, epochs=loop.epochs, seconds=loop.seconds,
                   extra={"epoch_losses": loop.epoch_losses})
    return PointPredictive(model, likelihood), info


# What `bnnbench tune` searches for the methods that train the network themselves (map, ensemble, mc-dropout).
LR = Dimension("lr", "log-uniform", 1e-4, 1e-2)
WEIGHT_DECAY = Dimension("weight_decay", "log-uniform", 1e-6, 1e-2)

SPEC = MethodSpec("map", Hparams, fit, search_space=(LR, WEIGHT_DECAY))
