"""Exact posteriors for the sanity tasks, and how far a method's posterior is from them.

A linear model with a Gaussian likelihood of known noise and a Gaussian prior has a Gaussian posterior in
closed form. bnnbench computes it here, in float64, so that `w2_mean_err`, `var_ratio` and
`pred_var_ratio` measure a method's posterior itself rather than only its predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bnnbench.errors import UsageError, unknown_choice
from bnnbench.likelihoods import Gaussian, Likelihood
from bnnbench.types import ParameterPosterior, Split

__all__ = ["ExactLinearGaussian", "check_reference_config", "fidelity_metrics",
           "linear_gaussian_posterior", "reference_posterior"]

_KINDS = ("linear-gaussian",)


@dataclass(frozen=True)
class ExactLinearGaussian:
    """N(mean, covariance) over the flat parameters (weight row-major, then bias) of `nn.Linear(D, 1)`."""

    mean: np.ndarray  # (D + 1,)
    precision: np.ndarray  # Λ, (D + 1, D + 1)
    covariance: np.ndarray  # Λ⁻¹
    noise_std: float

    def predictive_variance(self, x: np.ndarray) -> np.ndarray:
        """Var[y | x] = x̃ᵀ Σ x̃ + noise², with x̃ = (x, 1)."""
        design = _with_bias(x)
        return np.einsum("nd,de,ne->n", design, self.covariance, design) + self.noise_std**2


def _with_bias(x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(x, dtype=np.float64), np.ones((len(x), 1))], axis=1)


def linear_gaussian_posterior(x: np.ndarray, y: np.ndarray, noise_std: float, prior_std: float) -> ExactLinearGaussian:
    """Posterior of w̃ = (w, b) under y ~ N(x̃ᵀw̃, noise²), w̃ ~ N(0, prior² I):
    Λ = X̃ᵀX̃ / noise² + I / prior², m = Λ⁻¹ X̃ᵀ y / noise²."""
    design = _with_bias(x)
    precision = design.T @ design / noise_std**2 + np.eye(design.shape[1]) / prior_std**2
    covariance = np.linalg.inv(precision)
    mean = covariance @ design.T @ np.asarray(y, dtype=np.float64) / noise_std**2
    return ExactLinearGaussian(mean, precision, covariance, noise_std)


def check_reference_config(reference: Any, likelihood: Likelihood | str, where: str) -> None:
    """Raise UsageError unless `[eval] reference` names a known exact posterior that fits the task."""
    if not isinstance(reference, dict) or "posterior" not in reference:
        raise UsageError(f"{where}: key 'eval.reference' must be a table with key 'posterior', got {reference!r}")
    if reference["posterior"] not in _KINDS:
        raise unknown_choice("eval.reference.posterior", reference["posterior"], _KINDS, where)
    extra = set(reference) - {"posterior", "prior_std"}
    if extra:
        raise unknown_choice("key", f"eval.reference.{sorted(extra)[0]}", ["eval.reference.posterior",
                                                                         "eval.reference.prior_std"], where)
    prior_std = reference.get("prior_std")
    if not isinstance(prior_std, int | float) or isinstance(prior_std, bool) or prior_std <= 0:
        raise UsageError(f"{where}: key 'eval.reference.prior_std' must be a positive number, got {prior_std!r}")
    if not (isinstance(likelihood, Gaussian) and likelihood.noise_std is not None):
        raise UsageError(f"{where}: eval.reference 'linear-gaussian' needs likelihood gaussian with noise_std set")


def reference_posterior(reference: dict[str, Any], train: Split, likelihood: Likelihood,
                        where: str = "task") -> ExactLinearGaussian:
    """The exact posterior a task's `[eval] reference` table describes, from its training split."""
    check_reference_config(reference, likelihood, where)
    return linear_gaussian_posterior(train.x.double().numpy(), train.y.double().numpy(),
                                     likelihood.noise_std, float(reference["prior_std"]))


def _flat(tensors: dict[str, Tensor]) -> np.ndarray:
    return torch.cat([t.detach().double().reshape(-1).cpu() for t in tensors.values()]).numpy()


def fidelity_metrics(exact: ExactLinearGaussian, predictive: object, test_x: np.ndarray,
                     test_predictive_variance: np.ndarray) -> dict[str, float]:
    """`pred_var_ratio` always; `w2_mean_err` and `var_ratio` when the predictive states its parameter
    moments (`ParameterPosterior`), in the model's parameter order (weight, then bias)."""
    metrics = {"pred_var_ratio": float(np.mean(test_predictive_variance / exact.predictive_variance(test_x)))}
    if isinstance(predictive, ParameterPosterior):
        means, variances = predictive.parameter_moments()
        mean, variance = _flat(means), _flat(variances)
        if mean.shape != exact.mean.shape:
            raise UsageError(f"the reference posterior has {exact.mean.size} parameters, the model {mean.size}")
        metrics["w2_mean_err"] = float(np.linalg.norm(mean - exact.mean) / np.linalg.norm(exact.mean))
        metrics["var_ratio"] = float(np.mean(variance * np.diag(exact.precision)))
    return metrics
