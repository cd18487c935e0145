"""Observation models: the log-likelihood methods train on and the per-sample predictive they return.

Writing them once keeps the log posterior `log p(θ) + N · mean_batch log p(y | x, θ)` identical across
methods, and keeps the evaluator's mixing rule in one place.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bnnbench.registry import Registry

__all__ = ["LIKELIHOODS", "Categorical", "Likelihood", "get_likelihood", "mixture_log_predictive"]


class Likelihood:
    """Interface: per-example log-likelihood of network outputs, and the per-sample predictive."""

    name: str

    def log_likelihood(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """log p(y_i | x_i, θ) for each example, shape (B,)."""
        raise NotImplementedError

    def log_predictive(self, outputs: Tensor) -> Tensor:
        """What `Predictive.predict` returns for one θ sample (classification: log-probabilities)."""
        raise NotImplementedError


class Categorical(Likelihood):
    """Softmax over logits of shape (B, C); targets are class indices."""

    name = "categorical"

    def log_likelihood(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return -torch.nn.functional.cross_entropy(outputs.float(), targets, reduction="none")

    def log_predictive(self, outputs: Tensor) -> Tensor:
        return torch.log_softmax(outputs.float(), dim=-1)


def mixture_log_predictive(sample_log_probs: Tensor) -> Tensor:
    """log of the equal-weight mixture mean_s p(y | x, θ_s), from (S, B, C) log-probabilities.

    Computed with logsumexp in float64 so that confident samples neither underflow nor get averaged
    as logits.
    """
    n_samples = sample_log_probs.shape[0]
    return torch.logsumexp(sample_log_probs.double(), dim=0) - math.log(n_samples)


LIKELIHOODS: Registry[Likelihood] = Registry("likelihood")
LIKELIHOODS.register("categorical", Categorical(), "class index targets, softmax over logits")


def get_likelihood(name: str) -> Likelihood:
    """The likelihood registered as `name`."""
    return LIKELIHOODS.get(name)
