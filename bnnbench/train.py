"""The one training loop every method uses: AdamW, cosine schedule, bf16 autocast on CUDA, NaN guard.

Methods differ only in the loss they hand in (and the parameters it depends on). The loop owns
batching, the optimiser, the budget and progress display, so costs are comparable across methods.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor
from torch.optim.adamw import adamw as functional_adamw

from bnnbench.errors import DivergenceError, UsageError
from bnnbench.types import Budget, FitContext, Split

__all__ = ["AUGMENTATIONS", "MONITOR_SAMPLES", "LoopResult", "TrainConfig", "TrainStepper", "augment_images",
           "autocast", "evaluating", "loop_config", "planned_batches", "progress_bar", "split_budget", "train_loop"]


AUGMENTATIONS = ("none", "crop-flip", "resized-crop-flip-rotate")
# Posterior samples in the log predictive a sampling method hands a tuning trial's monitor each epoch: its
# validation score must see the spread the method learns (q's mean, or one dropout pass, scored the mean-field
# network: score-vi's trials then all sat at the warm-up's 0.275 on digits-mlp while the method's predictive reached
# 0.19), at a cost of a few forward passes over the validation split.
MONITOR_SAMPLES = 8
CROP_PADDING = 4  # pixels; the standard CIFAR augmentation's
# torchvision's RandomResizedCrop defaults (area share, log aspect ratio) and the BayesDLL protocol's rotation
RESIZED_CROP_SCALE = (0.08, 1.0)
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)
ROTATION_DEGREES = 30.0


def augment_images(x: Tensor, kind: str, generator: torch.Generator) -> Tensor:
    """Training-time augmentation of an image batch (N, C, H, W) on its own device, one gather for the
    whole batch (no per-image Python, no CPU workers): "crop-flip" takes a random H x W crop of the image
    zero-padded by CROP_PADDING on each side and mirrors it left-right with probability 1/2;
    "resized-crop-flip-rotate" is `resized_crop_flip_rotate`."""
    if kind == "none":
        return x
    if kind == "resized-crop-flip-rotate":
        return resized_crop_flip_rotate(x, generator)
    n, _, height, width = x.shape
    padded = torch.nn.functional.pad(x, (CROP_PADDING,) * 4)
    shifts = torch.randint(0, 2 * CROP_PADDING + 1, (2, n), device=x.device, generator=generator)
    rows = shifts[0, :, None] + torch.arange(height, device=x.device)
    cols = shifts[1, :, None] + torch.arange(width, device=x.device)
    flip = torch.rand(n, device=x.device, generator=generator) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    # advanced indices around a slice: the result is (N, H, W, C)
    crops = padded[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return crops.permute(0, 3, 1, 2)


def resized_crop_flip_rotate(x: Tensor, generator: torch.Generator) -> Tensor:
    """The fine-grained transfer protocol's training augmentation (RandomResizedCrop to the image's size, a
    left-right flip with probability 1/2, a rotation uniform in ±ROTATION_DEGREES), as one affine resampling of the
    batch (`grid_sample`, bilinear) rather than three per-image transforms on CPU workers.

    A crop's area share and log aspect ratio are drawn as torchvision's are; where the box would leave the image its
    sides are clipped to it (torchvision redraws up to ten times, then takes a centre crop). The rotation turns the
    crop's content about its centre; the corners it uncovers show the image around the crop, zeros past its edge
    (torchvision fills them with zeros). Images come in already resized to their final size (the data source's
    Resize + CenterCrop), so crops are taken from that square, not from the original photograph."""
    n = x.shape[0]
    uniform = torch.rand(5, n, device=x.device, generator=generator, dtype=torch.float32)
    low, high = RESIZED_CROP_SCALE
    area = low + (high - low) * uniform[0]
    log_low, log_high = math.log(RESIZED_CROP_RATIO[0]), math.log(RESIZED_CROP_RATIO[1])
    ratio = torch.exp(log_low + (log_high - log_low) * uniform[1])
    half_width = torch.sqrt(area * ratio).clamp(max=1.0)  # the crop's half-sides in [-1, 1] coordinates
    half_height = torch.sqrt(area / ratio).clamp(max=1.0)
    centre_x = (1 - half_width) * (2 * uniform[2] - 1)
    centre_y = (1 - half_height) * (2 * uniform[3] - 1)
    angle = torch.deg2rad(ROTATION_DEGREES * (2 * uniform[4] - 1))
    flip = torch.where(torch.rand(n, device=x.device, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # output (u, v) -> input (x, y): mirror u, rotate, scale to the crop, move to its centre
    theta = torch.stack([torch.stack([half_width * cos * flip, -half_width * sin, centre_x], 1),
                         torch.stack([half_height * sin * flip, half_height * cos, centre_y], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def loop_config(settings: TrainConfig, **changes) -> TrainConfig:
    """The shared-loop settings of `settings` (a method's hyper-parameters, which extend TrainConfig) with
    `changes`, for a method phase that trains with other settings (a warm-up, an SGD phase)."""
    values = {f.name: getattr(settings, f.name) for f in fields(TrainConfig)}
    return TrainConfig(**(values | changes))


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings shared by all methods; a task's [train] table sets its defaults.

    AdamW's decoupled weight decay stands in for a Gaussian prior on the weights (MAP).
    """

    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    grad_clip: float = 0.0  # maximum global gradient norm; 0 turns clipping off
    schedule: str = "cosine"  # "cosine" decays to 0 over the planned steps; "constant" keeps lr
    augment: str = "none"  # "crop-flip": random 4-px padded crops and horizontal flips of training images;
    # "resized-crop-flip-rotate": the fine-grained transfer protocol's (`resized_crop_flip_rotate`)

    def __post_init__(self) -> None:
        # The ranges of the loop's own settings. Types were checked at the door (`bnnbench.schema`, through
        # `load_task` and `bind_for_task`), before any of these is built.
        if self.schedule not in ("cosine", "constant"):
            raise UsageError(f"unknown schedule '{self.schedule}'; valid choices: constant, cosine")
        if self.augment not in AUGMENTATIONS:
            raise UsageError(f"unknown augment '{self.augment}'; valid choices: {', '.join(AUGMENTATIONS)}")
        for name, valid, rule in (("batch_size", self.batch_size >= 1, "at least 1"), ("lr", self.lr > 0, "positive"),
                                  ("weight_decay", self.weight_decay >= 0, "non-negative"),
                                  ("grad_clip", self.grad_clip >= 0, "non-negative (0 turns clipping off)")):
            if not valid:
                raise UsageError(f"hyper-parameter '{name}' must be {rule}, got {getattr(self, name)!r}")


@dataclass
class LoopResult:
    """What the loop did: mini-batch steps and epochs run, wall seconds, and per epoch the mean training
    loss, the wall seconds since the start, and the method's diagnostics (from `on_epoch`)."""

    steps: int
    epochs: int
    seconds: float
    epoch_losses: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    epoch_diagnostics: list[dict[str, float]] = field(default_factory=list)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (fast matmuls), a no-op context elsewhere (exact CPU runs)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@contextmanager
def evaluating(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`module` in eval mode, back in train mode after: a tuning trial's monitor scores a network mid-training."""
    module.eval()
    try:
        yield module
    finally:
        module.train()


def progress_bar(enabled: bool):
    """A rich progress bar on stderr, removed when done; off with --quiet and when stderr is no terminal
    (logs of `make run` or CI get no blank lines from it)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[status]}"), console=console, transient=True,
                    disable=not (enabled and console.is_terminal))


def planned_batches(n: int, batch_size: int, budget: Budget) -> int:
    """The mini-batches a loop over `n` rows will run within `budget` (ignoring `max_seconds`)."""
    steps_per_epoch = math.ceil(n / batch_size)
    planned = [limit for limit in (budget.max_steps, budget.max_epochs and budget.max_epochs * steps_per_epoch)
               if limit]
    if not planned:
        raise UsageError("the budget needs max_epochs or max_steps")
    return min(planned)


def split_budget(budget: Budget, fraction: float) -> tuple[Budget | None, Budget]:
    """(warm-up, VI) budgets: `fraction` of each limit for the warm-up (None when it rounds to nothing)."""
    def part(limit, share):
        return None if limit is None else share(limit)

    warm = Budget(max_epochs=part(budget.max_epochs, lambda e: math.floor(fraction * e)),
                  max_steps=part(budget.max_steps, lambda s: math.floor(fraction * s)),
                  max_seconds=part(budget.max_seconds, lambda t: fraction * t))
    if not (warm.max_epochs or warm.max_steps) or 0 in (warm.max_epochs, warm.max_steps):
        return None, budget  # a limit that rounds to 0 ends the warm-up before its first step
    rest = Budget(max_epochs=part(budget.max_epochs, lambda e: e - warm.max_epochs),
                  max_steps=part(budget.max_steps, lambda s: s - warm.max_steps),
                  max_seconds=part(budget.max_seconds, lambda t: t - warm.max_seconds),
                  n_eval_samples=budget.n_eval_samples)
    return warm, rest


def adamw(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    """The shared optimiser. foreach: one kernel per operation for all tensors (CUDA's default, not the
    CPU's), so a step costs the same few launches for an MLP or a ViT and for a method's extra tensors."""
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, foreach=True)


def _schedule(kind: str, total_steps: int) -> Callable[[int], float]:
    """The learning rate's factor at optimiser step `step` (0-based): cosine decay to 0 over `total_steps`, or 1."""
    if kind == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return lambda step: 1.0


class ClosedFormAdamW:
    """AdamW for parameters whose gradients come in closed form (no backward pass), as a few flat vectors
    stepped several times per mini-batch (score-vi's inner steps): torch's functional AdamW with its fused
    kernel, one per tensor, the rate set by the loop's schedule. torch.optim.Optimizer's per-step bookkeeping
    (hooks, state lookups, the scheduler) costs more than such an update; the algorithm and the defaults
    (betas 0.9, 0.999, eps 1e-8) are AdamW's, and so are the results up to rounding."""

    def __init__(self, parameters: list[Tensor], config: TrainConfig) -> None:
        self.parameters, self.config = parameters, config
        self.exp_avgs = [torch.zeros_like(p) for p in parameters]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in parameters]
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in parameters]

    def step(self, gradients: list[Tensor], lr: float) -> None:
        if self.config.grad_clip > 0:  # as clip_grad_norm_: scale by max_norm / (norm + 1e-6) when above
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gradients]))
            torch._foreach_mul_(gradients, (self.config.grad_clip / (norm + 1e-6)).clamp(max=1.0))
        with torch.no_grad():
            functional_adamw(self.parameters, gradients, self.exp_avgs, self.exp_avg_sqs, [], self.steps,
                             fused=True, amsgrad=False, beta1=0.9, beta2=0.999, lr=lr,
                             weight_decay=self.config.weight_decay, eps=1e-8, maximize=False)


class TrainStepper:
    """The shared loop's state, for a method to drive one mini-batch at a time (`train_loop` drives it whole).

    For each mini-batch of `epoch_batches()`, `step(x, y)` calls `on_batch(x, y)` once (a method's per-batch work
    that is not an optimiser step, e.g. score-vi drawing samples and their scores), then takes `inner_steps`
    optimiser steps on `loss_fn(x, y)`. The budget counts mini-batches; the learning-rate schedule counts optimiser
    steps. `end_epoch()` records the epoch (and `on_epoch()`'s diagnostics) and is the NaN guard.
    Shuffling uses a generator seeded from `context.seed`, so CPU runs repeat exactly.
    `parameters` are tensors or optimiser parameter groups (dicts, e.g. with their own weight decay);
    `make_optimizer(groups, config)` builds the optimiser (AdamW unless a method's phase needs another).
    With `closed_form`, `loss_fn` returns the loss and the gradients of `parameters` (in order), so a step
    needs no backward pass; its loss may be None (left out of the epoch's mean loss), but not at every step.
    `predictive(x)`: the log predictive (S, B, ...) of the state being trained, which a tuning trial's monitor
    (`context.monitor`) scores on the validation split after each epoch; it may stop the run there. Without
    `report_to_trial` (a phase other runs share) it only checks for divergence.
    """

    def __init__(
        self,
        parameters: Iterable[Tensor] | Iterable[dict],
        loss_fn: Callable[[Tensor, Tensor], Tensor] | Callable[[Tensor, Tensor], tuple[Tensor, list[Tensor]]],
        data: Split,
        config: TrainConfig,
        budget: Budget,
        context: FitContext,
        description: str = "train",
        *,
        on_batch: Callable[[Tensor, Tensor], None] | None = None,
        inner_steps: int = 1,
        on_epoch: Callable[[], dict[str, float]] | None = None,
        make_optimizer: Callable[[list[dict], TrainConfig], torch.optim.Optimizer] = adamw,
        closed_form: bool = False,
        predictive: Callable[[Tensor], Tensor] | None = None,
        report_to_trial: bool = True,
    ) -> None:
        groups = _parameter_groups(parameters)
        self.parameters = [tensor for group in groups for tensor in group["params"]]
        self.loss_fn, self.on_batch, self.on_epoch, self.inner_steps = loss_fn, on_batch, on_epoch, inner_steps
        self.config, self.description, self.closed_form = config, description, closed_form
        self.device, self.show_progress = context.device, context.show_progress
        self.monitor, self.predictive, self.report_to_trial = context.monitor, predictive, report_to_trial
        self.x, self.y = data.x.to(self.device), data.y.to(self.device)
        self.total_batches = planned_batches(len(self.y), config.batch_size, budget)
        self.factor = _schedule(config.schedule, self.total_batches * inner_steps)
        self.schedule = None
        if closed_form:
            if len(groups) != 1 or set(groups[0]) != {"params"}:
                raise ValueError("closed-form gradients take plain parameters, not parameter groups")
            self.optimizer = ClosedFormAdamW(self.parameters, config)
        else:
            self.optimizer = make_optimizer(groups, config)
            self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.factor)
        self.optimizer_steps = 0
        self.generator = torch.Generator().manual_seed(context.seed)
        self.augment_generator = torch.Generator(self.device).manual_seed(context.seed)
        self.result = LoopResult(steps=0, epochs=0, seconds=0.0)
        self.start = time.perf_counter()
        self.deadline = self.start + budget.max_seconds if budget.max_seconds else math.inf
        self.loss_sum, self.losses = torch.zeros((), device=self.device), 0  # this epoch's, summed on the device

    def spent(self) -> bool:
        """Whether the budget is spent: all planned mini-batches run, or the deadline passed."""
        return self.result.steps >= self.total_batches or time.perf_counter() >= self.deadline

    def epoch_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """One shuffled pass's (augmented) mini-batches, until the epoch ends or the budget is spent."""
        order = torch.randperm(len(self.y), generator=self.generator).to(self.device)
        self.loss_sum, self.losses = torch.zeros((), device=self.device), 0
        for begin in range(0, len(self.y), self.config.batch_size):
            if self.spent():
                return
            rows = order[begin:begin + self.config.batch_size]
            yield augment_images(self.x[rows], self.config.augment, self.augment_generator), self.y[rows]

    def step(self, x: Tensor, y: Tensor) -> None:
        """One mini-batch: `on_batch`, then `inner_steps` optimiser steps."""
        if self.on_batch is not None:
            with autocast(self.device):
                self.on_batch(x, y)
        for _ in range(self.inner_steps):
            self.optimizer_step(x, y)
        self.result.steps += 1

    def optimizer_step(self, x: Tensor, y: Tensor) -> None:
        with autocast(self.device):
            loss = self.loss_fn(x, y)
        if self.closed_form:
            loss, gradients = loss
            self.optimizer.step(gradients, self.config.lr * self.factor(self.optimizer_steps))
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.parameters, self.config.grad_clip)
            self.optimizer.step()
            self.schedule.step()
        self.optimizer_steps += 1
        if loss is not None:  # a closed-form step may leave its value out (a diagnostic)
            self.loss_sum += loss.detach().float()
            self.losses += 1

    def end_epoch(self) -> float | None:
        """Record the epoch that `epoch_batches` ran and return its mean loss; None when it ran no step (the
        deadline passed between the budget check and its first batch).

        Raises:
            DivergenceError: the epoch's mean loss is not finite, or the monitor found the run diverging.
            RunPruned: the monitor's pruner stopped the run.
        """
        if self.losses == 0:
            return None
        epoch_loss = (self.loss_sum / self.losses).item()  # one host sync per epoch, not per step
        self.result.epochs += 1
        self.result.epoch_losses.append(epoch_loss)
        self.result.epoch_seconds.append(time.perf_counter() - self.start)
        if self.on_epoch is not None:
            self.result.epoch_diagnostics.append(self.on_epoch())
        if not math.isfinite(epoch_loss):
            raise DivergenceError(
                f"{self.description}: training loss is {epoch_loss} in epoch {self.result.epochs} "
                f"(lr={self.config.lr}); lower the learning rate or set grad_clip")
        if self.monitor is not None and self.predictive is not None:
            self.monitor.end_epoch(self.predictive, report=self.report_to_trial)
        return epoch_loss

    def finish(self) -> LoopResult:
        """What the loop did, its wall seconds counted up to now."""
        self.result.seconds = time.perf_counter() - self.start
        return self.result


def _parameter_groups(parameters: Iterable[Tensor] | Iterable[dict]) -> list[dict]:
    """Optimiser parameter groups: the groups given, then one group of the plain tensors."""
    items = list(parameters)
    plain = [item for item in items if not isinstance(item, dict)]
    return [item for item in items if isinstance(item, dict)] + ([{"params": plain}] if plain else [])


def train_loop(*args: Any, **kwargs: Any) -> LoopResult:
    """Minimise `loss_fn(x_batch, y_batch)` over `parameters` within `budget`: a `TrainStepper`, built from these
    same arguments (its docstring describes them), driven epoch by epoch to the end of the budget, with a progress
    bar.

    Raises:
        DivergenceError: the mean loss of an epoch is not finite.
    """
    stepper = TrainStepper(*args, **kwargs)
    with progress_bar(stepper.show_progress) as progress:
        bar = progress.add_task(stepper.description, total=stepper.total_batches, status="")
        while not stepper.spent():
            for x_batch, y_batch in stepper.epoch_batches():
                stepper.step(x_batch, y_batch)
                progress.advance(bar)
            epoch_loss = stepper.end_epoch()
            if epoch_loss is None:
                break
            progress.update(bar, status=f"epoch {stepper.result.epochs} loss {epoch_loss:.4f}")
    return stepper.finish()
