"""`mc-dropout`: Monte Carlo dropout (Gal & Ghahramani 2016). Train with dropout, keep it on at test time
and mix S stochastic passes.

Placement (`placement`): a model's own dropout layers when any has a rate above 0 ("existing"), else
dropout at rate `rate` on the input of every `nn.Linear` ("insert"), which is Gal's Bernoulli-masked
weights for those layers. Insertion is a forward pre-hook, so the model's modules, parameter names and
state dict stay as they were and it works on models bnnbench did not write (timm's ViT has dropout
layers, all at rate 0 by default, so it gets inserted ones). run.json records where dropout went.
Everything else in the network (BatchNorm, LayerNorm) is in eval mode at test time.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from bnnbench.errors import UsageError
from bnnbench.likelihoods import get_likelihood
from bnnbench.methods.map import LR, WEIGHT_DECAY, map_objective, train_map
from bnnbench.methods.stochastic import StochasticForwardPredictive
from bnnbench.train import MONITOR_SAMPLES, TrainConfig, evaluating
from bnnbench.types import Budget, DataBundle, Dimension, FitContext, FitInfo, MethodSpec, TaskSpec

__all__ = ["SPEC", "Hparams", "enable_dropout", "fit"]

PLACEMENTS = ("auto", "existing", "insert")


@dataclass(frozen=True)
class Hparams(TrainConfig):
    """The shared training settings, plus dropout's.

    rate: the rate of inserted dropout (existing layers keep their own).
    test_passes: stochastic passes at test time; 0 takes the evaluator's number (the budget's n_eval_samples).
    """

    rate: float = 0.1
    placement: str = "auto"
    test_passes: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.rate < 1:
            raise UsageError(f"dropout rate must be in [0, 1), got {self.rate}")
        if self.placement not in PLACEMENTS:
            raise UsageError(f"unknown placement '{self.placement}'; valid choices: {', '.join(PLACEMENTS)}")
        if self.test_passes < 0:
            raise UsageError(f"test_passes must be >= 0, got {self.test_passes}")


def enable_dropout(model: nn.Module, rate: float, placement: str) -> tuple[list[nn.Dropout], dict]:
    """The dropout layers MC dropout samples through (existing ones, or new ones hooked onto the inputs of
    every nn.Linear) and a description of them for run.json."""
    existing = [module for module in model.modules() if isinstance(module, nn.Dropout) and module.p > 0]
    if placement == "existing" and not existing:
        raise UsageError(f"mc-dropout: placement=existing but {type(model).__name__} has no dropout layer with "
                         "a rate above 0; valid choices here: auto, insert")
    if existing and placement != "insert":
        return existing, {"placement": "existing", "n_layers": len(existing),
                          "rates": sorted({module.p for module in existing})}
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise UsageError(f"mc-dropout: {type(model).__name__} has no nn.Linear to insert dropout before")
    inserted = []
    for name in linears:
        dropout = nn.Dropout(rate)  # not a submodule: model.eval() leaves it on

        def hook(module, args, dropout=dropout):
            return (dropout(args[0]), *args[1:])

        model.get_submodule(name).register_forward_pre_hook(hook)
        inserted.append(dropout)
    return inserted, {"placement": "inserted before every nn.Linear", "n_layers": len(inserted), "rates": [rate],
                      "layers": linears}


def fit(task: TaskSpec, model: nn.Module, data: DataBundle, budget: Budget, context: FitContext,
        hparams: Hparams = Hparams()) -> tuple[StochasticForwardPredictive, FitInfo]:
    """Train with dropout to the MAP estimate, then keep dropout on in an otherwise eval-mode network."""
    likelihood = get_likelihood(task.likelihood, task.likelihood_options)
    dropouts, where = enable_dropout(model, hparams.rate, hparams.placement)
    predictive = StochasticForwardPredictive(model, likelihood, lambda n: hparams.test_passes or n)

    def dropout_passes(x: Tensor) -> Tensor:  # the predictive as evaluated (MC dropout on), for a trial's monitor
        with evaluating(model):
            for dropout in dropouts:
                dropout.train()
            return predictive.predict(x, MONITOR_SAMPLES)

    loop = train_map(model, likelihood, data, budget=budget, context=context, description="mc-dropout",
                     monitor_predictive=dropout_passes, **map_objective(task, hparams))
    model.eval()
    for dropout in dropouts:
        dropout.train()
    info = FitInfo(steps=loop.steps, epochs=loop.epochs, seconds=loop.seconds,
                   extra={"dropout": where, "epoch_losses": loop.epoch_losses})
    return predictive, info


SPEC = MethodSpec("mc-dropout", Hparams, fit,
                  search_space=(Dimension("rate", "uniform", 0.01, 0.5), LR, WEIGHT_DECAY))
