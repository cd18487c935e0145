"""Deep ensembles: the mixture against its members (Jensen), and the vmapped training path against the loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bnnbench.data import load_data
from bnnbench.evaluate import predict_mixture
from bnnbench.likelihoods import Categorical
from bnnbench.methods import build_method
from bnnbench.models import create_model
from bnnbench.params import StackedWeights
from bnnbench.tasks import load_task
from bnnbench.types import Budget, FitContext

CPU = FitContext(torch.device("cpu"), seed=0, show_progress=False)


def _fit(task_name: str = "digits-mlp", epochs: int = 3, **overrides):
    task = load_task(task_name)
    loaded = load_data(task.data)
    torch.manual_seed(0)
    model = create_model(task.model, loaded.bundle.input_shape, loaded.bundle.num_outputs)
    predictive, info = build_method("ensemble", task, overrides).fit(task, model, loaded.bundle,
                                                                     Budget(max_epochs=epochs), CPU)
    return predictive, info, loaded


def test_mixture_nll_is_at_most_the_mean_member_nll_and_members_differ():
    predictive, info, loaded = _fit(n_members=4)
    assert info.extra["training_path"] == "vmap"
    test = loaded.test
    member_log_probs = predictive.predict(test.x, n_samples=32).double()  # (K, B, C) whatever n_samples is
    assert member_log_probs.shape == (4, len(test), 10)
    targets = test.y[None, :, None].expand(4, -1, 1)
    member_nll = -member_log_probs.gather(2, targets)[..., 0]  # (K, B)
    assert (member_nll[1:] - member_nll[0]).abs().mean() > 1e-2  # independently initialised members differ
    mixture = predict_mixture(predictive, Categorical(), test, 32, 128, torch.device("cpu"))  # the evaluator's
    mixture_nll = -mixture[np.arange(len(test)), test.y.numpy()]
    mean_member = member_nll.mean(0).numpy()
    assert np.all(mixture_nll <= mean_member + 1e-12)  # Jensen, per example
    assert mixture_nll.mean() < mean_member.mean() - 1e-3  # strictly, on average: the members disagree
    np.testing.assert_allclose(mixture_nll, -np.log(np.exp(-member_nll.numpy()).mean(0)), rtol=1e-10)


@pytest.mark.parametrize("data_order", ["independent", "shared"])
def test_vmapped_training_equals_the_member_loop(data_order):
    results = {}
    for path in ("vmap", "loop"):
        predictive, info, loaded = _fit(epochs=2, n_members=3, vectorise=path, data_order=data_order)
        assert info.extra["training_path"] == path
        results[path] = predictive.predict(loaded.test.x[:64], n_samples=1)
    torch.testing.assert_close(results["vmap"], results["loop"], atol=1e-4, rtol=1e-4)
    assert (results["vmap"][0] - results["vmap"][1]).abs().max() > 1e-2


def test_vit_members_train_vmapped():
    predictive, info, loaded = _fit("digits-vit", epochs=1, n_members=2)
    assert info.extra["training_path"] == "vmap" and predictive.predict(loaded.test.x[:8], 1).shape == (2, 8, 10)


def test_batchnorm_blocks_the_vmapped_path():
    models = [nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)) for _ in range(2)]
    assert "BatchNorm" in StackedWeights.from_models(models).vmap_blocker(torch.randn(2, 3), training=True)
    plain = [nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)) for _ in range(2)]
    assert StackedWeights.from_models(plain).vmap_blocker(torch.randn(2, 3), training=True) == ""
