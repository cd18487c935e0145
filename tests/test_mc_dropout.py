"""MC dropout: rate 0 is the deterministic network, inserted dropout keeps the model's parameters, and the
variance of a T-pass average falls as 1/T."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnnbench.likelihoods import Categorical
from bnnbench.methods.mc_dropout import enable_dropout
from bnnbench.methods.stochastic import StochasticForwardPredictive
from bnnbench.models import create_model
from bnnbench.tasks import load_task


def _model(task: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(load_task(task).model, (1, 8, 8), 10).eval()


@pytest.mark.parametrize("task", ["digits-mlp", "digits-cnn", "digits-vit"])
def test_rate_zero_reproduces_the_deterministic_network(task):
    model = _model(task)
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        reference = model(x)
    names = [name for name, _ in model.named_parameters()]
    dropouts, where = enable_dropout(model, rate=0.0, placement="insert")
    assert where["n_layers"] == sum(isinstance(m, nn.Linear) for m in model.modules()) == len(dropouts)
    assert [name for name, _ in model.named_parameters()] == names  # hooks, not new modules
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference, rtol=0, atol=0)


def test_inserted_dropout_stays_on_in_eval_mode_and_existing_layers_are_used():
    model = _model("digits-mlp")
    enable_dropout(model, rate=0.5, placement="auto")
    model.eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert (model(x) - model(x)).abs().max() > 1e-3
    own = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Dropout(0.3), nn.Linear(8, 10))
    dropouts, where = enable_dropout(own, rate=0.1, placement="auto")
    assert where["placement"] == "existing" and dropouts == [own[2]] and where["rates"] == [0.3]


def test_variance_of_the_mc_average_falls_as_one_over_t():
    model = _model("digits-mlp")
    enable_dropout(model, rate=0.3, placement="insert")
    x = torch.randn(1, 1, 8, 8)
    averages = {}
    for passes in (1, 16):
        predictive = StochasticForwardPredictive(model, Categorical(), lambda n: n)
        torch.manual_seed(1)
        draws = torch.stack([predictive.predict(x, passes)[:, 0].exp().mean(0) for _ in range(400)])  # (400, C)
        averages[passes] = draws.var(0).sum().item()
    assert averages[1] / averages[16] == pytest.approx(16, rel=0.25)
