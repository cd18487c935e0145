"""score-vi's and elbo-vi's variational families (issue 34): diagonal, low-rank plus diagonal and full-rank Gaussians
share one interface, checked against torch.distributions' MultivariateNormal; both objectives fit each family; score-vi
with the full family reaches a dense Gaussian target's exact posterior; the memory estimate counts each family."""

from __future__ import annotations

import pytest
import torch

from bnnbench.methods.vi.family import (
    DiagonalGaussian,
    FullGaussian,
    LowRankGaussian,
    entropy,
    family_numbers,
    kl_divergence,
    make_family,
)


def _members(dim_shapes=((3, 2), (1,)), seed=0):
    generator = torch.Generator().manual_seed(seed)
    named = {f"p{i}": torch.randn(shape, generator=generator, dtype=torch.float64)
             for i, shape in enumerate(dim_shapes)}
    torch.manual_seed(seed)
    members = [DiagonalGaussian.trainable(named, 0.3), LowRankGaussian.trainable(named, 0.3, 3),
               FullGaussian.trainable(named, 0.3)]
    size = members[0].numel()
    with torch.no_grad():
        for member in members:
            member.log_std.add_(0.3 * torch.randn(size, generator=generator, dtype=torch.float64))
        members[1].shape.add_(0.3 * torch.randn(size, 3, generator=generator, dtype=torch.float64))
        members[2].lower.add_(0.3 * torch.randn(size, size, generator=generator, dtype=torch.float64))
    return members


def _reference(member) -> torch.distributions.MultivariateNormal:
    return torch.distributions.MultivariateNormal(member.mean.detach(), member.covariance().detach())


def test_every_pair_of_families_has_torchs_kl_divergence():
    members = _members()
    for a in members:
        for b in members:
            expected = torch.distributions.kl_divergence(_reference(a), _reference(b)).item()
            assert kl_divergence(a, b).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_density_score_entropy_and_draws_agree_with_multivariate_normal(index):
    member = _members()[index]
    reference = _reference(member)
    theta = torch.randn(5, member.numel(), dtype=torch.float64)
    with torch.no_grad():
        if not isinstance(member, DiagonalGaussian):  # the diagonal family's log_prob takes one flat θ
            torch.testing.assert_close(member.log_prob(theta), reference.log_prob(theta))
        torch.testing.assert_close(entropy(member), reference.entropy())
        torch.testing.assert_close(member.variance(), torch.diagonal(reference.covariance_matrix))
        precision = torch.linalg.inv(reference.covariance_matrix)
        torch.testing.assert_close(member.precision_diagonal(), torch.diagonal(precision))
        expected_score = -(theta - member.mean) @ precision
        if isinstance(member, DiagonalGaussian):
            torch.testing.assert_close(member.score(theta[0]), expected_score[0])
        else:
            torch.testing.assert_close(member.score(theta), expected_score)
        torch.manual_seed(1)
        draws = member.draws(40_000)
    # the draws' covariance: each entry's standard error is about sqrt(Σii Σjj / n), here < 0.01
    torch.testing.assert_close(torch.cov(draws.T), member.covariance().detach(), atol=0.03, rtol=0)


def test_draws_are_differentiable_in_every_parameter_of_the_family():
    for member in _members():
        member.draws(2).sum().backward()
        assert all(parameter.grad is not None for parameter in member.parameters())


def test_the_full_family_starts_from_its_cholesky_moments():
    member = _members()[2]
    rebuilt = FullGaussian.from_moments(member.layout, member.mean.detach(), member.covariance().detach())
    torch.testing.assert_close(rebuilt.covariance(), member.covariance().detach())


def test_family_numbers_count_what_the_family_holds():
    for member, name in zip(_members(), ("diag", "lowrank", "full"), strict=True):
        held = sum(parameter.numel() for parameter in member.parameters())
        assert family_numbers(name, member.numel(), rank=3) == held


def test_a_low_rank_start_leaves_the_diagonal_saddle():
    """U = 0 is a stationary point of both objectives, so the low-rank family must start with U ≠ 0."""
    torch.manual_seed(0)
    member = make_family("lowrank", {"w": torch.zeros(50, dtype=torch.float64)}, 0.1, rank=4)
    assert member.factor().abs().max() > 0


def _gaussian_fit(family: str, objective_name: str, steps: int, lr: float, rank: int = 2):
    """Fit `family` to N(m, S) (D = 6, dense S) with an objective, no prior: the log-likelihood is log p."""
    from bnnbench.methods.vi.objectives import NegativeELBO, ScoreMatching

    generator = torch.Generator().manual_seed(3)
    dim = 6
    root = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    covariance = root @ root.T / dim + 0.2 * torch.eye(dim, dtype=torch.float64)
    mean = torch.randn(dim, generator=generator, dtype=torch.float64)
    target = torch.distributions.MultivariateNormal(mean, covariance)

    def log_density(named, x, y):
        return target.log_prob(named["theta"])

    torch.manual_seed(0)
    q = make_family(family, {"theta": torch.zeros(dim, dtype=torch.float64)}, 1.0, rank)
    if objective_name == "score-vi":
        objective = ScoreMatching(q, None, log_density, train_samples=4, prox_weight=1.0, refresh_every=1,
                                  weighting="q_t", inner_steps=5)
    else:
        objective = NegativeELBO(q, None, log_density, n_data=1, train_samples=4, kl_anneal_steps=0)
    inner = 5 if objective_name == "score-vi" else 1
    optimiser = torch.optim.Adam(q.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps * inner)
    for _ in range(steps):
        if objective_name == "score-vi":
            objective.on_batch(None, None)
        for _ in range(inner):
            optimiser.zero_grad()
            objective.loss(None, None).backward()
            optimiser.step()
            schedule.step()
    return q, target


def test_score_vi_with_the_full_family_reaches_the_exact_gaussian_posterior():
    q, target = _gaussian_fit("full", "score-vi", steps=400, lr=0.05)
    with torch.no_grad():
        mean_error = ((q.mean - target.mean).norm() / target.mean.norm()).item()
        covariance_error = ((q.covariance() - target.covariance_matrix).norm()
                            / target.covariance_matrix.norm()).item()
    assert mean_error < 1e-6 and covariance_error < 1e-6, (mean_error, covariance_error)


@pytest.mark.parametrize("objective_name", ["score-vi", "elbo-vi"])
@pytest.mark.parametrize("family", ["lowrank", "full"])
def test_both_objectives_fit_the_richer_families(family, objective_name):
    """The KL from q to the target falls by at least a factor 10 from the start N(0, I), for every pairing."""
    start, _ = _gaussian_fit(family, objective_name, steps=0, lr=0.05)
    fitted, target = _gaussian_fit(family, objective_name, steps=300, lr=0.05)

    def kl(q):
        return torch.distributions.kl_divergence(_reference(q), target).item()

    assert kl(fitted) < kl(start) / 10, (kl(start), kl(fitted))


def test_the_memory_estimate_counts_each_family():
    from bnnbench.methods.vi.common import vi_state_bytes

    p, fixed = 1000, 50
    diag = vi_state_bytes(p, fixed, 1, score_matching=True, family="diag")
    low = vi_state_bytes(p, fixed, 1, score_matching=True, family="lowrank", rank=8)
    full = vi_state_bytes(p, fixed, 1, score_matching=True, family="full")
    assert diag["q"] == 4 * 2 * p and low["q"] == 4 * 10 * p and full["q"] == 4 * (2 * p + p * p)
    assert low["Adam moments"] == 2 * low["q"] and full["anchor q_t"] == full["q"] + 4 * p
    assert diag["network"] == low["network"] == full["network"] == 4 * (p + fixed)


@pytest.mark.parametrize("method", ["score-vi", "elbo-vi"])
@pytest.mark.parametrize("overrides", [{"family": "lowrank", "rank": 3},
                                       {"family": "full", "variational_params": "last-layer"}])
def test_every_family_passes_the_conformance_kit(method, overrides):
    from bnnbench.testing import check_method

    report = check_method(method, tasks=("digits-mlp",), overrides=overrides)
    assert report.skipped == {}


def test_a_full_family_over_too_many_weights_is_refused_in_one_line(cli, tmp_path):
    result = cli("run", "--task", "digits-mlp", "--method", "score-vi", "--set", "family=full", "--seed", "0",
                 "--results-dir", str(tmp_path))
    assert result.code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "26,122" in line and "4,096" in line and "last-layer" in line
    assert not any(tmp_path.iterdir())


def test_the_control_variate_is_refused_for_a_non_diagonal_family():
    from bnnbench.errors import UsageError
    from bnnbench.methods.vi.score import Hparams

    with pytest.raises(UsageError, match="diag"):
        Hparams(family="lowrank", control_variate=True)
    Hparams(family="lowrank")  # the family itself is accepted
