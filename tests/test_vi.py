"""score-vi and elbo-vi against exact answers: closed-form gradients, unbiasedness under mini-batch noise,
Gaussian targets whose mean and mean-field variances are known, and Bayesian linear regression."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bnnbench.likelihoods import Gaussian
from bnnbench.methods.vi.common import network_log_likelihood
from bnnbench.methods.vi.family import DiagonalGaussian, kl_divergence
from bnnbench.methods.vi.objectives import NegativeELBO, ScoreMatching
from bnnbench.train import TrainConfig, split_budget, train_loop
from bnnbench.types import Budget, FitContext, Split

CPU = FitContext(device=torch.device("cpu"), seed=0, show_progress=False)


def random_gaussian(dim: int, seed: int, dtype=torch.float64, trainable: bool = False) -> DiagonalGaussian:
    generator = torch.Generator().manual_seed(seed)
    mean = {"a": torch.randn(dim, generator=generator, dtype=dtype),
            "b": torch.randn(2, 3, generator=generator, dtype=dtype)}
    log_std = {name: 0.3 * torch.randn(value.shape, generator=generator, dtype=dtype) - 1.0
               for name, value in mean.items()}
    gaussian = DiagonalGaussian.from_named(mean, log_std)
    if trainable:
        for value in gaussian.parameters():
            value.requires_grad_(True)
    return gaussian


def gradients(loss: torch.Tensor, q: DiagonalGaussian) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, q.parameters()))


def test_kl_closed_form_matches_monte_carlo():
    a, b = random_gaussian(4, 0), random_gaussian(4, 1)
    torch.manual_seed(0)
    draws = a.draws(20000)
    estimate = torch.stack([a.log_prob(theta) - b.log_prob(theta) for theta in draws]).mean()
    assert kl_divergence(a, b).item() == pytest.approx(estimate.item(), rel=0.03)
    assert kl_divergence(a, a).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("weighting", ["q_t", "none"])
def test_score_loss_closed_form_gradient_equals_autograd(weighting):
    q = random_gaussian(5, 0, trainable=True)
    objective = ScoreMatching(q, random_gaussian(5, 9), log_likelihood=None, train_samples=3, prox_weight=0.7,
                              refresh_every=1, weighting=weighting)
    objective.set_anchor(random_gaussian(5, 1))  # q_t ≠ q, so the proximal term has a gradient
    torch.manual_seed(0)
    objective.samples = list(objective.anchor.draws(3))
    objective.scores = [torch.randn_like(theta) for theta in objective.samples]
    score_loss, proximal = objective.reference_loss()
    reference = score_loss + 0.7 * proximal
    closed_form = objective.loss()
    assert closed_form.item() == pytest.approx(reference.item(), rel=1e-12)
    for got, want in zip(gradients(closed_form, q), gradients(reference, q), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def _regression_data(n: int = 60, dim: int = 3, seed: int = 0) -> Split:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.3 * torch.randn(n, generator=generator,
                                                                                   dtype=torch.float64)
    return Split(x, y)


def test_score_gradient_is_unbiased_under_minibatch_noise():
    """The mean of the stochastic gradients over the mini-batches of one epoch (a partition of the data)
    equals the full-batch gradient exactly, because the loss is linear in the scores and its weight
    depends only on q_t. A weight that depends on q (σ² of the iterate) fails the same check."""
    data = _regression_data()
    model = torch.nn.Linear(3, 1).double()
    log_likelihood = network_log_likelihood(model, Gaussian(noise_std=0.3), {}, len(data), temperature=1.0)
    init = {name: value.detach() for name, value in model.named_parameters()}
    q = DiagonalGaussian.trainable(init, init_std=0.05)
    with torch.no_grad():
        q.mean.add_(0.1)  # off the anchor: the proximal term contributes too
        q.log_std.add_(0.2)
    prior = DiagonalGaussian.isotropic({n: torch.zeros_like(v) for n, v in init.items()}, 1.0)
    objective = ScoreMatching(q, prior, log_likelihood, train_samples=2, prox_weight=1.0, refresh_every=1,
                              weighting="q_t")
    objective.set_anchor(DiagonalGaussian.isotropic(init, 0.05))
    torch.manual_seed(0)
    samples = list(objective.anchor.draws(2))

    def gradient_on(rows: slice, biased: bool = False) -> list[torch.Tensor]:
        objective.samples = samples
        objective.scores = [objective.target_scores(theta, data.x[rows], data.y[rows])[0] for theta in samples]
        if not biased:
            return gradients(objective.loss(), q)
        variance = q.variance()  # depends on φ: the loss is no longer linear in the scores' noise
        loss = sum(((q.score(theta) - target) ** 2 * variance).sum()
                   for theta, target in zip(samples, objective.scores, strict=True))
        return gradients(loss, q)

    batches = [slice(begin, begin + 10) for begin in range(0, 60, 10)]
    for biased, should_match in ((False, True), (True, False)):
        full = gradient_on(slice(None), biased)
        per_batch = [gradient_on(rows, biased) for rows in batches]
        averaged = [torch.stack(parts).mean(0) for parts in zip(*per_batch, strict=True)]
        error = max(((a - f).abs().max() / f.abs().max()).item() for a, f in zip(averaged, full, strict=True))
        assert (error < 1e-9) == should_match, f"biased={biased}: relative error {error:.2e}"


def _gaussian_target(dim: int, dense: bool, seed: int = 0):
    """Precision Λ with eigenvalues 50..300 (the spec's prototype range), a random rotation when dense."""
    generator = torch.Generator().manual_seed(seed)
    eigenvalues = torch.logspace(math.log10(50), math.log10(300), dim, dtype=torch.float64)
    if dense:
        rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
        precision = rotation @ torch.diag(eigenvalues) @ rotation.T
    else:
        precision = torch.diag(eigenvalues[torch.randperm(dim, generator=generator)])
    mean = torch.randn(dim, generator=generator, dtype=torch.float64)
    return precision, mean


def _fit_gaussian_target(method: str, precision: torch.Tensor, mean: torch.Tensor, *, epochs: int,
                         train_samples: int, noise: float = 0.5, lr: float = 2e-2, inner_steps: int = 5,
                         refresh_every: int = 1) -> tuple[float, np.ndarray]:
    """Fit q to N(mean, precision⁻¹) through the shared training loop with mini-batch noise: the target's
    log density is a sum of n = 100 terms, each the quadratic / n plus ξ_iᵀθ with Σ ξ_i = 0, so every
    mini-batch score is unbiased and noisy (noise std = `noise` × the score's std under the posterior).
    Returns the relative mean error and σ² Λ_dd per coordinate."""
    torch.manual_seed(0)
    n, batch, dim = 100, 10, len(mean)
    generator = torch.Generator().manual_seed(1)
    xi = torch.randn(n, dim, generator=generator) * noise * torch.diag(precision).float().sqrt() * math.sqrt(batch) / n
    xi -= xi.mean(0)
    precision32, mean32 = precision.float(), mean.float()

    def log_likelihood(theta, rows, _):
        t = theta["t"]
        return -0.5 * (t - mean32) @ precision32 @ (t - mean32) + (n / len(rows)) * (xi[rows] @ t).sum()

    prior = DiagonalGaussian.isotropic({"t": torch.zeros(dim)}, 1e4)  # flat: the target is the likelihood
    q = DiagonalGaussian.trainable({"t": torch.zeros(dim)}, init_std=0.1)
    if method == "score-vi":
        objective = ScoreMatching(q, prior, log_likelihood, train_samples=train_samples, prox_weight=1.0,
                                  refresh_every=refresh_every, weighting="q_t", antithetic=True)
    else:
        objective = NegativeELBO(q, prior, log_likelihood, n_data=n, train_samples=train_samples, kl_anneal_steps=0,
                                 antithetic=True)
        inner_steps = 1
    train_loop(q.parameters(), objective.loss, Split(torch.arange(n), torch.zeros(n)),
               TrainConfig(lr=lr, weight_decay=0.0, batch_size=batch), Budget(max_epochs=epochs), CPU,
               on_batch=getattr(objective, "on_batch", None), inner_steps=inner_steps,
               on_epoch=objective.epoch_diagnostics)
    fitted_mean = q.mean.detach().double()
    ratio = (q.variance().detach().double() * torch.diag(precision)).numpy()
    return ((fitted_mean - mean).norm() / mean.norm()).item(), ratio


GAUSSIAN_CASES = [  # (dim, dense, epochs, samples per step, variance tolerance)
    pytest.param(2, True, 150, 4, 0.05, id="2d-dense"),
    pytest.param(20, True, 300, 4, 0.05, id="20d-dense"),
    pytest.param(20, False, 300, 4, 0.02, id="20d-diagonal"),
]


@pytest.mark.parametrize(("dim", "dense", "epochs", "train_samples", "var_tol"), GAUSSIAN_CASES)
def test_score_vi_recovers_mean_and_mean_field_variance(dim, dense, epochs, train_samples, var_tol):
    precision, mean = _gaussian_target(dim, dense)
    mean_error, ratio = _fit_gaussian_target("score-vi", precision, mean, epochs=epochs, train_samples=train_samples,
                                             inner_steps=1, refresh_every=5)
    assert mean_error < 0.02
    assert np.abs(ratio - 1).max() < var_tol, ratio


@pytest.mark.parametrize(("dim", "dense", "epochs", "train_samples", "var_tol"), GAUSSIAN_CASES)
def test_elbo_vi_recovers_mean_and_mean_field_variance(dim, dense, epochs, train_samples, var_tol):
    """elbo-vi gets twice the steps and samples. On the diagonal target it reaches 3-4%, not 2%: the
    reparametrised ω-gradient keeps a noise of std √2 per sample at the optimum (score-vi's vanishes
    there), and Adam's normalised steps make the final spread depend on the learning rate, not on S
    (2.75% after 15,000 steps with S = 8). The 4% bound records that honestly."""
    precision, mean = _gaussian_target(dim, dense)
    mean_error, ratio = _fit_gaussian_target("elbo-vi", precision, mean, epochs=epochs * 2,
                                            train_samples=train_samples * 2)
    assert mean_error < 0.02
    assert np.abs(ratio - 1).max() < (var_tol if dense else 0.04), ratio


def test_split_budget_gives_the_warm_up_its_fraction():
    warm, rest = split_budget(Budget(max_epochs=20, max_seconds=10.0, n_eval_samples=7), 0.5)
    assert (warm.max_epochs, rest.max_epochs, warm.max_seconds, rest.max_seconds) == (10, 10, 5.0, 5.0)
    assert rest.n_eval_samples == 7
    assert split_budget(Budget(max_epochs=1), 0.5) == (None, Budget(max_epochs=1))


@pytest.mark.parametrize("method", ["score-vi", "elbo-vi"])
def test_sanity_blr_recovers_the_exact_posterior(cli, results_dir, method):
    """The issue's bar on sanity-blr: posterior mean within 2% of the exact mean and every parameter's
    variance within 10% of 1/Λ_dd (the mean-field optimum); predictions saved as mean/var/y."""
    from bnnbench.data import load_data
    from bnnbench.likelihoods import get_likelihood
    from bnnbench.reference import reference_posterior
    from bnnbench.tasks import load_task

    result = cli("run", "--task", "sanity-blr", "--method", method, "--quiet", "--device", "cpu",
                 "--save-predictions", "--results-dir", str(results_dir))
    assert result.code == 0, result.stderr
    [run_dir] = (results_dir / "sanity-blr" / method).iterdir()
    import pandas as pd

    metrics = pd.read_csv(run_dir / "metrics.csv").set_index("metric")["value"]
    assert metrics["w2_mean_err"] < 0.02
    assert abs(metrics["var_ratio"] - 1) < 0.1 and abs(metrics["pred_var_ratio"] - 1) < 0.1
    task = load_task("sanity-blr")
    loaded = load_data(task.data)
    exact = reference_posterior(task.eval["reference"], loaded.bundle.train,
                                get_likelihood(task.likelihood, task.likelihood_options))
    saved = np.load(run_dir / "predictions.npz")
    assert saved["y"] == pytest.approx(loaded.test.y.double().numpy())
    assert np.abs(saved["var"] / exact.predictive_variance(loaded.test.x.double().numpy()) - 1).max() < 0.1
    assert metrics["mse"] == pytest.approx(np.mean((saved["mean"] - saved["y"]) ** 2), rel=1e-9)
