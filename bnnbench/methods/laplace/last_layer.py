"""`laplace-ll`: last-layer Laplace (laplace-torch `LLLaplace`), the output `nn.Linear` the model factory names
(`bnnbench.models.last_layer_name`); every other weight stays at MAP. Default hessian kron, as laplace-torch's.

On regression through `RegressionView` (per-step outputs, learned noise scale) the head is not the viewed model's
last operation, which `LLLaplace` assumes; there the same posterior is laplace-torch's all-weights Laplace with
every weight but the output layer's frozen (laplace-torch covers the parameters that require gradients)."""

from __future__ import annotations

from dataclasses import dataclass

from bnnbench.methods.laplace.common import (
    LINK,
    LaplaceHparams,
    RegressionView,
    check_memory,
    fit_laplace,
    import_laplace,
    laplace_backend,
    parameter_indices,
    tunes_on_validation,
)
from bnnbench.methods.map import precision_prior_settings
from bnnbench.models import last_layer_name
from bnnbench.types import Dimension, MethodSpec

__all__ = ["SPEC", "Hparams", "fit"]


@dataclass(frozen=True)
class Hparams(LaplaceHparams):
    hessian: str = "kron"


def fit(task, model, data, budget, context, hparams: Hparams = Hparams()):
    Laplace = import_laplace().Laplace  # noqa: N806 (laplace-torch's factory)

    name = last_layer_name(model)

    check_memory(model, hparams.hessian, list(model.get_submodule(name).named_parameters()),
                 hparams.max_curvature_gb, "laplace-ll", "hessian=kron or hessian=diag")

    def make(network, likelihood, noise_std, prior_precision, train):
        if isinstance(network, RegressionView):
            viewed_name = last_layer_name(network)
            for parameter_name, parameter in network.named_parameters():
                parameter.requires_grad_(parameter_name.startswith(viewed_name + "."))
            laplace = Laplace(network, likelihood, subset_of_weights="all", hessian_structure=hparams.hessian,
                              sigma_noise=noise_std, prior_precision=prior_precision,
                              backend=laplace_backend(network))
            return laplace, parameter_indices(network, viewed_name)
        laplace = Laplace(network, likelihood, subset_of_weights="last_layer", hessian_structure=hparams.hessian,
                          sigma_noise=noise_std, prior_precision=prior_precision, last_layer_name=name,
                          backend=laplace_backend(network))
        return laplace, parameter_indices(network, name)

    return fit_laplace(task, model, data, budget, context, hparams, method="laplace-ll", make_laplace=make,
                       extra={"last_layer": name})


SPEC = MethodSpec("laplace-ll", Hparams, fit, post_hoc=True, needs_validation=tunes_on_validation,
                  posterior_settings=precision_prior_settings("laplace-ll", tune="none"),
                  search_space=(Dimension("hessian", "categorical", choices=("kron", "full")), LINK))
