"""`score-vi`: proximal score-matching VI (Kim 2026; bnnbench's reference definition in
../shared/methods/score_vi.md). No reparametrised sampling: samples come from the frozen anchor q_t, their
mini-batch scores are targets, and the family is fitted to them with a proximal KL(q_t ‖ q) penalty.

Defaults and where they come from: S = 1 (`train_samples`; the spec's range is 1–4 and S = 1 is what the
cost target is stated for), K = 5 inner steps (`inner_steps`), λ = 1 (`prox_weight`), anchor refreshed
every mini-batch (`refresh_every`; with K > 1 the proximal term then acts), residuals weighted by σ_t²
(`weighting = "q_t"`; fixes the N² scale of the scores without biasing the gradient). The spec's
prototype reached 0.3–0.7% mean error and σ² within 3–5% of the exact diagonal with these values.
`bnnbench tune` chooses them per task (tasks/tuned/).

Gradient noise: an earlier diagnosis traced score-vi's under-confidence to noise in the μ-gradient from q's
own score at S = 1 (the residual ∇log q_φ(θ_s) − ĝ_s with θ_s ~ q_t carries σ⁻² σ_t ε_s, large where σ is
small). Two settings that lower it are in the search space, so `bnnbench tune` weighs them against their cost:
more samples (`train_samples` S in 1, 2, 4: S network passes per mini-batch) and antithetic pairs μ_t ± σ_t ε
(`antithetic`, even S only, which the tuner skips for odd S; a pair cancels every term odd in ε at no extra
pass). A third, `control_variate` (searched too), is a zero-mean term that replaces the noise of q's own score by
the target's estimated diagonal curvature times the same ε, at no extra pass (derived in `ScoreMatching`'s
docstring; off by default, and off it changes no operation).
benchmarks/score_vi_estimators.py compares them at equal network passes.

Cost: each mini-batch takes S forward and backward passes, then K inner steps of element-wise work on the two
flat vectors (μ, ω): the closed-form gradient (about 20 operations, one kernel each over all coordinates) and
AdamW's fused update, with no backward pass (`ScoreMatching.loss_and_gradients`, `train.ClosedFormAdamW`). On
the digits MLP on a CPU, where the network costs little next to its parameter count, K = 5 then costs about
2.3x map (`make bench`); `inner_steps = 1, refresh_every = 5` (the spec's lagged-anchor variant) about 1.3x.
"""

from __future__ import annotations

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
from bnnbench.methods.vi.objectives import WEIGHTINGS, ScoreMatching
from bnnbench.types import Budget, DataBundle, Dimension, FitContext, FitInfo, MethodSpec, TaskSpec

__all__ = ["SPEC", "Hparams", "fit"]


@dataclass(frozen=True)
class Hparams(VIHparams):
    inner_steps: int = 5  # K: optimiser steps on one set of samples and scores
    prox_weight: float = 1.0  # λ
    refresh_every: int = 1  # mini-batches between anchor refreshes q_t <- q
    weighting: str = "q_t"  # residual weight: "q_t" (σ_t²), "q_t_full" (Σ_t; σ_t² for family = diag) or "none"
    control_variate: bool = False  # zero-mean control variate on the μ-gradient (ScoreMatching's docstring)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weighting not in WEIGHTINGS:
            raise UsageError(f"unknown weighting '{self.weighting}'; valid choices: {', '.join(WEIGHTINGS)}")
        if self.inner_steps < 1 or self.refresh_every < 1 or self.prox_weight < 0:
            raise UsageError("inner_steps and refresh_every must be >= 1 and prox_weight >= 0")
        if self.control_variate and self.family != "diag":
            raise UsageError(f"control_variate is derived for family = \"diag\" only, not \"{self.family}\"")


def fit(task: TaskSpec, model: nn.Module, data: DataBundle, budget: Budget, context: FitContext,
        hparams: Hparams = Hparams()) -> tuple[GaussianPosteriorPredictive, FitInfo]:
    def make_objective(q, prior, log_likelihood, total_steps):
        return ScoreMatching(q, prior, log_likelihood, train_samples=hparams.train_samples,
                             prox_weight=hparams.prox_weight, refresh_every=hparams.refresh_every,
                             weighting=hparams.weighting, antithetic=hparams.antithetic,
                             inner_steps=hparams.inner_steps, control_variate=hparams.control_variate)

    return fit_variational(task, model, data, budget, context, hparams, make_objective, "score-vi",
                           inner_steps=hparams.inner_steps)


SPEC = MethodSpec("score-vi", Hparams, fit,
                  posterior_settings=vi_posterior_settings, check_memory=memory_check("score-vi"),
                  search_space=(*VI_SEARCH_SPACE, Dimension("inner_steps", "categorical", choices=(1, 2, 5, 10)),
                                Dimension("prox_weight", "log-uniform", 0.1, 10.0),
                                Dimension("train_samples", "categorical", choices=(1, 2, 4)),
                                Dimension("antithetic", "categorical", choices=(False, True)),
                                Dimension("control_variate", "categorical", choices=(False, True))))
