"""`temperature-scaling`: Guo et al., "On Calibration of Modern Neural Networks" (ICML 2017), as a bnnbench plugin.

The network is trained to the MAP estimate by bnnbench's shared loop, exactly as the built-in `map` trains it
(same seed, same weights); then one scalar T > 0 is fitted on the validation split by minimising the NLL of
softmax(logits / T). The predictive is that tempered softmax, a single "sample" (S = 1). T rescales every logit
alike, so the predicted classes, and the accuracy, are MAP's: only the confidence changes. Classification only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnbench.errors import UsageError
from bnnbench.likelihoods import Categorical, Likelihood, get_likelihood
from bnnbench.methods.map import PointPredictive, train_map
from bnnbench.train import TrainConfig, autocast
from bnnbench.types import Budget, DataBundle, FitContext, FitInfo, MethodSpec, Split, TaskSpec

__all__ = ["SPEC", "Hparams", "TemperedPredictive", "fit", "fit_temperature", "nll_at_temperature"]

LOGIT_BATCH = 1024  # validation examples per forward pass when collecting logits


@dataclass(frozen=True)
class Hparams(TrainConfig):
    """MAP's training settings (see `TrainConfig`), plus the cap on the temperature fit's L-BFGS iterations."""

    temperature_iterations: int = 100  # a 1-D smooth problem: L-BFGS stops at its tolerance in far fewer

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature_iterations < 1:
            raise UsageError(f"temperature_iterations must be at least 1, got {self.temperature_iterations}")


class TemperedPredictive(PointPredictive):
    """The MAP network with its logits divided by T: (1, B, C) log-probabilities log softmax(logits / T)."""

    def __init__(self, model: nn.Module, likelihood: Likelihood, temperature: float) -> None:
        super().__init__(model, likelihood)
        self.temperature = temperature

    @torch.no_grad()
    def predict(self, x: Tensor, n_samples: int) -> Tensor:
        with autocast(x.device):
            outputs = self.model(x)
        # divide in at least float32: bf16 logits (CUDA autocast) would round the tempered values
        outputs = outputs.to(torch.promote_types(outputs.dtype, torch.float32))
        return self.likelihood.log_predictive(outputs / self.temperature).unsqueeze(0)


def nll_at_temperature(logits: Tensor, labels: Tensor, temperature: float | Tensor) -> Tensor:
    """Mean negative log-likelihood of softmax(logits / T) at the labels."""
    return F.cross_entropy(logits / temperature, labels)


def fit_temperature(logits: Tensor, labels: Tensor, max_iterations: int = 100) -> float:
    """The T > 0 that minimises `nll_at_temperature(logits, labels, T)`, in float64.

    L-BFGS on log T: unconstrained, and the NLL has one minimum in it (the NLL is convex in 1/T, a log-sum-exp
    of functions linear in 1/T minus a linear one, and log T is a monotone reparametrisation of 1/T).
    """
    logits, labels = logits.detach().double(), labels.detach()
    log_temperature = torch.zeros((), dtype=torch.float64, device=logits.device, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_temperature], lr=1.0, max_iter=max_iterations, tolerance_grad=1e-12,
                                  tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = nll_at_temperature(logits, labels, log_temperature.exp())
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(log_temperature.detach().exp())


@torch.no_grad()
def _logits(model: nn.Module, split: Split, device: torch.device) -> Tensor:
    """The network's outputs on a whole split, as the predictive computes them (eval mode, autocast)."""
    model.eval()
    chunks = []
    for start in range(0, len(split), LOGIT_BATCH):
        with autocast(device):
            outputs = model(split.x[start:start + LOGIT_BATCH].to(device))
        chunks.append(outputs.to(torch.promote_types(outputs.dtype, torch.float32)))
    return torch.cat(chunks)


def fit(task: TaskSpec, model: nn.Module, data: DataBundle, budget: Budget, context: FitContext,
        hparams: Hparams = Hparams()) -> tuple[TemperedPredictive, FitInfo]:
    """Train `model` to the MAP estimate on `data.train`, then fit T on `data.val`."""
    likelihood = get_likelihood(task.likelihood, task.likelihood_options)
    # SPEC.likelihoods refuses other tasks before a run starts; this guards callers of fit itself
    if not isinstance(likelihood, Categorical):
        raise UsageError(f"temperature-scaling calibrates class probabilities; task '{task.name}' has a "
                         f"'{task.likelihood}' likelihood")
    if len(data.val) == 0:
        raise UsageError(f"temperature-scaling fits T on the validation split, and task '{task.name}' has none")
    loop = train_map(model, likelihood, data, hparams, budget, context, description="temperature-scaling",
                     reusable=True)  # one MAP per seed for all of a study's trials
    start = time.perf_counter()
    logits = _logits(model, data.val, context.device).double()
    labels = data.val.y.to(logits.device)
    temperature = fit_temperature(logits, labels, hparams.temperature_iterations)
    extra = {"epoch_losses": loop.epoch_losses, "temperature": temperature,
             "val_nll_before": float(nll_at_temperature(logits, labels, 1.0)),
             "val_nll_after": float(nll_at_temperature(logits, labels, temperature))}
    info = FitInfo(steps=loop.steps, epochs=loop.epochs, seconds=loop.seconds + time.perf_counter() - start,
                   extra=extra)
    return TemperedPredictive(model, likelihood, temperature), info


SPEC = MethodSpec("temperature-scaling", Hparams, fit,
                  "MAP, then one softmax temperature fitted to the validation NLL (Guo et al. 2017)",
                  likelihoods=("categorical",))
