"""The convergence benchmark (issue 34): score-vi against ADVI (elbo-vi), GSM and BaM on targets with known answers.

Every method fits a full-covariance Gaussian q to one target from the same start, q₀ = N(0, I) (the GSM and BaM
papers' start), with the same number of score evaluations per iteration (`batch`: S samples for score-vi and
elbo-vi, B for GSM and BaM). Targets are `bnnbench.targets`' synthetic ones, or a task's posterior over a network's
weights (`sanity-blr`: the exact Gaussian posterior of its nn.Linear; any task whose weights allow a dense
covariance, its log posterior by full-batch `functional_call`).

**Step sizes, by one stated rule.** score-vi and elbo-vi take Adam with a cosine-decayed learning rate (the decay
is part of score-vi, ../shared/methods/score_vi.md), BaM its paper's schedule λ_t times a scale; GSM has none. Each
method's value is chosen from its grid (`LEARNING_RATES`, `BAM_SCALES`) as the one with the lowest final negative
ELBO on a tuning seed (`TUNING_SEED`, never a reported seed) at the same iteration budget; the chosen values are
written beside the rows.

**What is recorded**, every `record_every` iterations and at the end, as tidy rows: the iteration, the score
evaluations so far, the seconds spent in the method's own updates (the monitor is not timed), the negative ELBO,
and where the target's moments are known the KL to the posterior (exact for a Gaussian target) and the relative
errors of q's mean and covariance. The negative ELBO is exact for a Gaussian target (KL − log Z); otherwise
E_q[−log p̃] − H(q) by one fixed set of `elbo_draws` standard-normal draws shared by every method, seed and record
(common random numbers: differences between curves, and between seeds, are then not Monte Carlo noise). On
sinh-arcsinh-d10 the final negative ELBO's standard error over 5 seeds was 0.037-0.047 nats per method with a set
of draws per seed, as large as the gaps between methods, and 0.002-0.010 with one set.

**Summary.** Evaluations to reach within 1% of the best ELBO: the first record where a run's negative ELBO is
within 1% of the way from the common start to the best value any run reached on that target,
neg_elbo ≤ best + 0.01 (start − best). Measured from the start because "1% of the best value" depends on the
target's normalising constant (a normalised Gaussian's best is 0).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

__all__ = ["BAM_SCALES", "LEARNING_RATES", "METHODS", "TUNING_SEED", "BenchmarkSettings", "ConvergenceResult",
           "load_benchmark", "plot_benchmark", "resolve_target", "run_benchmark", "summary_table",
           "target_names", "write_benchmark"]

METHODS = ("score-vi", "elbo-vi", "gsm", "bam")
LEARNING_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
BAM_SCALES = (0.1, 1.0, 10.0)
TUNING_SEED = 1000
MONITOR_SEED = 10**6  # the negative ELBO's draws: one set for every method, seed and record of a target
STEP_RULE = (f"score-vi and elbo-vi: Adam, cosine-decayed learning rate from {LEARNING_RATES}; bam: the paper's "
             f"schedule times a scale from {BAM_SCALES}; gsm: none. Each method's value: the lowest final negative "
             f"ELBO on seed {TUNING_SEED} at the same budget")
NETWORK_TARGETS = ("sanity-blr", "digits-fidelity")
ROW_COLUMNS = ["target", "method", "seed", "iteration", "evaluations", "seconds", "neg_elbo", "kl", "mean_error",
               "cov_error"]


@dataclass(frozen=True)
class BenchmarkSettings:
    iterations: int = 500
    batch: int = 8  # score evaluations per iteration, every method
    inner_steps: int = 5  # score-vi's K
    prox_weight: float = 1.0  # score-vi's λ
    record_every: int = 10
    elbo_draws: int = 256


def target_names() -> list[str]:
    from bnnbench.targets import TARGETS

    return [*TARGETS, *NETWORK_TARGETS]


def resolve_target(name: str):
    """A `targets.Target` by name: a synthetic one, or a network task's posterior over its weights."""
    from bnnbench.targets import TARGETS, get_target

    if name in TARGETS:
        return get_target(name)
    if name in NETWORK_TARGETS:
        return _network_target(name)
    from bnnbench.errors import unknown_choice

    raise unknown_choice("target", name, target_names())


def _network_target(name: str):
    """The log posterior of a task's network over its training split, as a Target over the flat weights."""
    from bnnbench.hmc import PosteriorTarget, load_task_data
    from bnnbench.likelihoods import get_likelihood
    from bnnbench.models import create_model
    from bnnbench.reference import linear_gaussian_posterior
    from bnnbench.targets import Target
    from bnnbench.tasks import load_task

    task = load_task(name)
    loaded = load_task_data(task)
    bundle, where = loaded.bundle, str(task.path)
    model = create_model(task.model, bundle.input_shape, bundle.num_outputs, where)
    likelihood = get_likelihood(task.likelihood, task.likelihood_options, where)
    reference = task.eval.get("reference")
    prior_std = (reference or task.posterior)["prior_std"]
    temperature = task.posterior.get("temperature", 1.0) if task.posterior else 1.0
    posterior = PosteriorTarget(model, likelihood, bundle.train, prior_std, temperature)
    batched = torch.func.vmap(posterior.log_posterior)
    mean = covariance = log_normaliser = None
    moments = "unknown: scored by the negative ELBO only"
    gaussian = reference is not None and reference.get("posterior") == "linear-gaussian"
    if gaussian:
        exact = linear_gaussian_posterior(bundle.train.x.numpy(), bundle.train.y.numpy().reshape(-1),
                                          likelihood.noise_std, prior_std)
        mean, covariance = torch.from_numpy(exact.mean), torch.from_numpy(exact.covariance)
        moments = "exact (conjugate Gaussian posterior, reference.linear_gaussian_posterior)"
        # log p̃ is exactly log N(θ; m, S) + log Z, so log Z = log p̃(m) + ½ log det(2π S): the ELBO is then exact
        with torch.no_grad():
            log_normaliser = (batched(mean.unsqueeze(0))[0].item()
                              + 0.5 * torch.logdet(2 * math.pi * covariance).item())
    return Target(name=name, description=f"{task.name}: {task.description}", dim=posterior.dimension,
                  log_density=batched, mean=mean, covariance=covariance, moments=moments,
                  log_normaliser=log_normaliser, gaussian=gaussian)


@dataclass(frozen=True)
class ConvergenceResult:
    target: object  # the `targets.Target` the rows are of
    rows: pd.DataFrame
    chosen: dict[str, float | None]  # each method's step size from its grid (None: GSM has none)
    failures: list[str]


class _Monitor:
    """Negative ELBO, KL and moment errors of (mean, covariance) on one target, with common random numbers."""

    def __init__(self, target, draws: int) -> None:
        self.target = target
        generator = torch.Generator().manual_seed(MONITOR_SEED)
        self.noise = torch.randn(draws, target.dim, generator=generator, dtype=torch.float64)
        self.exact = target.gaussian and target.log_normaliser is not None

    def __call__(self, mean: Tensor, covariance: Tensor) -> dict[str, float]:
        target = self.target
        chol = torch.linalg.cholesky(covariance)
        log_det = 2 * torch.log(torch.diagonal(chol)).sum().item()
        values = {"kl": math.nan, "mean_error": math.nan, "cov_error": math.nan}
        if self.exact:
            kl = target.kl_from(mean, covariance)
            values["kl"] = kl
            values["neg_elbo"] = kl - target.log_normaliser
        else:
            with torch.no_grad():
                draws = mean + self.noise @ chol.T
                log_density = target.log_density(draws)
            entropy = 0.5 * log_det + 0.5 * target.dim * (1 + math.log(2 * math.pi))
            values["neg_elbo"] = -log_density.mean().item() - entropy
        if target.mean is not None:
            values["mean_error"] = ((mean - target.mean).norm() / target.mean.norm().clamp_min(1e-12)).item()
            values["cov_error"] = ((covariance - target.covariance).norm() / target.covariance.norm()).item()
        return values


class _Diverged(Exception):
    pass


def _scores(target, theta: Tensor) -> Tensor:
    scores = target.score(theta)
    if not torch.isfinite(scores).all():
        raise _Diverged("a score is not finite")
    return scores


def _family_runner(method: str, target, settings: BenchmarkSettings, step: float):
    """score-vi or elbo-vi with the full family, through the objectives the network methods use."""
    from bnnbench.methods.vi.family import FullGaussian
    from bnnbench.methods.vi.objectives import NegativeELBO, ScoreMatching

    q = FullGaussian.trainable({"theta": torch.zeros(target.dim, dtype=torch.float64)}, 1.0)

    def log_density(named, x, y):
        return target.log_density(named["theta"].unsqueeze(0))[0]

    if method == "score-vi":
        objective = ScoreMatching(q, None, log_density, train_samples=settings.batch,
                                  prox_weight=settings.prox_weight, refresh_every=1, weighting="q_t",
                                  inner_steps=settings.inner_steps)
        steps_per_iteration = settings.inner_steps
    else:
        objective = NegativeELBO(q, None, log_density, n_data=1, train_samples=settings.batch, kl_anneal_steps=0)
        steps_per_iteration = 1
    optimiser = torch.optim.Adam(q.parameters(), lr=step)
    total = settings.iterations * steps_per_iteration
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda k: 0.5 * (1 + math.cos(math.pi * k / total)))

    def iterate(_: int) -> None:
        if method == "score-vi":
            objective.on_batch(None, None)
            if not all(torch.isfinite(score).all() for score in objective.scores):
                raise _Diverged("a score is not finite")
        for _ in range(steps_per_iteration):
            optimiser.zero_grad()
            loss = objective.loss(None, None)
            if not torch.isfinite(loss):
                raise _Diverged("the loss is not finite")
            loss.backward()
            optimiser.step()
            schedule.step()

    def moments() -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return q.mean.detach().clone(), q.covariance().detach()

    return iterate, moments


def _closed_form_runner(method: str, target, settings: BenchmarkSettings, step: float | None):
    """GSM or BaM: their closed-form updates of (μ, Σ) from B draws of q_t and their scores."""
    from bnnbench.methods.vi.batch_updates import bam_learning_rate, bam_update, gsm_update

    state = {"mean": torch.zeros(target.dim, dtype=torch.float64),
             "cov": torch.eye(target.dim, dtype=torch.float64)}

    def iterate(iteration: int) -> None:
        mean, cov = state["mean"], state["cov"]
        try:
            chol = torch.linalg.cholesky(cov)
        except RuntimeError as error:
            raise _Diverged("the covariance is not positive definite") from error
        samples = mean + torch.randn(settings.batch, target.dim, dtype=torch.float64) @ chol.T
        scores = _scores(target, samples)
        if method == "gsm":
            mean, cov = gsm_update(mean, cov, samples, scores)
        else:
            rate = bam_learning_rate(iteration, settings.batch, target.dim, step)
            mean, cov = bam_update(mean, cov, samples, scores, rate)
        if not (torch.isfinite(mean).all() and torch.isfinite(cov).all()):
            raise _Diverged("the update is not finite")
        state["mean"], state["cov"] = mean, 0.5 * (cov + cov.T)

    def moments() -> tuple[Tensor, Tensor]:
        return state["mean"], state["cov"]

    return iterate, moments


def _run_one(method: str, target, settings: BenchmarkSettings, seed: int, step: float | None) -> pd.DataFrame:
    """One method, one seed: the recorded rows; raises _Diverged with the rows so far when it fails."""
    torch.manual_seed(seed)
    if method in ("score-vi", "elbo-vi"):
        iterate, moments = _family_runner(method, target, settings, step)
    else:
        iterate, moments = _closed_form_runner(method, target, settings, step)
    monitor = _Monitor(target, settings.elbo_draws)
    rows, seconds = [], 0.0

    def record(iteration: int) -> None:
        mean, cov = moments()
        try:
            values = monitor(mean, cov)
        except RuntimeError as error:  # a covariance that lost definiteness
            raise _Diverged(f"q is no longer a Gaussian at iteration {iteration}") from error
        rows.append({"target": target.name, "method": method, "seed": seed, "iteration": iteration,
                     "evaluations": iteration * settings.batch, "seconds": seconds, **values})

    record(0)
    for iteration in range(1, settings.iterations + 1):
        started = time.perf_counter()
        iterate(iteration - 1)
        seconds += time.perf_counter() - started
        if iteration % settings.record_every == 0 or iteration == settings.iterations:
            record(iteration)
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


def _final(method: str, target, settings: BenchmarkSettings, step: float | None) -> float:
    try:
        rows = _run_one(method, target, settings, TUNING_SEED, step)
    except (_Diverged, RuntimeError):
        return math.inf
    value = rows["neg_elbo"].iloc[-1]
    return value if math.isfinite(value) else math.inf


def choose_step(method: str, target, settings: BenchmarkSettings) -> float | None:
    """The step size from the method's grid with the lowest final negative ELBO on the tuning seed."""
    grid = {"score-vi": LEARNING_RATES, "elbo-vi": LEARNING_RATES, "bam": BAM_SCALES}.get(method)
    if grid is None:
        return None
    finals = {step: _final(method, target, settings, step) for step in grid}
    return min(finals, key=lambda step: (finals[step], step))


def run_benchmark(target, methods: list[str], seeds: list[int], settings: BenchmarkSettings,
                  progress: Callable[[str], None] | None = None) -> ConvergenceResult:
    """Every method on `target` (a `targets.Target`, or its name) for every seed, after choosing its step size on
    the tuning seed."""
    unknown = [method for method in methods if method not in METHODS]
    if unknown:
        from bnnbench.errors import unknown_choice

        raise unknown_choice("convergence method", unknown[0], METHODS)
    target = resolve_target(target) if isinstance(target, str) else target
    frames, chosen, failures = [], {}, []
    for method in methods:
        chosen[method] = choose_step(method, target, settings)
        if progress:
            progress(f"{target.name} {method}: step {chosen[method]}")
        for seed in seeds:
            try:
                frames.append(_run_one(method, target, settings, seed, chosen[method]))
            except (_Diverged, RuntimeError) as error:
                failures.append(f"{method} seed {seed}: {error}")
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ROW_COLUMNS)
    return ConvergenceResult(target, rows, chosen, failures)


def write_benchmark(result: ConvergenceResult, settings: BenchmarkSettings, out_dir: Path) -> Path:
    """rows.csv and settings.json under out_dir/<target>, each written atomically."""
    from bnnbench import atomic
    from bnnbench.version import __version__

    target = result.target
    directory = Path(out_dir) / target.name
    directory.mkdir(parents=True, exist_ok=True)
    atomic.write_text(directory / "rows.csv", result.rows.to_csv(index=False, float_format="%.10g"))
    meta = {"target": target.name, "description": target.description, "dim": target.dim, "moments": target.moments,
            "settings": asdict(settings), "chosen_steps": result.chosen, "step_rule": STEP_RULE,
            "tuning_seed": TUNING_SEED, "failures": result.failures, "bnnbench": __version__,
            "torch": torch.__version__}
    atomic.write_text(directory / "settings.json", json.dumps(meta, indent=2, default=str))
    return directory


def load_benchmark(out_dir: Path) -> dict[str, tuple[pd.DataFrame, dict]]:
    """{target: (rows, settings)} for every target under `out_dir` that holds a readable rows.csv."""
    found = {}
    for rows_path in sorted(Path(out_dir).glob("*/rows.csv")):
        try:
            rows = pd.read_csv(rows_path)
            meta = json.loads((rows_path.parent / "settings.json").read_text())
        except (OSError, ValueError):
            continue
        if set(ROW_COLUMNS) <= set(rows.columns) and not rows.empty:
            found[rows_path.parent.name] = (rows, meta)
    return found


def summary_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per target and method: seeds, the final negative ELBO (mean ± standard error over seeds), the final KL where
    exact, and the score evaluations (median over seeds, and how many seeds got there) to reach within 1% of the
    best ELBO (see the module docstring)."""
    table = []
    for target, of_target in rows.groupby("target", sort=False):
        start = of_target[of_target["iteration"] == 0]["neg_elbo"].median()
        best = of_target["neg_elbo"].min()
        threshold = best + 0.01 * (start - best)
        for method, of_method in of_target.groupby("method", sort=False):
            finals, reached = [], []
            for _, run in of_method.groupby("seed"):
                run = run.sort_values("iteration")
                finals.append(run.iloc[-1])
                hits = run[run["neg_elbo"] <= threshold]
                reached.append(hits["evaluations"].iloc[0] if len(hits) else math.nan)
            final = pd.DataFrame(finals)
            n = len(final)
            hit = [value for value in reached if not math.isnan(value)]
            table.append({
                "target": target, "method": method, "seeds": n,
                "final_neg_elbo": final["neg_elbo"].mean(),
                "final_neg_elbo_se": final["neg_elbo"].std(ddof=1) / math.sqrt(n) if n > 1 else math.nan,
                "final_kl": final["kl"].mean(),
                "final_mean_error": final["mean_error"].mean(), "final_cov_error": final["cov_error"].mean(),
                "evals_to_1pct": float(np.median(hit)) if hit else math.nan, "reached": f"{len(hit)}/{n}",
                "seconds": final["seconds"].mean(),
            })
    return pd.DataFrame(table)


def plot_benchmark(rows: pd.DataFrame, target: str, out: Path) -> None:
    """Negative ELBO against score evaluations and against seconds, one thin line per seed and the median per
    method, on a log axis: the exact KL(q ‖ p) where the target records it (its best is 0), otherwise the gap to the
    best value any run reached."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bnnbench.atomic import write_with

    exact = rows["kl"].notna().all()
    column, best = ("kl", 0.0) if exact else ("neg_elbo", rows["neg_elbo"].min())
    # a converged run's KL is rounding, at or below 0; a gap to the best reached is 0 for the run that reached it,
    # so that axis stops at 1e-4 of the way from the start, below the 1% the summary counts
    start = rows[rows["iteration"] == 0][column].median()
    floor = 1e-12 if exact else max(1e-12, 1e-4 * (start - best))
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120, sharey=True)
    for colour, (method, of_method) in enumerate(rows.groupby("method", sort=False)):
        for axis, x in zip(axes, ("evaluations", "seconds"), strict=True):
            for _, run in of_method.groupby("seed"):
                axis.plot(run[x], (run[column] - best).clip(lower=floor), color=f"C{colour}", alpha=0.25,
                          linewidth=0.8)
            median = of_method.groupby("iteration")[[x, column]].median()
            axis.plot(median[x], (median[column] - best).clip(lower=floor), color=f"C{colour}", label=method,
                      linewidth=2)
    label = "KL(q ‖ p), exact (nats)" if exact else "negative ELBO − best reached (nats)"
    axes[0].set(xlabel="score evaluations", ylabel=label, yscale="log", title=f"{target}")
    axes[1].set(xlabel="seconds in the method's updates", xscale="log", title=f"{target}")
    axes[0].legend()
    figure.tight_layout()
    write_with(Path(out), lambda handle: figure.savefig(handle, format="png"))
    plt.close(figure)
