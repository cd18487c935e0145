"""Every method of issue 5 fits unchanged on every digits network (MLP, CNN, timm ViT) and returns finite
per-sample log-probabilities of the evaluator's shape."""

from __future__ import annotations

import pytest
import torch

from bnnbench.data import load_data
from bnnbench.methods import build_method
from bnnbench.models import create_model
from bnnbench.tasks import load_task
from bnnbench.types import Budget, FitContext

SAMPLES = {"ensemble": 5, "mc-dropout": 6, "swag": 6, "rank1": 8}  # ensemble: K; rank1: K * ceil(6 / K)


@pytest.mark.parametrize("task_name", ["digits-mlp", "digits-cnn", "digits-vit"])
@pytest.mark.parametrize("method", list(SAMPLES))
def test_method_fits_and_predicts_on_every_network(method, task_name):
    task = load_task(task_name)
    bundle = load_data(task.data).bundle
    torch.manual_seed(0)
    model = create_model(task.model, bundle.input_shape, bundle.num_outputs)
    overrides = {"snapshots_per_epoch": 4.0} if method == "swag" else {}
    predictive, info = build_method(method, task, overrides).fit(
        task, model, bundle, Budget(max_epochs=2), FitContext(torch.device("cpu"), 0, False))
    log_probs = predictive.predict(bundle.val.x[:7], n_samples=6)
    assert log_probs.shape == (SAMPLES[method], 7, 10) and torch.isfinite(log_probs).all()
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(SAMPLES[method], 7))
    if method != "ensemble":  # sampled predictives: draws differ
        assert (log_probs[0] - log_probs[-1]).abs().max() > 1e-6
