"""`map`: the maximum a posteriori point estimate, trained by the shared loop.

The prior is Gaussian through AdamW's weight decay; the predictive is the network at the estimate,
a single "sample" (S = 1).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bnnbench.likelihoods import Likelihood, get_likelihood
from bnnbench.train import TrainConfig, autocast, train_loop
from bnnbench.types import Budget, DataBundle, FitContext, FitInfo, Method, TaskSpec

__all__ = ["Hparams", "PointPredictive", "build", "fit"]


@dataclass(frozen=True)
class Hparams(TrainConfig):
    """MAP has exactly the shared training settings (see `TrainConfig`)."""


def build(**hparams) -> Method:
    """Bind hyper-parameters; unknown names raise TypeError."""
    bound = Hparams(**hparams)
    return Method(name="map", hparams=bound, fit=functools.partial(fit, hparams=bound))


class PointPredictive:
    """The network at one weight setting; returns (1, B, C) log-probabilities whatever `n_samples` is."""

    def __init__(self, model: nn.Module, likelihood: Likelihood) -> None:
        self.model = model.eval()
        self.likelihood = likelihood

    @torch.no_grad()
    def predict(self, x: Tensor, n_samples: int) -> Tensor:
        with autocast(x.device):
            outputs = self.model(x)
        return self.likelihood.log_predictive(outputs).unsqueeze(0)


def fit(task: TaskSpec, model: nn.Module, data: DataBundle, budget: Budget, context: FitContext,
        hparams: Hparams = Hparams()) -> tuple[PointPredictive, FitInfo]:
    """Train `model` to the MAP estimate on `data.train`."""
    likelihood = get_likelihood(task.likelihood)
    model = model.to(context.device).train()

    def loss_fn(x: Tensor, y: Tensor) -> Tensor:
        return -likelihood.log_likelihood(model(x), y).mean()

    loop = train_loop(model.parameters(), loss_fn, data.train, hparams, budget, context, description="map")
    info = FitInfo(steps=loop.steps, epochs=loop.epochs, seconds=loop.seconds,
                   extra={"epoch_losses": loop.epoch_losses})
    return PointPredictive(model, likelihood), info
