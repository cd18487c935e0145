"""Reference moments of the `logreg-breast-cancer` target (bnnbench.targets) by NUTS: its posterior mean and
covariance, with split-R̂, bulk ESS and the Monte Carlo standard error of the mean, written to
`tasks/references/logreg-breast-cancer.json`, which the target reads.

Pyro's NUTS over the target's own log density (the same function the benchmark's methods see), float64, one torch
thread per chain. Each chain starts from its own prior draw, N(0, prior_std² I): far out in the posterior's tails
and in different directions, so that chains that agree after warm-up (R̂ ≈ 1) agree because they forgot their
starts. The mass matrix is dense and adapted in warm-up: the standardised breast-cancer features are strongly
correlated (radius, perimeter and area nearly collinear), so the posterior is too, and a diagonal mass matrix would
need much deeper trees.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/target_reference.py --chains 4 --warmup 1000 --draws 2000

`--check` samples but writes nothing (a smoke run: `--chains 2 --warmup 100 --draws 100 --check`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from bnnbench.atomic import write_text
from bnnbench.hmc import convergence_diagnostics
from bnnbench.targets import (  # the target's own density and file layout, so the reference is of that target
    _LOGREG_NAME,
    _LOGREG_PRIOR_STD,
    _REFERENCE_FORMAT,
    _logistic_regression_density,
    _reference_path,
)

TARGET_ACCEPT, MAX_TREE_DEPTH = 0.8, 10


def run_chain(chain: int, seed: int, warmup: int, draws: int) -> dict:
    """One NUTS chain seeded by `seed + chain` (its prior-draw start and pyro's momentum and slice draws)."""
    import pyro
    from pyro.infer.mcmc import MCMC, NUTS

    torch.set_num_threads(1)
    pyro.set_rng_seed(seed + chain)
    dim, log_density, _ = _logistic_regression_density()
    start = _LOGREG_PRIOR_STD * torch.randn(dim, dtype=torch.float64)

    counts = {"evaluations": 0, "kept_evaluations": 0}

    def potential(params: dict) -> torch.Tensor:
        counts["evaluations"] += 1
        return -log_density(params["theta"][None])[0]

    def after_each_iteration(kernel, params, stage: str, index: int) -> None:
        if stage.startswith("Warmup"):
            counts["kept_evaluations"] = -counts["evaluations"]
        elif index == draws - 1:  # pyro resets the kernel's statistics once the run ends
            counts["accept_prob"] = float(kernel._mean_accept_prob)  # the mean acceptance statistic
            counts["kept_evaluations"] += counts["evaluations"]

    kernel = NUTS(potential_fn=potential, adapt_step_size=True, adapt_mass_matrix=True, full_mass=True,
                  target_accept_prob=TARGET_ACCEPT, max_tree_depth=MAX_TREE_DEPTH)
    sampler = MCMC(kernel, num_samples=draws, warmup_steps=warmup, initial_params={"theta": start}, num_chains=1,
                   disable_progbar=True, hook_fn=after_each_iteration)
    began = time.perf_counter()
    sampler.run()
    seconds = time.perf_counter() - began
    diagnostics = sampler.diagnostics()
    return {"chain": chain, "seed": seed + chain, "start": start.tolist(), "seconds": seconds,
            "draws": sampler.get_samples()["theta"].double().numpy(),
            "step_size": float(kernel.step_size),
            "divergences": len(diagnostics["divergences"]["chain 0"]), "accept_prob": counts["accept_prob"],
            "leapfrog_per_draw": counts["kept_evaluations"] / draws}


def _run_job(arguments: tuple[int, int, int, int]) -> dict:
    return run_chain(*arguments)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for name in ("pyro-ppl", "scikit-learn", "bnnbench"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "unknown"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=2000, help="kept draws per chain")
    parser.add_argument("--seed", type=int, default=0, help="chain c is seeded with seed + c")
    parser.add_argument("--workers", type=int, default=1, help="chains run in this many processes")
    parser.add_argument("--output", type=Path, default=_reference_path())
    parser.add_argument("--check", action="store_true", help="sample and report, write nothing")
    args = parser.parse_args()

    began = time.perf_counter()
    jobs = [(chain, args.seed, args.warmup, args.draws) for chain in range(args.chains)]
    if args.workers > 1:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # no torch thread state inherited
        with ProcessPoolExecutor(max_workers=min(args.workers, args.chains), mp_context=context) as pool:
            results = list(pool.map(_run_job, jobs))
    else:
        results = [_run_job(job) for job in jobs]
    for result in results:
        print(f"chain {result['chain']} (seed {result['seed']}): {result['seconds']:.0f} s, step size "
              f"{result['step_size']:.3g}, mean acceptance {result['accept_prob']:.2f}, "
              f"{result['leapfrog_per_draw']:.1f} gradients per kept draw, "
              f"{result['divergences']} divergent")
    draws = np.stack([result["draws"] for result in results])  # (chains, draws, D)
    flat = draws.reshape(-1, draws.shape[-1])
    mean, covariance = flat.mean(axis=0), np.cov(flat, rowvar=False)
    diagnostics = convergence_diagnostics(draws)

    from pyro.ops.stats import effective_sample_size

    ess = effective_sample_size(torch.from_numpy(draws), chain_dim=0, sample_dim=1).numpy()
    mcse = flat.std(axis=0, ddof=1) / np.sqrt(ess)
    diagnostics.update({
        "mcse_mean": mcse.tolist(),  # per coordinate: sd / sqrt(ESS)
        "mcse_mean_max": float(mcse.max()),
        "mcse_mean_max_over_sd": float((mcse / flat.std(axis=0, ddof=1)).max()),
        "divergences": [result["divergences"] for result in results],
        "accept_prob": [result["accept_prob"] for result in results],
        "leapfrog_per_draw": [round(result["leapfrog_per_draw"], 2) for result in results],
        "step_size": [result["step_size"] for result in results],
        "chain_seconds": [round(result["seconds"], 1) for result in results],
        "wall_seconds": round(time.perf_counter() - began, 1),
    })
    print(f"max split-R̂ {diagnostics['rhat_max']:.4f}, min bulk ESS {diagnostics['ess_bulk_min']:.0f} "
          f"(median {diagnostics['ess_bulk_median']:.0f}) of {flat.shape[0]} draws, max MCSE of the mean "
          f"{diagnostics['mcse_mean_max']:.2e} ({diagnostics['mcse_mean_max_over_sd']:.3f} sd), "
          f"{sum(diagnostics['divergences'])} divergent, {diagnostics['wall_seconds']:.0f} s")
    if diagnostics["rhat_max"] >= 1.01:
        print("warning: max split-R̂ is not below 1.01; sample longer before trusting this reference",
              file=sys.stderr)
    if args.check:
        return
    document = {
        "format": _REFERENCE_FORMAT,
        "target": _LOGREG_NAME,
        "dimension": int(draws.shape[-1]),
        "prior_std": _LOGREG_PRIOR_STD,
        "coordinates": "the 30 breast-cancer features standardised over all 569 rows (population std), then the "
                       "intercept",
        "mean": mean.tolist(),
        "covariance": covariance.tolist(),
        "settings": {"sampler": "pyro NUTS, dense mass matrix and step size adapted in warm-up",
                     "chains": args.chains, "warmup": args.warmup, "draws": args.draws, "seed": args.seed,
                     "chain_seeds": [result["seed"] for result in results], "initialisation": "a prior draw",
                     "target_accept": TARGET_ACCEPT, "max_tree_depth": MAX_TREE_DEPTH, "dtype": "float64"},
        "diagnostics": diagnostics,
        "versions": _versions(),
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/target_reference.py " + " ".join(sys.argv[1:]),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.output, json.dumps(document, indent=1) + "\n")
    print(f"wrote {args.output.resolve()}")


if __name__ == "__main__":
    main()
