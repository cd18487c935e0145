"""Reference posteriors, and how far a method's posterior is from them.

A linear model with a Gaussian likelihood of known noise and a Gaussian prior has a Gaussian posterior in
closed form. bnnbench computes it here, in float64, so that `w2_mean_err`, `var_ratio` and
`pred_var_ratio` measure a method's posterior itself rather than only its predictions.

A network's posterior has no closed form: a fidelity task (one with a `[posterior]` table) is scored against an
HMC reference predictive (`bnnbench reference hmc`, `bnnbench.hmc`), a versioned file
`<task>.v<version>.npz` with its JSON beside it, found on the references search path. A reference made for
another task version or another posterior (`task_posterior_key`) is refused, never silently used.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bnnbench.errors import UsageError, unknown_choice
from bnnbench.likelihoods import Gaussian, Likelihood
from bnnbench.reference_files import load_reference, reference_paths, task_posterior_key
from bnnbench.types import ParameterPosterior, Split, TaskSpec

__all__ = ["REFERENCES_PATH_ENV", "ExactLinearGaussian", "PredictiveReference", "check_reference_config",
           "fidelity_metrics", "find_predictive_reference", "linear_gaussian_posterior", "predictive_fidelity",
           "reference_posterior", "reference_search_path", "task_posterior_key"]

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
    """`pred_var_ratio` always; `w2_mean_err`, `var_ratio` and `marginal_var_ratio` when the predictive states its
    parameter moments (`ParameterPosterior`), in the model's parameter order (weight, then bias). `var_ratio` is 1 at
    the mean-field optimum (σ² = 1/Λ_dd, what KL- and score-based diagonal VI reach), `marginal_var_ratio` at the
    posterior's own marginal variances (what a full covariance reaches); on sanity-blr the two differ by 11.9x."""
    metrics = {"pred_var_ratio": float(np.mean(test_predictive_variance / exact.predictive_variance(test_x)))}
    if isinstance(predictive, ParameterPosterior):
        means, variances = predictive.parameter_moments()
        mean, variance = _flat(means), _flat(variances)
        if mean.shape != exact.mean.shape:
            raise UsageError(f"the reference posterior has {exact.mean.size} parameters, the model {mean.size}")
        metrics["w2_mean_err"] = float(np.linalg.norm(mean - exact.mean) / np.linalg.norm(exact.mean))
        metrics["var_ratio"] = float(np.mean(variance * np.diag(exact.precision)))
        metrics["marginal_var_ratio"] = float(np.mean(variance / np.diag(exact.covariance)))
    return metrics


REFERENCES_PATH_ENV = "BNNBENCH_REFERENCES_PATH"  # extra folders of reference files, separated by os.pathsep


@dataclass(frozen=True)
class PredictiveReference:
    """An HMC reference predictive on a task's test split: `probs` (N, C) for classification, `mean` and `var`
    (N, ...) for regression, plus its diagnostics (`meta`, the JSON written beside it) and the file's sha256."""

    path: Path
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    sha256: str


def reference_search_path() -> list[Path]:
    """Where reference files are looked for, first match wins: `$BNNBENCH_REFERENCES_PATH`, then
    `results/references` under the working directory, then the committed ones of a bnnbench checkout."""
    from bnnbench.package_files import committed_references_dir

    extra = [Path(part) for part in os.environ.get(REFERENCES_PATH_ENV, "").split(os.pathsep) if part]
    return [*extra, Path("results/references"), committed_references_dir()]


def find_predictive_reference(task: TaskSpec) -> PredictiveReference:
    """The HMC reference of a fidelity task; UsageError when there is none, or when the one found was made for
    another version or posterior of the task (the fix is the same: make it again)."""

    make = f"make one with `bnnbench reference hmc --task {task.name}`"
    candidates = [reference_paths(folder, task.name, task.version)[0] for folder in reference_search_path()]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        where = ", ".join(str(path.parent) for path in candidates)
        raise UsageError(f"task '{task.name}' has a [posterior] table but no HMC reference {candidates[0].name} "
                         f"(looked in {where}); {make}")
    try:
        arrays, meta = load_reference(found)
    except UsageError as error:
        raise UsageError(f"{error}; {make}") from None
    if meta.get("task") != task.name or meta.get("task_version") != task.version:
        raise UsageError(f"{found} was made for task '{meta.get('task')}' version {meta.get('task_version')}, not "
                         f"'{task.name}' version {task.version}; {make}")
    if meta.get("task_key") != task_posterior_key(task):
        raise UsageError(f"{found} was made for another posterior of task '{task.name}' v{task.version} (its "
                         f"likelihood, data, model or [posterior] table changed since); {make}")
    needed = ("probs",) if task.likelihood == "categorical" else ("mean", "var")
    missing = [name for name in needed if name not in arrays]
    if missing:
        raise UsageError(f"{found}: a {task.likelihood} reference needs arrays {', '.join(needed)}; missing "
                         f"{', '.join(missing)}")
    digest = hashlib.sha256(found.read_bytes()).hexdigest()
    return PredictiveReference(found, arrays, meta, digest)


def predictive_fidelity(reference: PredictiveReference, likelihood: str, mixture: np.ndarray) -> dict[str, float]:
    """`agreement` and `tv` (classification: `mixture` is (N, C) log-probabilities) or `w2` (regression:
    (N, S, ..., 2) mixture components) of a method's clean-test predictive against the reference's."""
    from bnnbench.likelihoods import mixture_moments
    from bnnbench.metrics import gaussian_w2, top_class_agreement, total_variation

    rows = len(mixture)
    expected = len(reference.arrays["probs" if likelihood == "categorical" else "mean"])
    if rows != expected:
        raise UsageError(f"{reference.path} holds {expected} test points, the task's test split {rows}; make the "
                         "reference again")
    if likelihood == "categorical":
        probs = reference.arrays["probs"]
        return {"agreement": top_class_agreement(mixture, probs), "tv": total_variation(mixture, probs)}
    mean, variance = mixture_moments(mixture)
    return {"w2": gaussian_w2(mean, variance, reference.arrays["mean"].reshape(mean.shape),
                              reference.arrays["var"].reshape(variance.shape))}
