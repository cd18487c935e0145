"""`laplace-subnet`: subnetwork Laplace (Daxberger et al. 2021; laplace-torch `SubnetLaplace`): a full-covariance
GGN Laplace over `n_params` selected weights, every other weight fixed at MAP (the conditional posterior).

Selection (laplace-torch's masks), top `n_params` scores:
- `largest-variance-swag` (default): marginal variances of diagonal SWAG (40 epochs of SGD at lr 0.01 from the
  MAP, laplace-torch's defaults); keeping the largest minimises the 2-Wasserstein distance to the factorised
  posterior, the paper's strategy;
- `largest-variance`: the same with a diagonal Laplace's variances. On digits it picks weights the data never
  reach (the always-blank border pixels' input weights have zero curvature, so their variance is the prior's):
  measured on digits-mlp, validation NLL was then 0.1799 at every prior precision from 1e-2 to 1e5, the MAP's;
- `largest-magnitude`: |θ_MAP|;
- `random`: uniform scores (seeded by the run seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bnnbench.errors import UsageError
from bnnbench.methods.laplace.common import (
    LINK,
    LaplaceHparams,
    RegressionView,
    check_memory,
    data_loader,
    fit_laplace,
    import_laplace,
    jacobian_rows,
    laplace_backend,
    tunes_on_validation,
)
from bnnbench.methods.map import precision_prior_settings
from bnnbench.types import Dimension, MethodSpec

__all__ = ["SPEC", "Hparams", "SELECTIONS", "fit"]

SELECTIONS = ("largest-variance-swag", "largest-variance", "largest-magnitude", "random")


@dataclass(frozen=True)
class Hparams(LaplaceHparams):
    hessian: str = "full"
    n_params: int = 1000  # s; clipped to the network's size
    selection: str = "largest-variance-swag"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hessian not in ("full", "diag"):
            raise UsageError(f"laplace-subnet: hessian must be full or diag, got '{self.hessian}'")
        if self.selection not in SELECTIONS:
            raise UsageError(f"unknown selection '{self.selection}'; valid choices: {', '.join(SELECTIONS)}")
        if self.n_params < 1:
            raise UsageError(f"laplace-subnet: n_params must be >= 1, got {self.n_params}")


def select_subnetwork(model, likelihood: str, selection: str, n_params: int, train, batch_size: int,
                      seed: int) -> torch.Tensor:
    """Sorted indices (into the flattened parameter vector) of the `n_params` selected weights; `batch_size` is
    SWAG's SGD batch."""
    laplace = import_laplace()
    from laplace.utils.subnetmask import (
        LargestMagnitudeSubnetMask,
        LargestVarianceDiagLaplaceSubnetMask,
        LargestVarianceSWAGSubnetMask,
        RandomSubnetMask,
    )

    rows = jacobian_rows(model, train.x)
    if selection == "largest-variance-swag":
        torch.manual_seed(seed)
        mask, rows = LargestVarianceSWAGSubnetMask(model, n_params, likelihood), batch_size
    elif selection == "largest-variance":
        diagonal = laplace.DiagLaplace(model, likelihood, backend=laplace_backend(model))
        mask = LargestVarianceDiagLaplaceSubnetMask(model, n_params, diagonal)
    elif selection == "largest-magnitude":
        mask = LargestMagnitudeSubnetMask(model, n_params)
    else:
        torch.manual_seed(seed)
        mask = RandomSubnetMask(model, n_params)
    view = model if isinstance(model, RegressionView) else None
    indices = mask.select(data_loader(train, rows, likelihood == "regression", view))
    return indices.sort().values.cpu()  # laplace-torch checks for a (CPU) torch.LongTensor; it indexes CUDA with it


def fit(task, model, data, budget, context, hparams: Hparams = Hparams()):
    Laplace = import_laplace().Laplace  # noqa: N806 (laplace-torch's factory)

    chosen = {}
    n_params = min(hparams.n_params, sum(p.numel() for p in model.parameters()))
    check_memory(model, hparams.hessian, n_params, hparams.max_curvature_gb, "laplace-subnet", "a smaller n_params")

    def make(network, likelihood, noise_std, prior_precision, train):
        indices = select_subnetwork(network, likelihood, hparams.selection, n_params, train, hparams.batch_size,
                                    context.seed)
        chosen["n_selected"] = len(indices)
        laplace = Laplace(network, likelihood, subset_of_weights="subnetwork", hessian_structure=hparams.hessian,
                          subnetwork_indices=indices, sigma_noise=noise_std, prior_precision=prior_precision,
                          backend=laplace_backend(network))
        return laplace, indices

    predictive, info = fit_laplace(task, model, data, budget, context, hparams, method="laplace-subnet",
                                   make_laplace=make)
    info.extra |= {"selection": hparams.selection, **chosen}
    return predictive, info


SPEC = MethodSpec("laplace-subnet", Hparams, fit, post_hoc=True, needs_validation=tunes_on_validation,
                  posterior_settings=precision_prior_settings("laplace-subnet", tune="none"),
                  search_space=(Dimension("n_params", "categorical", choices=(100, 300, 1000)),
                                Dimension("selection", "categorical", choices=SELECTIONS), LINK))
