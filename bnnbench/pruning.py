"""A tuning trial's runs, watched epoch by epoch: validation NLL told to the study, pruned or stopped early.

`bnnbench tune` gives each trial run a `TrialLink` (which study and trial, which pruner); the runner builds an
`EpochMonitor` from it, and the shared training loop calls `end_epoch` after every epoch with the log predictive of
what it is training (the network, q's samples, dropout passes, the current SGD iterate). The monitor scores it on
the validation split with the evaluator's own NLL (`evaluate.score_split`), and then:
- stops the run as diverged (`DivergenceError`, a failed run) when the NLL is not finite or exceeds its best so far
  by more than `(divergence_factor - 1) x |best|` (for a positive best: above `divergence_factor` x best);
- reports it to the Optuna trial (only the trial's first seed reports: Optuna keeps one value per step) and, when the
  study's pruner says so, stops the run as pruned (`RunPruned`, status "pruned", with the epoch it reached).

Steps are the epochs of the phases where the trial's settings act. A phase that other runs share (a MAP
warm-up: VI's, SWAG's warm start, the Laplace methods' MAP; `train_map(reusable=True)`) is scored for divergence
but not reported, and not counted when loaded from the MAP store: reported, such a phase is where successive
halving judged every VI trial (its first rungs at 5 and 15 of 50 epochs lay inside the 25-epoch warm-up, which
does not depend on most VI settings), by differences of 0.001 in a warm-up's NLL; counted without scores, trials
that loaded it were judged on their first epochs after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bnnbench.errors import DivergenceError, RunPruned, UsageError, unknown_choice

__all__ = ["DIVERGENCE_FACTOR", "PRUNERS", "EpochMonitor", "TrialLink", "check_options", "make_pruner",
           "min_epochs_for"]

PRUNERS = ("sha", "hyperband", "none")
DIVERGENCE_FACTOR = 3.0
REDUCTION_FACTOR = 3  # successive halving keeps the best third at each rung


def min_epochs_for(max_epochs: int | None) -> int:
    """The first rung: 1/9 of the run's epochs (rungs at m, 3m, 9m: a ninth, a third, the whole run), at least 1.
    Measured on digits-mlp (50 epochs): with the first rung at 1 epoch, 21 to 23 of each method's 24 trials were
    pruned there, and the survivors were the settings that learn fastest, not those that end best (rank1's best
    validation NLL 0.332, score-vi's 0.272, against 0.17-0.19 by hand): the short-horizon bias."""
    return max(1, (max_epochs or 0) // 9)


def make_pruner(name: str, max_epochs: int | None = None, min_epochs: int | None = None) -> Any:
    """Optuna's pruner by name: "sha" (asynchronous successive halving with rungs at m, 3m, 9m, ... epochs, m =
    `min_epochs`, by default `min_epochs_for(max_epochs)`), "hyperband" (several such brackets, up to `max_epochs`),
    "none"."""
    import optuna

    first = min_epochs or min_epochs_for(max_epochs)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=REDUCTION_FACTOR)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=max_epochs or "auto",
                                              reduction_factor=REDUCTION_FACTOR)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise unknown_choice("pruner", name, PRUNERS, "--pruner")


def check_options(pruner: str, divergence_factor: float) -> None:
    """UsageError (one line) for an unknown pruner or a divergence factor that is not above 1."""
    if pruner not in PRUNERS:
        raise unknown_choice("pruner", pruner, PRUNERS, "--pruner")
    if not divergence_factor > 1:
        raise UsageError(f"--divergence-factor must be > 1, got {divergence_factor}")


@dataclass(frozen=True)
class TrialLink:
    """What a trial run needs to talk to its study: the storage URL, the study's name, the trial's number, whether
    this run reports (the trial's first seed), the pruner and the divergence factor. Not part of a run's identity:
    a run in a trial computes what the same run outside one does, until it is stopped."""

    storage: str
    study: str
    number: int
    reports: bool
    pruner: str = "sha"
    max_epochs: int | None = None
    divergence_factor: float = DIVERGENCE_FACTOR
    min_epochs: int | None = None

    def __post_init__(self) -> None:
        check_options(self.pruner, self.divergence_factor)


class _Point:
    """A log-predictive function as the evaluator's Predictive."""

    def __init__(self, predictive: Callable[[Tensor], Tensor]) -> None:
        self.function = predictive

    def predict(self, x: Tensor, n_samples: int) -> Tensor:
        return self.function(x)


class EpochMonitor:
    """Scores each epoch on `val` and stops the run when it diverges or its trial is pruned (module docstring).
    `values` are the validation NLLs, one per scored epoch; `epoch` counts every epoch of the run, `step` the ones
    reported to the trial."""

    def __init__(self, link: TrialLink, val: Any, likelihood: Any, batch_size: int, device: torch.device) -> None:
        self.link, self.val, self.likelihood = link, val, likelihood
        self.batch_size, self.device = batch_size, device
        self.epoch, self.step, self.best, self.values = 0, 0, math.inf, []
        self.trial = None
        if link.pruner != "none":
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            storage = optuna.storages.RDBStorage(link.storage, engine_kwargs={"connect_args": {"timeout": 120}})
            study = optuna.load_study(study_name=link.study, storage=storage,
                                      pruner=make_pruner(link.pruner, link.max_epochs, link.min_epochs))
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(link.study), link.number)
            self.trial = optuna.trial.Trial(study, trial_id)

    def skip(self, epochs: int) -> None:
        """Epochs the run loaded from the MAP store instead of training them: counted, not scored."""
        self.epoch += epochs

    def end_epoch(self, predictive: Callable[[Tensor], Tensor], report: bool = True) -> None:
        """Score the epoch; stop as diverged; with `report`, tell the trial and stop when it is pruned."""
        self.epoch += 1
        value = self._score(predictive)
        self.values.append(value)
        limit = self.best + (self.link.divergence_factor - 1) * abs(self.best)
        if not math.isfinite(value) or value > limit:
            raise DivergenceError(f"diverged: validation NLL {value:.4g} at epoch {self.epoch} is above "
                                  f"{self.link.divergence_factor:g}x its best ({self.best:.4g})")
        self.best = min(self.best, value)
        if not report or self.trial is None:
            return
        self.step += 1
        if self.link.reports:
            self.trial.report(value, self.step)
        if self.trial.should_prune():
            raise RunPruned(f"pruned at epoch {self.epoch} (validation NLL {value:.4g})", self.epoch)

    def _score(self, predictive: Callable[[Tensor], Tensor]) -> float:
        from bnnbench.evaluate import score_split

        # a predictive that samples (rank-1's factors) draws from the global generator: the run's own draws after
        # this epoch must be those of the same run outside a trial
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            return score_split(_Point(predictive), self.likelihood, self.val, "nll", 1, self.batch_size, self.device)
