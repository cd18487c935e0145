"""Fidelity tasks: a [posterior] table makes every method target one posterior (issue 21)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bnnbench.errors import UsageError
from bnnbench.methods import METHODS, build_method
from bnnbench.package_files import builtin_tasks_dir
from bnnbench.reference import linear_gaussian_posterior
from bnnbench.tasks import load_task
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
    predictive, _ = bound.fit(task, model, data, Budget(max_epochs=1000), FitContext(torch.device("cpu"), 0, False))
    exact = linear_gaussian_posterior(data.train.x.double().numpy(), data.train.y.double().numpy(), 0.7, 0.5)
    wide = linear_gaussian_posterior(data.train.x.double().numpy(), data.train.y.double().numpy(), 0.7, 1.0)
    x = data.train.x[:50]
    fitted = predictive.predict(x, 1)[..., 0].double().mean(0).squeeze(-1).numpy()
    design = np.concatenate([x.double().numpy(), np.ones((len(x), 1))], axis=1)
    assert np.abs(fitted - design @ exact.mean).max() < 2e-3
    assert np.abs(design @ wide.mean - design @ exact.mean).max() > 10 * 2e-3  # the test can tell the priors apart


# --- predictive fidelity against an HMC reference -------------------------------------------------------------------

def test_agreement_and_total_variation_match_hand_computed_values():
    from bnnbench.metrics import top_class_agreement, total_variation

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=30)
    reference = rng.dirichlet(np.ones(4), size=30)
    agree = sum(int(np.argmax(p) == np.argmax(r)) for p, r in zip(probs, reference, strict=True)) / 30
    distance = sum(0.5 * sum(abs(a - b) for a, b in zip(p, r, strict=True))
                   for p, r in zip(probs, reference, strict=True)) / 30
    assert top_class_agreement(np.log(probs), reference) == pytest.approx(agree, abs=1e-12)
    assert total_variation(np.log(probs), reference) == pytest.approx(distance, abs=1e-12)
    assert top_class_agreement(np.log(reference), reference) == 1.0 and total_variation(np.log(reference),
                                                                                        reference) < 1e-12


def test_w2_of_gaussian_predictives_matches_the_quantile_integral():
    """W2² between 1-D laws is ∫ (F⁻¹(u) − G⁻¹(u))² du; computed here by quadrature on scipy's quantiles."""
    from scipy import integrate, stats

    from bnnbench.metrics import gaussian_w2

    mean, var = np.array([[0.3], [-1.0]]), np.array([[0.5], [2.0]])
    ref_mean, ref_var = np.array([[0.0], [-0.2]]), np.array([[1.5], [0.1]])
    by_quadrature = [math_sqrt(integrate.quad(lambda u, i=i: (stats.norm.ppf(u, mean[i, 0], var[i, 0] ** 0.5)
                                                              - stats.norm.ppf(u, ref_mean[i, 0], ref_var[i, 0] ** 0.5))
                                              ** 2, 0, 1, limit=200)[0]) for i in range(2)]
    assert gaussian_w2(mean, var, ref_mean, ref_var) == pytest.approx(np.mean(by_quadrature), rel=1e-6)


def math_sqrt(value: float) -> float:
    return float(np.sqrt(value))


DIGITS_FIDELITY = """
name = "tiny-fidelity"
version = {version}
description = "digits MLP with a fixed prior (test task)"
likelihood = "categorical"
[data]
source = "digits"
[model]
name = "mlp"
hidden = [16]
[budget]
max_epochs = 3
n_eval_samples = 4
[eval]
corruptions = "none"
[posterior]
prior_std = {prior_std}
"""


def _write_reference(folder: Path, task, probs: np.ndarray, **meta_changes) -> Path:
    """A reference file in the format `bnnbench reference hmc` writes, with chosen contents."""
    import json

    from bnnbench.reference_files import task_posterior_key

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{task.name}.v{task.version}.npz"
    np.savez(path, probs=probs, chain_probs=probs[None])
    meta = {"format": 1, "task": task.name, "task_version": task.version, "task_key": task_posterior_key(task)}
    path.with_suffix(".json").write_text(json.dumps(meta | meta_changes))
    return path


def test_a_fidelity_run_scores_agreement_and_tv_and_refuses_a_stale_reference(tmp_path, cli, monkeypatch):
    """With the test labels' one-hot vectors as the 'reference', agreement must equal the accuracy and tv must be
    1 − mean p(true class), computed from the run's saved predictions: the numbers go through the evaluator."""
    from bnnbench.data import load_data

    tasks, references, results = tmp_path / "tasks", tmp_path / "refs", tmp_path / "results"
    tasks.mkdir()
    (tasks / "tiny-fidelity.toml").write_text(DIGITS_FIDELITY.format(version=1, prior_std=1.0))
    task = load_task(tasks / "tiny-fidelity.toml")
    labels = load_data(task.data, str(task.path)).test.y.numpy()
    monkeypatch.setenv("BNNBENCH_REFERENCES_PATH", str(references))

    missing = cli("run", "--task", str(task.path), "--method", "map", "--results-dir", str(results))
    assert missing.code == 2 and "has a [posterior] table but no HMC reference tiny-fidelity.v1.npz" in missing.stderr
    assert not results.exists()

    _write_reference(references, task, np.eye(10)[labels])
    ran = cli("run", "--task", str(task.path), "--method", "map", "--quiet", "--save-predictions",
              "--results-dir", str(results))
    assert ran.code == 0, ran.stderr
    [run_dir] = (results / "tiny-fidelity" / "map").iterdir()

    metrics = pd.read_csv(run_dir / "metrics.csv")
    test = metrics[(metrics.split == "test") & (metrics.corruption == "none")].set_index("metric")["value"]
    saved = np.load(run_dir / "predictions.npz")
    assert test["agreement"] == pytest.approx(test["acc"], abs=1e-12)
    assert test["tv"] == pytest.approx(1 - saved["probs"][np.arange(len(labels)), labels].mean(), abs=1e-6)

    # the fidelity leaderboard ranks by agreement alone when asked
    assert cli("run", "--task", str(task.path), "--method", "mc-dropout", "--quiet", "--results-dir",
               str(results)).code == 0
    board = cli("compare", "--results-dir", str(results), "--rank-by", "agreement", "--format", "csv")
    assert board.code == 0, board.stderr
    table = pd.read_csv(io.StringIO(board.stdout))
    agreement = table[table.column == "agreement"].set_index("method")
    assert set(agreement.index) == {"map", "mc-dropout"}
    best = agreement["mean"].idxmax()
    assert agreement.loc[best, "rank"] == 1 and agreement["rank"].max() == (2 if agreement["mean"].nunique() == 2
                                                                             else 1)
    assert cli("compare", "--results-dir", str(results), "--rank-by", "no-such").code == 2
    report = cli("report", "--results-dir", str(results), "--out", str(tmp_path / "report"))
    assert report.code == 0, report.stderr
    page = (tmp_path / "report" / "index.html").read_text()
    fidelity = page[page.index('id="tiny-fidelity-v1-fidelity"'):]
    fidelity = fidelity[:fidelity.index("</section>")]
    assert "Rank is by agreement alone" in fidelity and "tiny-fidelity.v1.npz" in fidelity
    assert fidelity.index(best) < fidelity.index({"map", "mc-dropout"}.difference({best}).pop())

    # a reference of another task version, or of another prior, is refused before any work
    (tasks / "tiny-fidelity.toml").write_text(DIGITS_FIDELITY.format(version=2, prior_std=1.0))
    _write_reference(references, load_task(tasks / "tiny-fidelity.toml"), np.eye(10)[labels], task_version=1)
    stale = cli("run", "--task", str(tasks / "tiny-fidelity.toml"), "--method", "map", "--results-dir",
                str(tmp_path / "none"))
    assert stale.code == 2 and "was made for task 'tiny-fidelity' version 1, not 'tiny-fidelity' version 2" \
        in stale.stderr and not (tmp_path / "none").exists()
    _write_reference(references, load_task(tasks / "tiny-fidelity.toml"), np.eye(10)[labels])  # v2, prior std 1
    (tasks / "tiny-fidelity.toml").write_text(DIGITS_FIDELITY.format(version=2, prior_std=0.5))
    other_prior = cli("run", "--task", str(tasks / "tiny-fidelity.toml"), "--method", "map", "--results-dir",
                      str(tmp_path / "none"))
    assert other_prior.code == 2 and "was made for another posterior" in other_prior.stderr


def test_the_committed_digits_fidelity_reference_fits_its_task_and_converged(monkeypatch, tmp_path):
    """The embedded fidelity task ships its reference: made for this task version and posterior, for its test
    split, and converged by the issue's standard (split-R̂ ≤ 1.05 on 99% of the test probabilities, 4 chains)."""
    from bnnbench.data import load_data
    from bnnbench.reference import find_predictive_reference

    monkeypatch.chdir(tmp_path)  # the checkout's copy, not one in a working directory's results/
    task = load_task("digits-fidelity")
    reference = find_predictive_reference(task)
    labels = load_data(task.data, str(task.path)).test.y.numpy()
    assert reference.arrays["probs"].shape == (len(labels), 10)
    assert np.array_equal(reference.arrays["targets"], labels)
    assert np.allclose(reference.arrays["probs"].sum(1), 1.0)
    assert reference.meta["chains"] == 4 and reference.meta["rhat_p99"] <= 1.05
