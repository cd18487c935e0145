"""`elbo-vi`: mean-field Gaussian VI by the reparametrised ELBO ("ADVI" / Bayes-by-backprop, Blundell et
al. 2015), the baseline score-vi is compared with. Same family, prior, warm-up and predictive as score-vi.

Defaults: one sample per mini-batch (`train_samples = 1`, as in Bayes-by-backprop), no KL annealing
(`kl_anneal_fraction = 0`; a fraction of the VI steps over which the KL weight rises from 0 to 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from bnnbench.errors import UsageError
from bnnbench.methods.vi.common import (
    VI_SEARCH_SPACE,
    GaussianPosteriorPredictive,
    VIHparams,
    fit_variational,
    memory_check,
    vi_posterior_settings,
)
from bnnbench.methods.vi.objectives import NegativeELBO
from bnnbench.types import Budget, DataBundle, Dimension, FitContext, FitInfo, MethodSpec, TaskSpec

__all__ = ["SPEC", "Hparams", "fit"]


@dataclass(frozen=True)
class Hparams(VIHparams):
    kl_anneal_fraction: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.kl_anneal_fraction <= 1:
            raise UsageError(f"kl_anneal_fraction must be in [0, 1], got {self.kl_anneal_fraction}")


def fit(task: TaskSpec, model: nn.Module, data: DataBundle, budget: Budget, context: FitContext,
        hparams: Hparams = Hparams()) -> tuple[GaussianPosteriorPredictive, FitInfo]:
    def make_objective(q, prior, log_likelihood, total_steps):
        return NegativeELBO(q, prior, log_likelihood, n_data=len(data.train), train_samples=hparams.train_samples,
                            kl_anneal_steps=math.ceil(hparams.kl_anneal_fraction * total_steps),
                            antithetic=hparams.antithetic)

    return fit_variational(task, model, data, budget, context, hparams, make_objective, "elbo-vi")


SPEC = MethodSpec("elbo-vi", Hparams, fit,
                  posterior_settings=vi_posterior_settings, check_memory=memory_check("elbo-vi"),
                  search_space=(*VI_SEARCH_SPACE, Dimension("init_std", "log-uniform", 1e-4, 1e-1),
                                Dimension("kl_anneal_fraction", "uniform", 0.0, 0.5)))
