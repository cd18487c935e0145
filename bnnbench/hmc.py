"""Ground-truth posterior predictives by full-batch NUTS (issue 21): what a fidelity task's methods are scored
against, as in the NeurIPS 2021 "Approximate Inference in BDL" competition (Izmailov et al. 2021, "What are
Bayesian neural network posteriors really like?").

**Target.** A task's `[posterior]` table fixes one posterior over the model's parameters θ (every one, biases
included), on the training split only and over all of it at once:

    log p(θ | D) = Σ_i log p(y_i | x_i, θ) / temperature + log N(θ; 0, prior_std² I)

Full batch because a mini-batch gradient changes the chain's stationary distribution (HMC's accept step and
its energy conservation assume the exact potential). Pyro's NUTS (`pyro.infer.mcmc`, over a `potential_fn`)
samples it: step size by dual averaging towards 0.8 mean acceptance and a diagonal mass matrix, both adapted
in the warm-up, then frozen. Each chain is one process with one torch thread (`run_chains`), so a chain's
numbers do not depend on how many workers ran beside it.

**Initialisation.** Each chain starts from its own prior draw followed by `init_steps` (default 300) full-batch
Adam steps up the log posterior: a short climb, deliberately not all the way to the MAP. A raw prior draw sits far
in the posterior's tail, where NUTS's warm-up would spend its iterations on the transient and adapt the step size
and mass matrix to curvature the chain then leaves behind; the MAP is far off too, in the other direction. On
digits (MLP 64-16-10, prior N(0, 1)) the training log-likelihood is -16,730 at a prior draw, -154 after 300 steps
and -28 after 3,000; the mean squared weight is 0.98, 0.54 and 0.15, while the posterior's samples have 1.06: the
weights the data do not pin down spread back to the prior's scale, and the MAP's weight decay has shrunk them.
Different prior draws per chain keep the chains in different basins, so the between-chain R̂ still sees whether
they agree in function space instead of hiding it behind a common start (chains initialised from separately
optimised networks are the common practice for BNN HMC).

**Precision.** float64: a ground truth should not leave rounding to be argued about, and it costs little. A
full-batch gradient of the digits log posterior (1,257 rows, MLP 64-h-10, one thread) took 5% (h = 16), 9%
(h = 32) and 17% (h = 50) longer than in float32, and inside NUTS pyro's own bookkeeping, about 1 ms per
leapfrog step, dilutes that further (docs/design.md, issue 21).

**What is kept.** Per kept sample, the test split's per-sample predictive (class probabilities, or a Gaussian's
mean and variance), never the weights: that is what a method is compared with, and a BNN's weights are only
identified up to symmetries, so their R̂ says little. Convergence is judged there too: split-R̂ and ESS of each
test point's predictive quantity across chains.
"""

from __future__ import annotations

import datetime
import math
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call

from bnnbench.errors import UsageError
from bnnbench.likelihoods import Categorical, Likelihood, get_likelihood
from bnnbench.params import FlatParams
from bnnbench.reference_files import FORMAT, task_posterior_key
from bnnbench.types import DataBundle, Split, TaskSpec

__all__ = ["SUPPORTED_LIKELIHOODS", "ChainResult", "HmcSettings", "PosteriorTarget", "build_target",
           "chain_line", "check_settings", "check_task", "convergence_diagnostics", "draw_summary", "load_task_data",
           "predictive_arrays", "run_chain", "run_chains", "sample_reference", "split_half_resolution",
           "stored_draws"]

SUPPORTED_LIKELIHOODS = ("categorical", "gaussian")
INIT_LEARNING_RATE = 1e-2  # Adam's, for the short MAP run that starts each chain (weights are O(prior_std))


@dataclass(frozen=True)
class HmcSettings:
    """How a reference is sampled; all of it goes to the reference's JSON."""

    chains: int = 4
    samples: int = 1000  # kept per chain, after warm-up
    warmup: int = 1000  # per chain, discarded: NUTS adapts step size and mass matrix here
    seed: int = 0  # chain c uses seed + c
    max_tree_depth: int = 10  # at most 2**depth - 1 leapfrog steps (gradients) per sample
    init_steps: int = 300  # full-batch Adam steps from the chain's prior draw (see the module docstring)
    target_accept: float = 0.8
    dtype: str = "float64"


MAX_SEED = 2**32 - 1  # pyro.set_rng_seed seeds numpy too, which takes 32-bit seeds
MAX_TREE_DEPTH = 15  # 32,767 gradients per sample: past this a chain cannot finish in any budget this tool meets
_LIMITS = {"chains": (1, 256), "samples": (4, 10**6), "warmup": (1, 10**6), "max_tree_depth": (1, MAX_TREE_DEPTH),
           "init_steps": (0, 10**6)}  # samples >= 4: split-R̂ halves each chain and needs a variance per half


def check_settings(settings: HmcSettings, workers: int) -> None:
    """Raise UsageError naming the first option out of range (as its command-line flag)."""
    for name, (low, high) in _LIMITS.items():
        value = getattr(settings, name)
        if not low <= value <= high:
            raise UsageError(f"--{name.replace('_', '-')} must lie in {low}..{high:,}, got {value}")
    if not 0 <= settings.seed <= MAX_SEED - settings.chains + 1:
        raise UsageError(f"--seed must lie in 0..{MAX_SEED - settings.chains + 1} (chain c uses seed + c), "
                         f"got {settings.seed}")
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")


def check_task(task: TaskSpec) -> None:
    """Raise UsageError unless the task states a posterior this module can sample."""
    if not task.posterior:
        raise UsageError(f"task '{task.name}' has no [posterior] table: an HMC reference needs one "
                         f"(prior_std, temperature) to fix its target ({task.path})")
    if task.likelihood not in SUPPORTED_LIKELIHOODS:
        raise UsageError(f"task '{task.name}': HMC references support likelihoods "
                         f"{', '.join(SUPPORTED_LIKELIHOODS)}, not '{task.likelihood}'")


class PosteriorTarget:
    """A task's log posterior on its training split as a function of the model's parameters in one flat vector
    (`FlatParams` order). `potential` is its negative in pyro's form (a dict of tensors in, a scalar out); it
    counts its calls, each of which is one gradient evaluation inside NUTS."""

    def __init__(self, model: torch.nn.Module, likelihood: Likelihood, train: Split, prior_std: float,
                 temperature: float, dtype: torch.dtype = torch.float64) -> None:
        self.model = model.to(dtype).eval()  # eval: no dropout, so the likelihood is a function of θ alone
        self.layout = FlatParams(self.model)
        self.buffers = dict(self.model.named_buffers())
        self.likelihood = likelihood
        self.dtype = dtype
        self.x = train.x.to(dtype)
        self.y = train.y.to(dtype) if train.y.is_floating_point() else train.y
        self.prior_std, self.temperature = float(prior_std), float(temperature)
        self.evaluations = 0

    @property
    def dimension(self) -> int:
        return self.layout.size

    def outputs(self, theta: Tensor, x: Tensor) -> Tensor:
        return functional_call(self.model, (self.layout.unflatten(theta), self.buffers), (x,))

    def log_prior(self, theta: Tensor) -> Tensor:
        return (-0.5 * theta.square().sum() / self.prior_std**2
                - theta.numel() * (math.log(self.prior_std) + 0.5 * math.log(2 * math.pi)))

    def log_posterior(self, theta: Tensor) -> Tensor:
        """Unnormalised: Σ_i log p(y_i | x_i, θ) / temperature + log N(θ; 0, prior_std² I)."""
        log_likelihood = self.likelihood.log_likelihood(self.outputs(theta, self.x), self.y).sum()
        return log_likelihood / self.temperature + self.log_prior(theta)

    def potential(self, params: dict[str, Tensor]) -> Tensor:
        self.evaluations += 1
        return -self.log_posterior(params["theta"])

    def initial_point(self, seed: int, init_steps: int) -> Tensor:
        """A prior draw (seeded), then `init_steps` full-batch Adam steps up the log posterior."""
        generator = torch.Generator().manual_seed(seed)
        theta = (torch.randn(self.dimension, generator=generator, dtype=self.dtype) * self.prior_std)
        theta.requires_grad_(True)
        optimiser = torch.optim.Adam([theta], lr=INIT_LEARNING_RATE)
        for _ in range(init_steps):
            optimiser.zero_grad()
            (-self.log_posterior(theta)).backward()
            optimiser.step()
        theta = theta.detach()
        if not torch.isfinite(self.log_posterior(theta)):
            raise FloatingPointError(f"the log posterior is not finite at the start of the chain of seed {seed}")
        return theta

    def sample_predictive(self, theta: Tensor, x: Tensor) -> Tensor:
        """One θ's predictive on x in the form the reference keeps: class probabilities (N, C) for a categorical
        likelihood; for a Gaussian, mean and variance (noise included), (N, outputs, 2)."""
        with torch.no_grad():
            log_predictive = self.likelihood.log_predictive(self.outputs(theta, x)).double()
        if isinstance(self.likelihood, Categorical):
            return log_predictive.exp()
        mean, log_std = log_predictive[..., 0], log_predictive[..., 1]
        return torch.stack([mean.reshape(len(x), -1), (2 * log_std).exp().reshape(len(x), -1)], dim=-1)


def build_target(task: TaskSpec, bundle: DataBundle, dtype: torch.dtype = torch.float64) -> PosteriorTarget:
    """The log posterior of `task`'s [posterior] table over `bundle.train`."""
    from bnnbench.models import create_model

    check_task(task)
    where = str(task.path)
    model = create_model(task.model, bundle.input_shape, bundle.num_outputs, where)
    likelihood = get_likelihood(task.likelihood, task.likelihood_options, where)
    return PosteriorTarget(model, likelihood, bundle.train, task.posterior["prior_std"],
                           task.posterior["temperature"], dtype)


def load_task_data(task: TaskSpec, data_dir: str | Path | None = None):
    """The task's `LoadedData` (training split in `.bundle.train`, the evaluator's test split in `.test`)."""
    from bnnbench.data import load_data

    return load_data(task.data, str(task.path), data_dir)


@dataclass
class ChainResult:
    """One chain's kept test predictives and what its sampler did after warm-up."""

    chain: int
    predictive: np.ndarray  # (samples, N_test, C) probabilities, or (samples, N_test, outputs, 2) mean/variance
    step_size: float  # adapted in warm-up
    accept_prob: float  # mean NUTS acceptance statistic over the kept samples (warm-up targets 0.8)
    divergences: int
    mean_tree_depth: float
    max_depth_hits: int  # kept samples whose tree reached max_tree_depth (the trajectory was cut short)
    gradient_evaluations: int  # in the kept samples' trajectories
    init_seconds: float
    warmup_seconds: float
    sample_seconds: float
    cpu_seconds: float  # the chain's process CPU time, all phases: its cost on a machine that others share
    sample_cpu_seconds: float
    parameters: np.ndarray | None = None  # (samples, dimension), only when asked for (tests)


def run_chain(target: PosteriorTarget, test_x: Tensor, settings: HmcSettings, chain: int, *,
              keep_parameters: bool = False, progress_bar: bool = False) -> ChainResult:
    """One NUTS chain, seeded by `settings.seed + chain` (its prior draw and pyro's momentum and slice draws)."""
    import pyro
    from pyro.infer.mcmc import MCMC, NUTS

    seed = settings.seed + chain
    pyro.set_rng_seed(seed)
    test_x = test_x.to(target.dtype)
    began, began_cpu = time.perf_counter(), time.process_time()
    start = target.initial_point(seed, settings.init_steps)
    initialised = time.perf_counter()
    predictives, parameters, depths, steps = [], [], [], []
    marks = {"evaluations": target.evaluations, "warmup_end": initialised, "warmup_end_cpu": time.process_time()}

    def after_each_iteration(kernel, params, stage: str, index: int) -> None:
        theta = params["theta"]
        if stage.startswith("Warmup"):
            marks["warmup_end"], marks["warmup_end_cpu"] = time.perf_counter(), time.process_time()
        else:
            leapfrog_steps = target.evaluations - marks["evaluations"]
            steps.append(leapfrog_steps)
            depths.append(leapfrog_steps.bit_length())  # 2**(d-1) <= steps <= 2**d - 1 for a tree of depth d
            predictives.append(target.sample_predictive(theta, test_x).numpy())
            if keep_parameters:
                parameters.append(theta.detach().double().numpy().copy())
            if index == settings.samples - 1:  # pyro resets the kernel's statistics once the run ends
                # "acc. prob" of pyro's progress bar, the mean acceptance statistic; logging() gives it as a string
                marks["sampler"] = {"step_size": float(kernel.step_size),
                                    "accept_prob": float(kernel._mean_accept_prob),
                                    "divergences": len(kernel.diagnostics()["divergences"])}
        marks["evaluations"] = target.evaluations

    kernel = NUTS(potential_fn=target.potential, adapt_step_size=True, adapt_mass_matrix=True, full_mass=False,
                  max_tree_depth=settings.max_tree_depth, target_accept_prob=settings.target_accept)
    sampler = MCMC(kernel, num_samples=settings.samples, warmup_steps=settings.warmup,
                   initial_params={"theta": start}, num_chains=1, hook_fn=after_each_iteration,
                   disable_progbar=not progress_bar, save_params=[])  # the hook keeps what we need, not θ
    sampler.run()
    finished, finished_cpu = time.perf_counter(), time.process_time()
    return ChainResult(
        chain=chain, predictive=np.stack(predictives), **marks["sampler"], mean_tree_depth=float(np.mean(depths)),
        max_depth_hits=int(sum(depth >= settings.max_tree_depth for depth in depths)),
        gradient_evaluations=int(sum(steps)), init_seconds=initialised - began,
        warmup_seconds=marks["warmup_end"] - initialised, sample_seconds=finished - marks["warmup_end"],
        cpu_seconds=finished_cpu - began_cpu, sample_cpu_seconds=finished_cpu - marks["warmup_end_cpu"],
        parameters=np.stack(parameters) if keep_parameters else None)


@dataclass(frozen=True)
class _ChainJob:
    task: TaskSpec
    settings: HmcSettings
    chain: int
    data_dir: str | None


def _one_thread() -> None:
    torch.set_num_threads(1)


def _run_chain_job(job: _ChainJob) -> ChainResult:
    """A worker's chain: it loads the task's data itself (cheaper to pickle a task than its tensors)."""
    _one_thread()
    loaded = load_task_data(job.task, job.data_dir)
    target = build_target(job.task, loaded.bundle, getattr(torch, job.settings.dtype))
    return run_chain(target, loaded.test.x, job.settings, job.chain)


def chain_line(result: ChainResult, settings: HmcSettings) -> str:
    """A one-line summary of a finished chain (progress output)."""
    seconds = result.init_seconds + result.warmup_seconds + result.sample_seconds
    return (f"chain {result.chain} done in {seconds:.0f} s (init {result.init_seconds:.0f}, warm-up "
            f"{result.warmup_seconds:.0f}, sampling {result.sample_seconds:.0f}): step size {result.step_size:.3g}, "
            f"acceptance {result.accept_prob:.2f}, mean tree depth {result.mean_tree_depth:.1f}, "
            f"{result.max_depth_hits} of {settings.samples} at the depth limit, {result.divergences} divergent")


def run_chains(task: TaskSpec, settings: HmcSettings, *, workers: int = 1, data_dir: str | Path | None = None,
               report: Callable[[str], None] | None = None, progress_bar: bool = False,
               keep_parameters: bool = False) -> list[ChainResult]:
    """All chains, in chain order. `workers` > 1 runs them in that many spawned processes (one torch thread
    each); 1 runs them here, one after the other, also on one thread, so the numbers do not depend on the
    worker count. `report` gets one line per finished chain; `progress_bar` shows pyro's bar (one worker)."""
    report = report or (lambda line: None)
    check_task(task)
    if workers <= 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            loaded = load_task_data(task, data_dir)
            target = build_target(task, loaded.bundle, getattr(torch, settings.dtype))
            results = []
            for chain in range(settings.chains):
                results.append(run_chain(target, loaded.test.x, settings, chain, keep_parameters=keep_parameters,
                                         progress_bar=progress_bar))
                report(chain_line(results[-1], settings))
            return results
        finally:
            torch.set_num_threads(threads)
    if keep_parameters:
        raise ValueError("keep_parameters is for in-process chains (workers=1)")
    jobs = [_ChainJob(task, settings, chain, str(data_dir) if data_dir else None) for chain in range(settings.chains)]
    context = multiprocessing.get_context("spawn")  # no torch thread state or locks inherited from this process
    results = {}
    with ProcessPoolExecutor(max_workers=min(workers, settings.chains), mp_context=context,
                             initializer=_one_thread) as pool:
        futures = [pool.submit(_run_chain_job, job) for job in jobs]
        try:
            for future in as_completed(futures):
                result = future.result()
                results[result.chain] = result
                report(chain_line(result, settings))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return [results[chain] for chain in range(settings.chains)]


def convergence_diagnostics(draws: np.ndarray, chunk: int = 4096) -> dict[str, Any]:
    """Split-R̂ (`pyro.ops.stats.split_gelman_rubin`) and ESS (`effective_sample_size`) of each column of
    `draws` (chains, samples, quantities): max and 99th percentile of R̂, min and median of the ESS.

    The ESS is pyro's multi-chain estimate (Geyer's initial monotone sequence) on the raw draws; "bulk" in the
    key names follows the convention that it measures the distribution's centre, not its tails. Columns that
    are constant over every draw (a probability that rounds to exactly 1) carry no information and have no
    R̂; they are left out and counted."""
    from pyro.ops.stats import effective_sample_size, split_gelman_rubin

    draws = np.asarray(draws, dtype=np.float64)
    varying = draws.reshape(-1, draws.shape[-1]).std(axis=0) > 0
    kept = draws[..., varying]
    rhat, ess = [], []
    for first in range(0, kept.shape[-1], chunk):  # the FFT autocorrelation of every column at once is large
        part = torch.from_numpy(np.ascontiguousarray(kept[..., first:first + chunk]))
        rhat.append(split_gelman_rubin(part, chain_dim=0, sample_dim=1).numpy())
        ess.append(effective_sample_size(part, chain_dim=0, sample_dim=1).numpy())
    rhat = np.concatenate(rhat) if rhat else np.ones(1)
    ess = np.concatenate(ess) if ess else np.full(1, float(draws.shape[0] * draws.shape[1]))
    return {"rhat_max": float(np.max(rhat)), "rhat_p99": float(np.percentile(rhat, 99)),
            "ess_bulk_min": float(np.min(ess)), "ess_bulk_median": float(np.median(ess)),
            "quantities": int(draws.shape[-1]), "constant_quantities": int((~varying).sum())}


STORED_DRAWS_PER_CHAIN = 30  # kept per chain in <reference>.draws.npz: R̂, ESS, split-half TV; under 2 MB in git
RESOLUTION_HOW = ("split_half_resolution: the draws' test predictive averaged over each half, for two splits (the "
                  "first half of the chains against the rest; the first half of every chain against its second half); "
                  "tv is the mean over test points of the total variation between the two halves' predictives, "
                  "agreement the share of test points whose top class differs, w2 the 2-Wasserstein distance of "
                  "their moment-matched Gaussians; each measure is the larger over the two splits")


def split_half_resolution(likelihood_name: str, per_draw: np.ndarray) -> dict[str, Any]:
    """How far apart two halves of a reference's draws put the predictive: the chains split in two groups, and every
    chain's first half against its second. For classes, `tv` is the mean total variation between the halves'
    predictives and `agreement` the share of test points whose top class differs (a difference in agreement); for
    a Gaussian, `w2` between the halves' moment-matched mixtures. Each is the larger of the two splits.

    Why this is the reference's resolution: a method's distance to the reference differs from its distance to the
    exact posterior predictive by at most the reference's own distance to it (the triangle inequality), so two
    methods' distances can swap by up to twice that; and a half of the draws is about twice as far from the exact
    predictive as the whole (Monte Carlo error of half the draws, twice the variance, against the whole's, plus the
    whole's own), so twice the reference's error is about the distance between its two halves. Differences below
    it are not resolved by this reference."""
    from bnnbench.metrics import gaussian_w2, total_variation

    chains, samples = per_draw.shape[:2]
    halves = {"time": (per_draw[:, : samples // 2], per_draw[:, samples // 2:])}
    if chains >= 2:
        halves["chains"] = (per_draw[: chains // 2], per_draw[chains // 2:])
    splits = {}
    for name, (first, second) in halves.items():
        if likelihood_name == "categorical":
            a, b = first.mean(axis=(0, 1)), second.mean(axis=(0, 1))
            splits[name] = {"tv": total_variation(np.log(np.clip(a, 1e-300, None)), b),
                            "agreement": float(np.mean(a.argmax(axis=1) != b.argmax(axis=1)))}
        else:
            moments = [(half[..., 0].mean(axis=(0, 1)), half[..., 1].mean(axis=(0, 1)) + half[..., 0].var(axis=(0, 1)))
                       for half in (first, second)]
            splits[name] = {"w2": gaussian_w2(*moments[0], *moments[1])}
    measures = list(next(iter(splits.values())))
    return {**{measure: max(split[measure] for split in splits.values()) for measure in measures}, "splits": splits}


def stored_draws(likelihood_name: str, results: list[ChainResult],
                 per_chain: int = STORED_DRAWS_PER_CHAIN) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every k-th kept draw of each chain (at most `per_chain`), in float32, as <reference>.draws.npz keeps them, and
    what they say: their R̂, ESS and split-half resolution, computed from exactly these float32 numbers so that
    anyone can recompute them from the file (`draw_summary`)."""
    stacked = np.stack([result.predictive for result in results])
    thin = max(1, math.ceil(stacked.shape[1] / per_chain))
    kept = stacked[:, ::thin].astype(np.float32)
    arrays = ({"draw_probs": kept} if likelihood_name == "categorical" else
              {"draw_mean": kept[..., 0], "draw_var": kept[..., 1]})
    return arrays, {"thin": thin, "per_chain": int(kept.shape[1]), **draw_summary(likelihood_name, arrays)}


def draw_summary(likelihood_name: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """R̂, ESS (`convergence_diagnostics`) and `split_half_resolution` of stored draws (`stored_draws`' arrays)."""
    per_draw = (arrays["draw_probs"] if likelihood_name == "categorical" else
                np.stack([arrays["draw_mean"], arrays["draw_var"]], axis=-1)).astype(np.float64)
    chains, samples = per_draw.shape[:2]
    return {**convergence_diagnostics(per_draw.reshape(chains, samples, -1)),
            "resolution": split_half_resolution(likelihood_name, per_draw)}


def predictive_arrays(likelihood_name: str, results: list[ChainResult]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The arrays a reference saves, and the per-sample quantities (chains, samples, quantities) its convergence
    diagnostics are computed on.

    Categorical: `probs` (N_test, C), the mean over every chain and sample, and `chain_probs` (chains, N_test, C).
    Gaussian: `mean` and `var` (N_test, outputs) of the equal-weight mixture of every sample's predictive
    (variance = mean of the components' variances + variance of their means), and `chain_mean`, `chain_var`
    per chain; the diagnostics cover each sample's predictive mean and variance."""
    stacked = np.stack([result.predictive for result in results])  # (chains, samples, N_test, ...)
    chains, samples = stacked.shape[:2]
    if likelihood_name == "categorical":
        arrays = {"probs": stacked.mean(axis=(0, 1)), "chain_probs": stacked.mean(axis=1)}
    else:
        means, variances = stacked[..., 0], stacked[..., 1]
        chain_mean = means.mean(axis=1)
        arrays = {"mean": means.mean(axis=(0, 1)), "var": variances.mean(axis=(0, 1)) + means.var(axis=(0, 1)),
                  "chain_mean": chain_mean, "chain_var": variances.mean(axis=1) + means.var(axis=1)}
    return arrays, stacked.reshape(chains, samples, -1)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"torch": torch.__version__}
    for name in ("pyro-ppl", "bnnbench"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "unknown"
    return found


def sample_reference(task: TaskSpec, settings: HmcSettings, *, workers: int = 1,
                     data_dir: str | Path | None = None, report: Callable[[str], None] | None = None,
                     progress_bar: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Sample the task's posterior and summarise it: (arrays, meta) as `save_reference` writes them."""
    check_task(task)
    began = time.perf_counter()
    loaded = load_task_data(task, data_dir)  # here first: missing data fail before any worker starts
    results = run_chains(task, settings, workers=workers, data_dir=data_dir, report=report,
                         progress_bar=progress_bar)
    arrays, draws = predictive_arrays(task.likelihood, results)
    targets = loaded.test.y.numpy()
    arrays["targets"] = targets.astype(np.int64 if task.likelihood == "categorical" else np.float64)
    diagnostics = convergence_diagnostics(draws)
    draw_arrays, draws_meta = stored_draws(task.likelihood, results)
    resolution = split_half_resolution(task.likelihood, np.stack([result.predictive for result in results]))
    meta = {
        "format": FORMAT, "task": task.name, "task_version": task.version, "task_key": task_posterior_key(task),
        "likelihood": task.likelihood, "likelihood_options": task.likelihood_options, "posterior": task.posterior,
        "chains": settings.chains, "samples": settings.samples, "warmup": settings.warmup, "seed": settings.seed,
        "max_tree_depth": settings.max_tree_depth, "init_steps": settings.init_steps,
        "target_accept": settings.target_accept, "dtype": settings.dtype, "workers": workers,
        "step_size": [result.step_size for result in results],
        "accept_rate": [result.accept_prob for result in results],
        "divergences": [result.divergences for result in results],
        "mean_tree_depth": [result.mean_tree_depth for result in results],
        "max_depth_hits": [result.max_depth_hits for result in results],
        "gradient_evaluations": [result.gradient_evaluations for result in results],
        "chain_seconds": [result.init_seconds + result.warmup_seconds + result.sample_seconds for result in results],
        **diagnostics,
        "resolution": {**resolution, "draws": "every kept draw of every chain", "how": RESOLUTION_HOW},
        "stored_draws": draws_meta,
        "wall_seconds": time.perf_counter() - began,
        "versions": _versions(),
        "test_rows": len(targets),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return arrays | draw_arrays, meta
