"""The shared training loop: it minimises what it is given, honours the budget, and stops on NaN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnnbench.errors import DivergenceError
from bnnbench.train import TrainConfig, train_loop
from bnnbench.types import Budget, FitContext, Split

CONTEXT = FitContext(device=torch.device("cpu"), seed=0, show_progress=False)


def regression_data(n: int = 200, d: int = 5):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=generator)
    y = x @ torch.arange(1.0, d + 1) + 0.5 + 0.1 * torch.randn(n, generator=generator)
    return Split(x, y)


def least_squares(parameters):
    weight, bias = parameters

    def loss(x, y):
        return ((x @ weight + bias - y) ** 2).mean()

    return loss


def test_loop_reaches_the_least_squares_solution():
    data = regression_data()
    weight, bias = torch.zeros(5, requires_grad=True), torch.zeros((), requires_grad=True)
    config = TrainConfig(lr=0.05, weight_decay=0.0, batch_size=32)
    result = train_loop([weight, bias], least_squares([weight, bias]), data, config, Budget(max_epochs=300), CONTEXT)
    design = np.hstack([data.x.numpy(), np.ones((len(data), 1))])
    exact, *_ = np.linalg.lstsq(design, data.y.numpy(), rcond=None)
    np.testing.assert_allclose(np.append(weight.detach().numpy(), bias.item()), exact, atol=2e-3)
    assert result.epochs == 300 and result.steps == 300 * 7
    assert result.epoch_losses[-1] < result.epoch_losses[0] / 100


def test_max_steps_and_seconds_stop_training():
    data = regression_data()
    weight, bias = torch.zeros(5, requires_grad=True), torch.zeros((), requires_grad=True)
    config = TrainConfig(batch_size=32)
    by_steps = train_loop([weight, bias], least_squares([weight, bias]), data, config,
                          Budget(max_epochs=100, max_steps=10), CONTEXT)
    assert (by_steps.steps, by_steps.epochs) == (10, 2)
    by_time = train_loop([weight, bias], least_squares([weight, bias]), data, config,
                         Budget(max_epochs=10**6, max_seconds=0.3), CONTEXT)
    assert 0.3 <= by_time.seconds < 1.5 and by_time.steps < 10**6 * 7


def test_same_seed_same_result_other_seed_other_order():
    def fit(seed):
        torch.manual_seed(0)
        model = torch.nn.Linear(5, 1)
        train_loop(model.parameters(), lambda x, y: ((model(x).squeeze(-1) - y) ** 4).mean(), regression_data(),
                   TrainConfig(batch_size=16), Budget(max_epochs=3), FitContext(torch.device("cpu"), seed, False))
        return model.weight.detach().clone()

    assert torch.equal(fit(1), fit(1))
    assert not torch.equal(fit(1), fit(2))


def test_non_finite_loss_raises_divergence():
    data = regression_data()
    weight = torch.zeros(5, requires_grad=True)
    with pytest.raises(DivergenceError, match="training loss is nan in epoch 1"):
        train_loop([weight], lambda x, y: (x @ weight).sum() * float("nan"), data, TrainConfig(),
                   Budget(max_epochs=2), CONTEXT)


def test_a_warm_up_limit_that_rounds_to_zero_means_no_warm_up():
    """Both limits bind (first reached stops): 0 warm-up epochs is no warm-up, even with steps to spare."""
    from bnnbench.train import split_budget
    from bnnbench.types import Budget

    assert split_budget(Budget(max_epochs=1, max_steps=20), 0.5) == (None, Budget(max_epochs=1, max_steps=20))
    warm, rest = split_budget(Budget(max_epochs=4, max_steps=20), 0.5)
    assert (warm.max_epochs, warm.max_steps, rest.max_epochs, rest.max_steps) == (2, 10, 2, 10)


@pytest.mark.parametrize(("schedule", "grad_clip", "weight_decay"), [("cosine", 0.0, 0.0), ("cosine", 0.5, 0.01),
                                                                     ("constant", 0.0, 0.0)])
def test_closed_form_gradients_take_the_same_adamw_steps(schedule, grad_clip, weight_decay):
    """A loss handed in with its gradient (no backward pass, `ClosedFormAdamW`) must follow the path of the
    same loss through autograd and torch.optim.AdamW with the scheduler: same schedule, clipping, decay and
    several optimiser steps per mini-batch."""
    data = regression_data()
    config = TrainConfig(lr=0.05, weight_decay=weight_decay, batch_size=32, schedule=schedule, grad_clip=grad_clip)
    paths = []
    for closed_form in (False, True):
        weight, bias = torch.zeros(5, requires_grad=True), torch.zeros(1, requires_grad=True)
        autograd_loss = least_squares([weight, bias])

        def with_gradients(x, y, weight=weight, bias=bias):
            residual = (x @ weight + bias - y).detach()
            return (residual**2).mean(), [2 * x.T @ residual / len(y), 2 * residual.mean().reshape(1)]

        train_loop([weight, bias], with_gradients if closed_form else autograd_loss, data, config,
                   Budget(max_epochs=5), CONTEXT, inner_steps=3, closed_form=closed_form)
        paths.append(torch.cat([weight.detach(), bias.detach()]))
    torch.testing.assert_close(paths[1], paths[0], rtol=1e-5, atol=1e-6)
    assert paths[0].abs().min() > 0.3  # every parameter moved well away from its start at 0
