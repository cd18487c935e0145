"""`ensemble`: deep ensembles (Lakshminarayanan et al. 2017). K members, each initialised independently
by the task's model factory and trained to MAP with the shared loop; the predictive is the uniform mixture
of the members (the evaluator mixes the K per-member predictives in log space).

Members train in one vectorised pass where the model allows it: their parameters are stacked
(`torch.func.stack_module_state`) and one `vmap`ped `functional_call` runs all K on K mini-batches, so a
step costs one forward/backward of K-times-wider tensors and one AdamW update, not K of each. AdamW is
elementwise, so stacked members optimise exactly as separate ones. Models with BatchNorm (whose running
statistics are updated in place, which vmap cannot batch) or anything else vmap rejects fall back to a
loop over members; run.json records which path ran and why.

Data order (`data_order`): "independent" gives member k its own fixed relabelling of the rows, so the
loop's shuffle yields different mini-batches for each member; "shared" feeds every member the same ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import vmap

from bnnbench.errors import UsageError
from bnnbench.likelihoods import Likelihood, get_likelihood
from bnnbench.methods.map import LR, WEIGHT_DECAY, map_objective, train_map
from bnnbench.models import create_model
from bnnbench.params import StackedWeights, math_attention
from bnnbench.train import TrainConfig, augment_images, autocast, evaluating, train_loop
from bnnbench.types import Budget, DataBundle, FitContext, FitInfo, MethodSpec, Split, TaskSpec

__all__ = ["SPEC", "EnsemblePredictive", "Hparams", "fit", "member_models"]

VECTORISE = ("auto", "vmap", "loop")
DATA_ORDERS = ("independent", "shared")


@dataclass(frozen=True)
class Hparams(TrainConfig):
    """The shared training settings (`TrainConfig`) train every member; `n_members` is K."""

    n_members: int = 5
    vectorise: str = "auto"  # "vmap" fails if the model does not allow it; "auto" falls back to "loop"
    data_order: str = "independent"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_members < 1:
            raise UsageError(f"n_members must be at least 1, got {self.n_members}")
        if self.vectorise not in VECTORISE:
            raise UsageError(f"unknown vectorise '{self.vectorise}'; valid choices: {', '.join(VECTORISE)}")
        if self.data_order not in DATA_ORDERS:
            raise UsageError(f"unknown data_order '{self.data_order}'; valid choices: {', '.join(DATA_ORDERS)}")


def _member_seed(seed: int, member: int) -> int:
    return 1_000_003 * member + seed  # distinct across (seed, member) for any seed below 1,000,003


def member_models(task: TaskSpec, model: nn.Module, data: DataBundle, n_members: int, seed: int) -> list[nn.Module]:
    """`model` and K − 1 more from the task's factory, each initialised from its own seed."""
    members = [model]
    for member in range(1, n_members):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_member_seed(seed, member))
            members.append(create_model(task.model, data.input_shape, data.num_outputs, str(task.path)))
    return members


def _row_orders(n: int, n_members: int, seed: int, data_order: str) -> Tensor:
    """(K, n): member k reads row orders[k, i] where the loop's shuffle says i."""
    orders = [torch.arange(n)]
    for member in range(1, n_members):
        if data_order == "shared":
            orders.append(torch.arange(n))
        else:
            orders.append(torch.randperm(n, generator=torch.Generator().manual_seed(_member_seed(seed, member))))
    return torch.stack(orders)


def _vmap_blocker(members: list[nn.Module], train: Split, config: Hparams) -> str:
    """Why the members cannot train in one vmapped pass ("" when they can)."""
    if config.grad_clip > 0:
        return "grad_clip would clip the members' gradients jointly"
    return StackedWeights.from_models(members).vmap_blocker(train.x[:2], training=True)


def _train_vmapped(members: list[nn.Module], likelihood: Likelihood, data: DataBundle, orders: Tensor,
                   objective: dict[str, Any], budget: Budget, context: FitContext,
                   ) -> tuple[StackedWeights, list[float], int, int, float]:
    """`objective` is `map_objective`'s: each member's loss is train_map's, summed over members."""
    hparams, log_prior, temperature = objective["config"], objective.get("log_prior"), objective.get("temperature", 1.0)
    device = context.device
    stacked = StackedWeights.from_models([member.to(device).train() for member in members])
    x, y, orders = data.train.x.to(device), data.train.y.to(device), orders.to(device)

    def member_loss(params: dict[str, Tensor], buffers: dict[str, Tensor], x_member: Tensor, y_member: Tensor):
        loss = -likelihood.log_likelihood(stacked.call(params, buffers, x_member), y_member).mean() / temperature
        return loss if log_prior is None else loss - log_prior(params) / len(data.train)

    losses = vmap(member_loss, randomness="different")

    augment_generator = torch.Generator(device).manual_seed(context.seed)

    def loss_fn(positions: Tensor, _: Tensor) -> Tensor:
        rows = orders[:, positions]  # (K, B): each member's own mini-batch
        images = x[rows]
        if hparams.augment != "none":  # each member's images get their own crops and flips
            images = augment_images(images.flatten(0, 1), hparams.augment, augment_generator).reshape(images.shape)
        with math_attention():  # summed, member k's gradient is its own
            return losses(stacked.params, stacked.buffers, images, y[rows]).sum()

    positions = torch.arange(len(data.train))
    # the loop sees row positions, not images: it must not augment them
    def members_now(x: Tensor) -> Tensor:  # the members as they stand, for a tuning trial's monitor
        with evaluating(stacked.base):
            return EnsemblePredictive(likelihood, stacked=stacked).predict(x, len(members))

    loop = train_loop(stacked.params.values(), loss_fn, Split(positions, positions),
                      dataclasses.replace(hparams, augment="none"), budget, context,
                      description=f"ensemble x{len(members)} (vmap)", predictive=members_now)
    for params in stacked.params.values():
        params.requires_grad_(False)
    stacked.base.eval()
    per_member = [loss / len(members) for loss in loop.epoch_losses]
    return stacked, per_member, loop.steps, loop.epochs, loop.seconds


def _train_looped(members: list[nn.Module], likelihood: Likelihood, data: DataBundle, orders: Tensor,
                  objective: dict[str, Any], budget: Budget,
                  context: FitContext) -> tuple[list[float], int, int, float]:
    share = dataclasses.replace(budget, max_seconds=budget.max_seconds and budget.max_seconds / len(members))
    epoch_losses, steps, epochs, seconds = [], 0, 0, 0.0
    for k, (member, order) in enumerate(zip(members, orders, strict=True)):
        member_data = dataclasses.replace(data, train=Split(data.train.x[order], data.train.y[order]))
        loop = train_map(member, likelihood, member_data, budget=share, context=context,
                         description=f"ensemble member {k + 1}/{len(members)}", **objective)
        member.eval()
        epoch_losses.append(loop.epoch_losses)
        steps, epochs, seconds = steps + loop.steps, max(epochs, loop.epochs), seconds + loop.seconds
    mean_losses = [sum(values) / len(values) for values in zip(*epoch_losses, strict=False)]
    return mean_losses, steps, epochs, seconds


class EnsemblePredictive:
    """The K members' per-sample predictives (S = K, whatever `n_samples` asks)."""

    def __init__(self, likelihood: Likelihood, members: list[nn.Module] | None = None,
                 stacked: StackedWeights | None = None) -> None:
        self.likelihood, self.members, self.stacked = likelihood, members, stacked

    @torch.no_grad()
    def predict(self, x: Tensor, n_samples: int) -> Tensor:
        with autocast(x.device):
            if self.stacked is not None:
                outputs = self.stacked.outputs_shared(x)
            else:
                outputs = torch.stack([member(x) for member in self.members])
        return self.likelihood.log_predictive(outputs)


def fit(task: TaskSpec, model: nn.Module, data: DataBundle, budget: Budget, context: FitContext,
        hparams: Hparams = Hparams()) -> tuple[EnsemblePredictive, FitInfo]:
    """Train K independently initialised members and return their uniform mixture."""
    likelihood = get_likelihood(task.likelihood, task.likelihood_options)
    members = member_models(task, model, data, hparams.n_members, context.seed)
    orders = _row_orders(len(data.train), hparams.n_members, context.seed, hparams.data_order)
    reason = _vmap_blocker(members, data.train, hparams)
    if hparams.vectorise == "vmap" and reason:
        raise UsageError(f"ensemble: vectorise=vmap is not possible for this model ({reason}); "
                         "valid choices here: auto, loop")
    path = "loop" if hparams.vectorise == "loop" or reason else "vmap"
    objective = map_objective(task, hparams)
    if path == "vmap":
        stacked, losses, steps, epochs, seconds = _train_vmapped(members, likelihood, data, orders, objective,
                                                                 budget, context)
        predictive = EnsemblePredictive(likelihood, stacked=stacked)
    else:
        losses, steps, epochs, seconds = _train_looped(members, likelihood, data, orders, objective, budget, context)
        predictive = EnsemblePredictive(likelihood, members=members)
    reason = reason or ("vectorise=loop was asked for" if path == "loop" else "")
    extra = {"training_path": path, "loop_reason": reason, "epoch_losses": losses, "n_members": hparams.n_members}
    return predictive, FitInfo(steps=steps, epochs=epochs, seconds=seconds, extra=extra)


SPEC = MethodSpec("ensemble", Hparams, fit, search_space=(LR, WEIGHT_DECAY))
