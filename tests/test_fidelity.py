"""Fidelity tasks: a [posterior] table makes every method target one posterior (issue 21)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bnnbench.errors import UsageError
from bnnbench.methods import METHODS, build_method
from bnnbench.reference import linear_gaussian_posterior
from bnnbench.tasks import builtin_tasks_dir, load_task
from bnnbench.types import Budget, FitContext

BLR = builtin_tasks_dir() / "sanity-blr.toml"


def _fidelity_blr(tmp_path: Path, posterior: str, methods: str = "") -> Path:
    """sanity-blr's data, model and noise with a [posterior] table (and no per-method tables)."""
    text = BLR.read_text().split("\n[methods.")[0]
    path = tmp_path / "blr-fidelity.toml"
    path.write_text(text.replace('name = "sanity-blr"', 'name = "blr-fidelity"') + f"\n[posterior]\n{posterior}\n"
                    + methods)
    return path


def test_each_method_with_a_stated_prior_is_set_to_the_tasks_posterior(tmp_path):
    task = load_task(_fidelity_blr(tmp_path, "prior_std = 0.5"))
    settings = {name: build_method(name, task).hparams for name in METHODS.names()}
    for name in ("score-vi", "elbo-vi"):
        assert (settings[name].prior_std, settings[name].temperature, settings[name].prior_centre) == (0.5, 1.0, "zero")
    for name in ("laplace-ll", "laplace-all", "laplace-subnet"):
        assert (settings[name].tune, settings[name].prior_precision) == ("none", 4.0)
    assert (settings["sampled-laplace"].em_steps, settings["sampled-laplace"].prior_precision) == (0, 4.0)
    assert settings["swag"].prior_precision == 4.0
    # without a [posterior] table nothing is forced
    assert build_method("laplace-ll", load_task("digits-mlp")).hparams.tune == "val"


def test_a_setting_that_contradicts_the_posterior_table_is_refused(tmp_path):
    task = load_task(_fidelity_blr(tmp_path, "prior_std = 0.5", "[methods.laplace-ll]\ntune = \"val\"\n"))
    with pytest.raises(UsageError, match=re.escape("method 'laplace-ll' setting tune = 'val' contradicts the "
                                                   "task's [posterior] table, which fixes it to 'none'")):
        build_method("laplace-ll", task)
    with pytest.raises(UsageError, match="fixes it to 0.5"):
        build_method("elbo-vi", task, {"prior_std": 1.0})
    hot = load_task(_fidelity_blr(tmp_path, "prior_std = 0.5\ntemperature = 0.5"))
    assert build_method("score-vi", hot).hparams.temperature == 0.5
    with pytest.raises(UsageError, match="'swag' has no likelihood temperature"):
        build_method("swag", hot)


@pytest.mark.parametrize("method", ["map", "ensemble"])
def test_map_training_finds_the_mode_of_the_tasks_posterior_not_weight_decays(tmp_path, method):
    """Linear regression with a known noise: the mode of the [posterior] (prior std 0.5) in closed form. AdamW's
    decoupled weight decay would not land there; the explicit prior term does."""
    from bnnbench.data import load_data
    from bnnbench.models import create_model

    task = load_task(_fidelity_blr(tmp_path, "prior_std = 0.5"))
    bound = build_method(method, task, {"n_members": 2} if method == "ensemble" else None)
    data = load_data(task.data, str(task.path)).bundle
    torch.manual_seed(0)
    model = create_model(task.model, data.input_shape, data.num_outputs, str(task.path))
    predictive, _ = bound.fit(task, model, data, Budget(max_epochs=3000), FitContext(torch.device("cpu"), 0, False))
    exact = linear_gaussian_posterior(data.train.x.double().numpy(), data.train.y.double().numpy(), 0.7, 0.5)
    wide = linear_gaussian_posterior(data.train.x.double().numpy(), data.train.y.double().numpy(), 0.7, 1.0)
    x = data.train.x[:50]
    fitted = predictive.predict(x, 1)[..., 0].double().mean(0).squeeze(-1).numpy()
    design = np.concatenate([x.double().numpy(), np.ones((len(x), 1))], axis=1)
    assert np.abs(fitted - design @ exact.mean).max() < 2e-3
    assert np.abs(design @ wide.mean - design @ exact.mean).max() > 10 * 2e-3  # the test can tell the priors apart
