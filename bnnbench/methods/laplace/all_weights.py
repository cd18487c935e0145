"""`laplace-all`: Laplace over every weight (laplace-torch `DiagLaplace`, `KronLaplace`, `FullLaplace`).
Default hessian diag, the one that scales to every task's network; full is exact on linear-Gaussian models
and refused (with the variant that fits) when P² floats exceed `max_curvature_gb`.

Default predictive `nn` (Monte Carlo over weights), not laplace-torch's `glm`: the GLM predictive over all
weights needs a C×P Jacobian per test point, measured at 15 ms per point for the digits MLP (26k weights) on
one CPU thread, about 7 minutes for the 77 evaluation splits and as much again for the validation grid.
`--set pred_type=glm` restores it."""

from __future__ import annotations

from dataclasses import dataclass

from bnnbench.methods.laplace.common import (
    LaplaceHparams,
    check_kron_layers,
    check_memory,
    fit_laplace,
    import_laplace,
    laplace_backend,
    tunes_on_validation,
)
from bnnbench.methods.map import precision_prior_settings
from bnnbench.types import Dimension, MethodSpec

__all__ = ["SPEC", "Hparams", "fit"]


@dataclass(frozen=True)
class Hparams(LaplaceHparams):
    hessian: str = "diag"
    pred_type: str = "nn"
    link_approx: str = "mc"  # the only link laplace-torch has for pred_type nn


def fit(task, model, data, budget, context, hparams: Hparams = Hparams()):
    Laplace = import_laplace().Laplace  # noqa: N806 (laplace-torch's factory)

    check_kron_layers(model, hparams.hessian, "laplace-all", "hessian=diag, laplace-ll or laplace-subnet")
    memory = check_memory(model, hparams.hessian, list(model.named_parameters()), hparams.max_curvature_gb,
                          "laplace-all", "hessian=diag or laplace-subnet")

    def make(network, likelihood, noise_std, prior_precision, train):
        laplace = Laplace(network, likelihood, subset_of_weights="all", hessian_structure=hparams.hessian,
                          sigma_noise=noise_std, prior_precision=prior_precision, backend=laplace_backend(network))
        return laplace, None

    return fit_laplace(task, model, data, budget, context, hparams, method="laplace-all", make_laplace=make,
                       extra={"memory_estimate_bytes": memory})


SPEC = MethodSpec("laplace-all", Hparams, fit, post_hoc=True, needs_validation=tunes_on_validation,
                  posterior_settings=precision_prior_settings("laplace-all", tune="none"),
                  search_space=(Dimension("hessian", "categorical", choices=("diag", "kron")),
                                Dimension("tune", "categorical", choices=("val", "marglik"))))
