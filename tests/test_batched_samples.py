"""Posterior samples run in one batched forward (vmap over stacked weights) must give what a loop of one forward
per sample gives, to 1e-5 in float32, on every network family the digits tasks use (MLP, CNN with BatchNorm,
timm ViT): the VI predictive, the stacked weights behind ensembles and SWAG, and sampled Laplace's linearisation.
Which of the two runs is a matter of speed (`params.batched_passes`: the loop on a CPU, batched on CUDA)."""

from __future__ import annotations

import pytest
import torch

from bnnbench.data import load_data
from bnnbench.likelihoods import get_likelihood
from bnnbench.methods.laplace.sampled import Linearisation
from bnnbench.methods.vi import common
from bnnbench.methods.vi.family import DiagonalGaussian
from bnnbench.models import create_model
from bnnbench.params import StackedWeights
from bnnbench.tasks import load_task

TASKS = ["digits-mlp", "digits-cnn", "digits-vit"]
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def _network(task_name: str, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, object]:
    task = load_task(task_name)
    data = load_data(task.data).bundle
    torch.manual_seed(seed)
    model = create_model(task.model, data.input_shape, data.num_outputs).eval()
    return model, data.train.x[:24], get_likelihood(task.likelihood, task.likelihood_options)


def _posterior(model: torch.nn.Module, std: float) -> tuple[DiagonalGaussian, dict]:
    """A Gaussian over every weight but the first tensor (kept fixed, as `variational_params` can)."""
    named = {name: value.detach() for name, value in model.named_parameters()}
    first = next(iter(named))
    fixed = {first: named.pop(first)}
    return DiagonalGaussian.isotropic(named, std), fixed


@pytest.mark.parametrize("task_name", TASKS)
def test_vi_predictive_batched_equals_loop(task_name, monkeypatch):
    model, x, likelihood = _network(task_name)
    posterior, fixed = _posterior(model, 0.05)
    predictive = common.GaussianPosteriorPredictive(model, posterior, fixed, likelihood)
    torch.manual_seed(1)
    draws = posterior.draws(6)
    monkeypatch.setenv("BNNBENCH_SAMPLE_PASSES", "batched")
    batched = predictive.outputs(x, draws)
    assert predictive.stack.vectorised, "vmap should run these networks"
    monkeypatch.setenv("BNNBENCH_SAMPLE_PASSES", "loop")
    looped = predictive.outputs(x, draws)
    monkeypatch.setenv("BNNBENCH_SAMPLE_PASSES", "auto")  # on the CPU: the loop
    torch.testing.assert_close(predictive.outputs(x, draws), looped, rtol=0, atol=0)
    assert batched.shape == (6, len(x), 10)
    torch.testing.assert_close(batched, looped, **TOLERANCE)
    # and each row is the network at that draw, run on its own
    single = likelihood.log_predictive(torch.func.functional_call(model, {**fixed, **posterior.named(draws[3])}, (x,)))
    torch.testing.assert_close(batched[3], single, **TOLERANCE)
    # the draws differ: a batched pass that reused one sample's weights would pass the checks above only here
    assert (batched[0] - batched[1]).abs().max() > 1e-3


def test_vi_predict_splits_samples_into_passes_without_changing_them(monkeypatch):
    """More draws than fit in one pass go in several; the same draws (same seed) give the same predictive."""
    monkeypatch.setenv("BNNBENCH_SAMPLE_PASSES", "batched")
    model, x, likelihood = _network("digits-mlp")
    posterior, fixed = _posterior(model, 0.05)
    predictive = common.GaussianPosteriorPredictive(model, posterior, fixed, likelihood)
    torch.manual_seed(2)
    whole = predictive.predict(x, 7)
    monkeypatch.setattr(common, "MAX_ROWS", 2 * len(x))  # two draws a pass: passes of 2, 2, 2, 1
    torch.manual_seed(2)
    torch.testing.assert_close(predictive.predict(x, 7), whole, **TOLERANCE)
    assert predictive.predict(x, 0).shape == (1, len(x), 10)  # n_samples = 0: the mean


@pytest.mark.parametrize("task_name", TASKS)
def test_stacked_weights_batched_equals_loop(task_name):
    """What ensembles and SWAG run: K weight settings (here K initialisations) in one vmapped pass."""
    members = [_network(task_name, seed)[0] for seed in range(3)]
    x = _network(task_name)[1]
    stacked = StackedWeights.from_models(members)
    with torch.no_grad():
        batched = stacked.outputs_batched(x)
        looped = stacked.outputs_looped(x)
        direct = torch.stack([member(x) for member in members])
    torch.testing.assert_close(batched, looped, **TOLERANCE)
    torch.testing.assert_close(batched, direct, **TOLERANCE)


@pytest.mark.parametrize("task_name", TASKS)
def test_sampled_laplace_linearisation_batched_equals_loop(task_name):
    model, x, _ = _network(task_name)
    lin = Linearisation(model)
    offsets = 0.01 * torch.randn(4, lin.layout.size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        batched = lin.network_at(x, offsets)
        looped = torch.stack([lin._call(lin.theta + offset * lin.mask, x) for offset in offsets])
    torch.testing.assert_close(batched, looped, **TOLERANCE)
    pushed = lin.jvp(x, offsets)
    one_by_one = torch.stack([lin.jvp(x, offset[None])[0] for offset in offsets])
    torch.testing.assert_close(pushed, one_by_one, **TOLERANCE)


def test_sample_passes_setting_is_checked(monkeypatch):
    from bnnbench.errors import UsageError
    from bnnbench.params import batched_passes

    assert not batched_passes(torch.device("cpu")) and batched_passes(torch.device("cuda"))
    monkeypatch.setenv("BNNBENCH_SAMPLE_PASSES", "vmap")
    with pytest.raises(UsageError, match="unknown BNNBENCH_SAMPLE_PASSES 'vmap'; valid choices: auto, batched, loop"):
        batched_passes(torch.device("cpu"))



def test_a_bad_sample_passes_setting_stops_a_run_before_any_work(cli, results_dir, monkeypatch):
    monkeypatch.setenv("BNNBENCH_SAMPLE_PASSES", "vmap")
    result = cli("run", "--task", "digits-mlp", "--method", "score-vi", "--results-dir", str(results_dir))
    assert result.code == 2
    assert result.stderr.strip() == "error: unknown BNNBENCH_SAMPLE_PASSES 'vmap'; valid choices: auto, batched, loop"
    assert not results_dir.exists() or not any(results_dir.iterdir())
