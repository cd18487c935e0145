"""Posterior targets on R^D whose answers are known: what the convergence benchmark of score-based VI against
ADVI, GSM (Modi et al. 2023, "Variational inference with Gaussian score matching") and BaM (Cai et al. 2024,
"Batch and match: black-box variational inference with a score-based divergence") runs each method on, so that
its error after a given number of gradient evaluations can be measured against the truth, not against another
approximation.

A `Target` carries an (n, D) -> (n,) log density, its score, and the mean and covariance a Gaussian approximation
is judged by, with a sentence (`moments`) saying how those are known:

* `gauss-d{D}-k{K}`: dense Gaussians, D in {10, 100, 1000}, condition number K in {10, 1000}. Everything is
  exact: the density is normalised, the score is -Λ(θ - m), and `kl_from` gives KL(q ‖ p) of a Gaussian q in
  closed form. A Gaussian target is where GSM and BaM converge exactly, so it measures their speed alone.
* `sinh-arcsinh-d10`: a skewed, heavy-tailed transform of a dense Gaussian (Jones & Pewsey 2009), the
  non-Gaussian synthetic target of the GSM and BaM papers. Its density is exact and normalised (change of
  variables); its mean and covariance have no closed form, but it can be sampled exactly, so they come from 2·10^6
  i.i.d. draws with a stated Monte Carlo standard error.
* `logreg-breast-cancer`: Bayesian logistic regression on scikit-learn's breast-cancer data (D = 31). The density
  is exact up to the evidence; the moments come from a committed NUTS reference
  (`tasks/references/logreg-breast-cancer.json`, made by `benchmarks/target_reference.py`) with its R̂ and ESS.

Everything is float64: a reference should not leave rounding to be argued about, and D = 1000 still builds in
about a tenth of a second.
"""

from __future__ import annotations

import functools
import json
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bnnbench.errors import UsageError, unknown_choice
from bnnbench.package_files import builtin_tasks_dir

__all__ = ["TARGETS", "Target", "get_target"]

_DTYPE = torch.float64
_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True, eq=False)  # equality by identity: comparing tensor fields has no single truth value
class Target:
    """A density on R^D with known (exact or reference) moments; see the module docstring."""

    name: str
    description: str  # one line
    dim: int
    log_density: Callable[[Tensor], Tensor]  # (n, D) float64 -> (n,)
    mean: Tensor | None  # (D,) float64
    covariance: Tensor | None  # (D, D) float64
    moments: str  # "exact", or how the reference moments were made
    log_normaliser: float | None  # log ∫ exp(log_density); 0.0 when normalised, None when unknown
    closed_form_score: Callable[[Tensor], Tensor] | None = None  # (n, D) -> (n, D); else autograd
    gaussian: bool = False  # the density is exactly N(mean, covariance): `kl_from` has a closed form

    def score(self, theta: Tensor) -> Tensor:
        """∇_θ log_density at each row of `theta` (n, D): the closed form when there is one, else autograd."""
        if self.closed_form_score is not None:
            return self.closed_form_score(theta)
        with torch.enable_grad():
            theta = theta.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(self.log_density(theta).sum(), theta)
        return gradient

    def kl_from(self, mean: Tensor, covariance: Tensor) -> float | None:
        """KL(N(mean, covariance) ‖ p) when p is this Gaussian target, else None (no closed form).

        +inf when `covariance` is not positive definite (a degenerate q has no density against p)."""
        if not self.gaussian:
            return None
        mean, covariance = mean.to(_DTYPE), covariance.to(_DTYPE)
        if mean.shape != (self.dim,) or covariance.shape != (self.dim, self.dim):
            raise ValueError(f"{self.name}: kl_from expects a ({self.dim},) mean and a ({self.dim}, {self.dim}) "
                             f"covariance, got {tuple(mean.shape)} and {tuple(covariance.shape)}")
        cholesky, info = torch.linalg.cholesky_ex(covariance)
        if int(info) != 0:
            return math.inf
        precision, logdet = self._precision_and_logdet
        difference = self.mean - mean
        trace = float((precision * covariance).sum())  # tr(Λ S), both symmetric
        mahalanobis = float(difference @ precision @ difference)
        logdet_q = 2.0 * float(torch.log(torch.diagonal(cholesky)).sum())
        return 0.5 * (trace + mahalanobis - self.dim + logdet - logdet_q)

    @functools.cached_property
    def _precision_and_logdet(self) -> tuple[Tensor, float]:
        # cached_property writes to the instance __dict__, which a frozen dataclass allows: once per target, not
        # once per call, since a benchmark asks for the KL at every iteration
        cholesky = torch.linalg.cholesky(self.covariance)
        return torch.cholesky_inverse(cholesky), 2.0 * float(torch.log(torch.diagonal(cholesky)).sum())


def _seed(name: str) -> int:
    """A fixed seed per target name: the same target on every machine and in every process."""
    return zlib.crc32(name.encode())


def _generator(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(name))


# ---- dense Gaussians ----


def _gaussian(dim: int, condition: float) -> Target:
    """N(m, Q diag(λ) Qᵀ): Q Haar-random orthogonal, λ log-spaced over [K^-1/2, K^1/2] (condition number K,
    geometric-mean eigenvalue 1, so a unit-scale start is neither too wide nor too narrow on average), m ~ N(0, I)."""
    name = f"gauss-d{dim}-k{condition:g}"
    generator = _generator(name)
    # QR of a Gaussian matrix with R's diagonal made positive is Haar-distributed (Mezzadri 2007); without the
    # sign fix the distribution depends on the QR implementation
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=_DTYPE))
    q = q * torch.sign(torch.diagonal(r))
    mean = torch.randn(dim, generator=generator, dtype=_DTYPE)
    eigenvalues = condition ** (torch.linspace(0.0, 1.0, dim, dtype=_DTYPE) - 0.5)
    covariance = (q * eigenvalues) @ q.T
    covariance = 0.5 * (covariance + covariance.T)
    precision = (q / eigenvalues) @ q.T
    precision = 0.5 * (precision + precision.T)
    log_constant = -0.5 * (dim * _LOG_2PI + float(torch.log(eigenvalues).sum()))

    def log_density(theta: Tensor) -> Tensor:
        centred = theta - mean
        return log_constant - 0.5 * ((centred @ precision) * centred).sum(-1)

    def score(theta: Tensor) -> Tensor:
        return -(theta - mean) @ precision

    target = Target(
        name=name, dim=dim, log_density=log_density, mean=mean, covariance=covariance, moments="exact",
        log_normaliser=0.0, closed_form_score=score, gaussian=True,
        description=f"dense Gaussian, D = {dim}, condition number {condition:g} (eigenvalues log-spaced over "
                    f"[{condition ** -0.5:.3g}, {condition ** 0.5:.3g}], random rotation, mean ~ N(0, I))")
    # the exact precision and log-determinant, not a Cholesky of the rounded covariance: kl_from then is 0 at the
    # target's own moments up to the rounding of tr(ΛΣ) alone
    target.__dict__["_precision_and_logdet"] = (precision, -2.0 * log_constant - dim * _LOG_2PI)
    return target


# ---- sinh-arcsinh ----

# X_d = sinh((asinh(Z_d) + s) / τ), Z ~ N(0, Σ): the form of BaM's sinh-arcsinh normal targets (Cai et al. 2024;
# its D = 10 experiments vary s and τ). The GSM code (github.com/modichirag/GSM-VI, scripts/sinh-arcsinh.py) builds
# its D = 10 target from the same Jones-Pewsey transform through TFP's SinhArcsinh, coordinate-wise and with τ
# multiplying instead of dividing. s and τ here are ours, one moderate setting, not copied from either paper:
# s = 0.2 skews every coordinate right, τ = 0.8 < 1 gives tails heavier than the Gaussian's (X ≈ (2Z)^(1/τ)/2 for
# large Z) while every moment stays finite.
_SINH_DIM, _SINH_SKEW, _SINH_TAIL = 10, 0.2, 0.8
_SINH_DRAWS, _SINH_CHUNK = 2_000_000, 250_000
_SINH_NAME = f"sinh-arcsinh-d{_SINH_DIM}"


def _sinh_arcsinh_parameters() -> tuple[Tensor, float, float]:
    """(Σ, s, τ). Σ = A Aᵀ/D + 0.1 I with A's entries N(0, 1): dense, unit-order variances (the GSM code's L Lᵀ
    construction, scaled by 1/D), and the ridge bounds its condition number."""
    generator = _generator(_SINH_NAME)
    a = torch.randn(_SINH_DIM, _SINH_DIM, generator=generator, dtype=_DTYPE)
    sigma = a @ a.T / _SINH_DIM + 0.1 * torch.eye(_SINH_DIM, dtype=_DTYPE)
    return 0.5 * (sigma + sigma.T), _SINH_SKEW, _SINH_TAIL


def _log_cosh(u: Tensor) -> Tensor:
    magnitude = u.abs()  # cosh overflows past |u| ≈ 710; this form does not
    return magnitude + torch.log1p(torch.exp(-2.0 * magnitude)) - math.log(2.0)


@functools.lru_cache(maxsize=1)
def _sinh_arcsinh_moments() -> tuple[Tensor, Tensor, float]:
    """Mean, covariance and the largest per-coordinate standard error of the mean, from _SINH_DRAWS exact draws.

    Cached: about a second on one thread, paid once per process."""
    sigma, skew, tail = _sinh_arcsinh_parameters()
    cholesky = torch.linalg.cholesky(sigma)
    generator = torch.Generator().manual_seed(_seed(_SINH_NAME) + 1)  # not the stream that made Σ
    first = torch.zeros(_SINH_DIM, dtype=_DTYPE)
    second = torch.zeros(_SINH_DIM, _SINH_DIM, dtype=_DTYPE)
    shift = None
    for _ in range(_SINH_DRAWS // _SINH_CHUNK):
        z = torch.randn(_SINH_CHUNK, _SINH_DIM, generator=generator, dtype=_DTYPE) @ cholesky.T
        x = torch.sinh((torch.asinh(z) + skew) / tail)
        if shift is None:  # sums about a rough centre, so E[xxᵀ] - E[x]E[x]ᵀ does not cancel digits away
            shift = x.mean(0)
        x = x - shift
        first += x.sum(0)
        second += x.T @ x
    centred_mean = first / _SINH_DRAWS
    covariance = (second - _SINH_DRAWS * torch.outer(centred_mean, centred_mean)) / (_SINH_DRAWS - 1)
    covariance = 0.5 * (covariance + covariance.T)
    standard_error = float(torch.sqrt(torch.diagonal(covariance) / _SINH_DRAWS).max())
    return shift + centred_mean, covariance, standard_error


def _sinh_arcsinh() -> Target:
    sigma, skew, tail = _sinh_arcsinh_parameters()
    precision = torch.cholesky_inverse(torch.linalg.cholesky(sigma))
    _, logdet = torch.linalg.slogdet(sigma)
    log_constant = -0.5 * (_SINH_DIM * _LOG_2PI + float(logdet)) + _SINH_DIM * math.log(tail)

    def log_density(x: Tensor) -> Tensor:
        # z = sinh(τ asinh(x) - s) inverts the transform; dz/dx = τ cosh(τ asinh(x) - s) / sqrt(1 + x²), so
        # log p(x) = log N(z; 0, Σ) + Σ_d [log τ + log cosh(τ asinh(x_d) - s) - ½ log(1 + x_d²)]
        inner = tail * torch.asinh(x) - skew
        z = torch.sinh(inner)
        return (log_constant - 0.5 * ((z @ precision) * z).sum(-1)
                + (_log_cosh(inner) - 0.5 * torch.log1p(x * x)).sum(-1))

    def score(x: Tensor) -> Tensor:
        inner = tail * torch.asinh(x) - skew
        z = torch.sinh(inner)
        root = torch.sqrt(1.0 + x * x)
        return (-(z @ precision) * tail * torch.cosh(inner) + tail * torch.tanh(inner)) / root - x / (root * root)

    mean, covariance, standard_error = _sinh_arcsinh_moments()
    return Target(
        name=_SINH_NAME, dim=_SINH_DIM, log_density=log_density, mean=mean, covariance=covariance,
        moments=(f"Monte Carlo from {_SINH_DRAWS:,} exact i.i.d. draws (seeded), standard error of the mean at "
                 f"most {standard_error:.1e} per coordinate"),
        log_normaliser=0.0, closed_form_score=score,
        description=(f"sinh-arcsinh transform of a dense Gaussian, D = {_SINH_DIM}: X = sinh((asinh(Z) + s)/τ), "
                     f"Z ~ N(0, Σ), skewness s = {skew}, tail weight τ = {tail} (heavier than Gaussian tails)"))


# ---- Bayesian logistic regression ----

_LOGREG_NAME = "logreg-breast-cancer"
_LOGREG_PRIOR_STD = 1.0
_REFERENCE_FORMAT = 1


def _breast_cancer() -> tuple[Tensor, Tensor]:
    """(X, sign): 569 rows of the 30 features standardised over all rows (population std) and a last column of
    ones for the intercept, and each label as ±1."""
    from sklearn.datasets import load_breast_cancer  # shipped with scikit-learn: no download

    data = load_breast_cancer()
    features = np.asarray(data.data, dtype=np.float64)
    features = (features - features.mean(axis=0)) / features.std(axis=0)
    design = np.concatenate([features, np.ones((len(features), 1))], axis=1)
    return torch.from_numpy(design), torch.from_numpy(2.0 * np.asarray(data.target, dtype=np.float64) - 1.0)


def _reference_path() -> Path:
    return builtin_tasks_dir() / "references" / f"{_LOGREG_NAME}.json"


def _load_reference(path: Path, dim: int) -> dict[str, Any]:
    """The NUTS reference's fields, checked; a one-line UsageError naming the file when it is missing or bad."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: the reference moments of {_LOGREG_NAME} are missing; make them with "
                         f"`python benchmarks/target_reference.py`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{path}: not a readable JSON reference ({' '.join(str(error).split())})") from None
    try:
        if document["format"] != _REFERENCE_FORMAT or document["target"] != _LOGREG_NAME:
            raise ValueError(f"format {document['format']!r} of target {document['target']!r}, expected format "
                             f"{_REFERENCE_FORMAT} of {_LOGREG_NAME}")
        mean = np.asarray(document["mean"], dtype=np.float64)
        covariance = np.asarray(document["covariance"], dtype=np.float64)
        if int(document["dimension"]) != dim or mean.shape != (dim,) or covariance.shape != (dim, dim):
            raise ValueError(f"expected dimension {dim}, a ({dim},) mean and a ({dim}, {dim}) covariance")
        if not (np.isfinite(mean).all() and np.isfinite(covariance).all()):
            raise ValueError("non-finite moments")
        settings, diagnostics = document["settings"], document["diagnostics"]
        summary = {"rhat_max": float(diagnostics["rhat_max"]), "ess_bulk_min": float(diagnostics["ess_bulk_min"]),
                   "mcse_mean_max": float(diagnostics["mcse_mean_max"]), "chains": int(settings["chains"]),
                   "warmup": int(settings["warmup"]), "draws": int(settings["draws"])}
    except (KeyError, TypeError, ValueError) as error:
        detail = f"missing field {error}" if isinstance(error, KeyError) else " ".join(str(error).split())
        raise UsageError(f"{path}: malformed reference for {_LOGREG_NAME} ({detail})") from None
    return {"mean": torch.from_numpy(mean), "covariance": torch.from_numpy(0.5 * (covariance + covariance.T)),
            **summary}


def _logistic_regression_density() -> tuple[int, Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """(D, log density, score) of the logistic-regression posterior, without its reference moments: what
    `benchmarks/target_reference.py` samples to make them."""
    design, sign = _breast_cancer()
    dim = design.shape[1]
    signed = design * sign[:, None]  # log σ(±xᵀθ) = log σ((±x)ᵀθ)
    prior_precision = 1.0 / _LOGREG_PRIOR_STD**2
    log_prior_constant = -0.5 * dim * (_LOG_2PI + 2.0 * math.log(_LOGREG_PRIOR_STD))

    def log_density(theta: Tensor) -> Tensor:
        return (torch.nn.functional.logsigmoid(theta @ signed.T).sum(-1)
                + log_prior_constant - 0.5 * prior_precision * (theta * theta).sum(-1))

    def score(theta: Tensor) -> Tensor:
        # d/dθ log σ(a) = σ(-a) ∂a/∂θ
        return torch.sigmoid(-(theta @ signed.T)) @ signed - prior_precision * theta

    return dim, log_density, score


def _logistic_regression() -> Target:
    dim, log_density, score = _logistic_regression_density()
    path = _reference_path()
    reference = _load_reference(path, dim)
    return Target(
        name=_LOGREG_NAME, dim=dim, log_density=log_density, mean=reference["mean"],
        covariance=reference["covariance"], log_normaliser=None, closed_form_score=score,
        moments=(f"NUTS reference ({path.name}): {reference['chains']} chains x {reference['draws']} draws after "
                 f"{reference['warmup']} warm-up, max split-R̂ {reference['rhat_max']:.4f}, min bulk ESS "
                 f"{reference['ess_bulk_min']:.0f}, Monte Carlo standard error of the mean at most "
                 f"{reference['mcse_mean_max']:.1e}"),
        description=(f"Bayesian logistic regression, scikit-learn breast cancer (569 rows, 30 standardised "
                     f"features + intercept last, D = {dim}), prior N(0, {_LOGREG_PRIOR_STD:g}² I)"))


TARGETS: dict[str, Callable[[], Target]] = {
    **{f"gauss-d{dim}-k{condition}": functools.partial(_gaussian, dim, float(condition))
       for dim in (10, 100, 1000) for condition in (10, 1000)},
    _SINH_NAME: _sinh_arcsinh,
    _LOGREG_NAME: _logistic_regression,
}


def get_target(name: str) -> Target:
    """The registered target `name`; a one-line UsageError naming the valid ones otherwise."""
    if name not in TARGETS:
        raise unknown_choice("target", name, TARGETS)
    return TARGETS[name]()
