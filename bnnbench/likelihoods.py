"""Observation models: the log-likelihood methods train on, the per-sample predictive they return, and how
the evaluator mixes posterior samples into one predictive.

Writing them once keeps the log posterior `log p(θ) + N · mean_batch log p(y | x, θ)` identical across
methods, and keeps the evaluator's mixing rule in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bnnbench.errors import UsageError, unknown_choice
from bnnbench.registry import Registry

__all__ = ["LIKELIHOODS", "Categorical", "Gaussian", "Likelihood", "StudentT", "check_likelihood_options",
           "get_likelihood", "mixture_log_predictive", "student_t_log_density"]


def _float(outputs: Tensor) -> Tensor:
    """bf16/fp16 network outputs (autocast) are scored in float32; float64 stays float64 (exact tests)."""
    return outputs if outputs.dtype == torch.float64 else outputs.float()


class Likelihood:
    """Interface: per-example log-likelihood of network outputs, the per-sample predictive, its mixture."""

    name: str

    def log_likelihood(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """log p(y_i | x_i, θ) for each example, shape (B,)."""
        raise NotImplementedError

    def log_predictive(self, outputs: Tensor) -> Tensor:
        """What `Predictive.predict` returns for one θ sample."""
        raise NotImplementedError

    def mixture(self, sample_predictive: Tensor) -> Tensor:
        """The equal-weight mixture over S samples, (S, B, ...) -> (B, ...) in float64, in the form the
        likelihood's metrics read."""
        raise NotImplementedError

    def saved_predictions(self, mixture: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
        """What `--save-predictions` writes for the test split: enough to recompute any metric."""
        raise NotImplementedError

    def uncertainty(self, sample_predictive: Tensor, mixture: Tensor) -> dict[str, Tensor]:
        """Per-example uncertainty scores (name -> (B,)) for out-of-distribution detection; none by default."""
        return {}

    def affine(self, mixture: np.ndarray, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """The mixture of targets mapped by y -> shift + scale * y, per example ((N,) each): forecasting windows
        are normalised by the data and scored in series units."""
        raise UsageError(f"likelihood '{self.name}' has no real-valued targets to rescale")


@dataclass(frozen=True)
class Categorical(Likelihood):
    """Softmax over logits of shape (B, C); targets are class indices."""

    name = "categorical"

    def log_likelihood(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return -torch.nn.functional.cross_entropy(_float(outputs), targets, reduction="none")

    def log_predictive(self, outputs: Tensor) -> Tensor:
        return torch.log_softmax(_float(outputs), dim=-1)

    def mixture(self, sample_predictive: Tensor) -> Tensor:
        return mixture_log_predictive(sample_predictive)

    def saved_predictions(self, mixture: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
        return {"probs": np.exp(mixture).astype(np.float32), "labels": targets.astype(np.int64)}

    def uncertainty(self, sample_predictive: Tensor, mixture: Tensor) -> dict[str, Tensor]:
        """`entropy`: of the mixture predictive (total uncertainty). `mi`: mutual information between the
        label and the parameters, entropy of the mixture minus the mean entropy of the samples (epistemic
        part; 0 for a single sample, so it is only given for S > 1)."""
        def entropy(log_probs: Tensor) -> Tensor:
            return -(log_probs.exp() * log_probs).nan_to_num().sum(-1)  # 0 log 0 = 0

        total = entropy(mixture)
        if sample_predictive.shape[0] == 1:
            return {"entropy": total}
        expected = entropy(sample_predictive.double()).mean(0)
        return {"entropy": total, "mi": (total - expected).clamp_min(0.0)}


@dataclass(frozen=True)
class Gaussian(Likelihood):
    """Normal observations. With `noise_std` set, the network's outputs (B, ..., 1) are the mean and the
    noise is fixed; without it, outputs (B, ..., 2) are the mean and the log standard deviation.

    One sample's predictive is (B, ..., 2): mean and log standard deviation (noise included). The mixture
    keeps every component, (B, S, ..., 2), because no closed form summarises a Gaussian mixture's density.
    """

    noise_std: float | None = None

    name = "gaussian"

    def __post_init__(self) -> None:
        if self.noise_std is not None and not (isinstance(self.noise_std, int | float) and self.noise_std > 0):
            raise UsageError(f"gaussian likelihood: noise_std must be a positive number, got {self.noise_std!r}")

    def _mean_log_std(self, outputs: Tensor) -> tuple[Tensor, Tensor]:
        outputs = _float(outputs)
        if self.noise_std is not None:
            mean = outputs[..., 0]
            return mean, torch.full_like(mean, math.log(self.noise_std))
        return outputs[..., 0], outputs[..., 1]

    def fisher(self) -> tuple[float, float]:
        """The Fisher information of one observation in (location, log scale), diag(a / scale², b): (a, b)."""
        return 1.0, 2.0

    def log_likelihood(self, outputs: Tensor, targets: Tensor) -> Tensor:
        mean, log_std = self._mean_log_std(outputs)
        log_density = -0.5 * ((targets - mean) * torch.exp(-log_std)) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
        return log_density.reshape(len(targets), -1).sum(dim=1)

    def log_predictive(self, outputs: Tensor) -> Tensor:
        return torch.stack(self._mean_log_std(outputs), dim=-1)

    def mixture(self, sample_predictive: Tensor) -> Tensor:
        return sample_predictive.double().transpose(0, 1)

    def affine(self, mixture: np.ndarray, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """Each component N(m, s²) becomes N(shift + scale m, (scale s)²)."""
        per_example = (-1, *[1] * (mixture.ndim - 2))
        mean = shift.reshape(per_example) + scale.reshape(per_example) * mixture[..., 0]
        return np.stack([mean, mixture[..., 1] + np.log(scale).reshape(per_example)], axis=-1)

    def saved_predictions(self, mixture: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
        mean, var = mixture_moments(mixture)
        return {"mean": mean, "var": var, "y": targets.astype(np.float64)}


@dataclass(frozen=True)
class StudentT(Gaussian):
    """Student-t observations with `df` degrees of freedom (fixed) and learned location and scale: outputs
    (B, ..., 2) are the location and the log scale. Heavier tails than the Gaussian for series with outliers.

    One sample's predictive is (B, ..., 3): location, log scale and df (constant), so that the mixture carries
    everything its metrics need; the mixture keeps every component, (B, S, ..., 3)."""

    df: float = 3.0
    noise_std: None = None

    name = "student-t"

    def __post_init__(self) -> None:
        if not (isinstance(self.df, int | float) and self.df > 2):
            raise UsageError(f"student-t likelihood: df must be a number above 2 (finite variance), got {self.df!r}")
        if self.noise_std is not None:
            raise UsageError("student-t likelihood: its scale is learned; noise_std is not an option (valid: df)")

    def fisher(self) -> tuple[float, float]:
        return (self.df + 1) / (self.df + 3), 2 * self.df / (self.df + 3)

    def log_likelihood(self, outputs: Tensor, targets: Tensor) -> Tensor:
        loc, log_scale = self._mean_log_std(outputs)
        log_density = student_t_log_density(targets, loc, log_scale, self.df)
        return log_density.reshape(len(targets), -1).sum(dim=1)

    def log_predictive(self, outputs: Tensor) -> Tensor:
        loc, log_scale = self._mean_log_std(outputs)
        return torch.stack([loc, log_scale, torch.full_like(loc, float(self.df))], dim=-1)

    def affine(self, mixture: np.ndarray, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
        moved = super().affine(mixture[..., :2], shift, scale)
        return np.concatenate([moved, mixture[..., 2:]], axis=-1)


def student_t_log_density(y, loc, log_scale, df: float):
    """log t_df(y; loc, scale) elementwise, for tensors or arrays."""
    lib = torch if isinstance(loc, Tensor) else np
    z = (y - loc) * lib.exp(-log_scale)
    constant = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return constant - log_scale - (df + 1) / 2 * lib.log1p(z**2 / df)


def mixture_moments(mixture: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of a Gaussian (or Student-t) mixture given as (N, S, ..., 2) components (mean, log std)
    (or (N, S, ..., 3) with df: a component's variance is scale² df / (df - 2)):
    variance = mean of the component variances + variance of the component means."""
    means, variances = mixture[..., 0], np.exp(2 * mixture[..., 1])
    if mixture.shape[-1] == 3:
        variances = variances * mixture[..., 2] / (mixture[..., 2] - 2)
    mean = means.mean(axis=1)
    return mean, variances.mean(axis=1) + means.var(axis=1)


def mixture_log_predictive(sample_log_probs: Tensor) -> Tensor:
    """log of the equal-weight mixture mean_s p(y | x, θ_s), from (S, B, C) log-probabilities.

    Computed with logsumexp in float64 so that confident samples neither underflow nor get averaged
    as logits.
    """
    n_samples = sample_log_probs.shape[0]
    return torch.logsumexp(sample_log_probs.double(), dim=0) - math.log(n_samples)


LIKELIHOODS: Registry[type[Likelihood]] = Registry("likelihood")
LIKELIHOODS.register("categorical", Categorical, "class index targets, softmax over logits")
LIKELIHOODS.register("gaussian", Gaussian, "real targets; option noise_std fixes the noise, else learned")
LIKELIHOODS.register("student-t", StudentT, "real targets, heavy tails; option df (default 3), scale learned")


def check_likelihood_options(name: str, options: dict[str, Any], where: str) -> None:
    """Raise UsageError for an unknown likelihood, an unknown option or a bad option value."""
    get_likelihood(name, options, where)


def get_likelihood(name: str, options: dict[str, Any] | None = None, where: str = "task") -> Likelihood:
    """The likelihood registered as `name`, built with the task's options."""
    factory = LIKELIHOODS.get(name, where)
    valid = [f.name for f in fields(factory)]
    for key in options or {}:
        if key not in valid:
            raise unknown_choice(f"option of likelihood '{name}'", f"likelihood.{key}",
                                 [f"likelihood.{k}" for k in valid], where)
    return factory(**(options or {}))
