"""score-vi's gradient estimators at equal network evaluations: plain, antithetic pairs and the control variate.

Each variant draws S samples from the anchor per mini-batch, so it costs S forward and backward passes of the
network per mini-batch; the control variate and antithetic pairing add no pass. At S = 2: plain, antithetic and
control variate; at S = 1 (the default, and the cheap pair): plain and control variate. Every run is a plain
`bnnbench run` of score-vi at the task's default budget and settings, with `--set` for the variant's; the table
gives mean ± standard error over the seeds. digits-mlp: validation and clean-test NLL, clean-test ECE;
digits-fidelity: the predictive's total variation to the HMC reference (`tv`, lower is better) and its top-1
agreement with it (`agreement`, higher is better), on the test split. Every table adds the fitted posterior's
width (`mean σ`: the mean over the network's tensors of each tensor's mean σ) and the mean fit seconds.

    OMP_NUM_THREADS=1 python benchmarks/score_vi_estimators.py --results-dir /tmp/score-vi-estimators \
        [--tasks digits-mlp] [--seeds 3] [--budget ci] [--set init_std=1e-3 prior_centre=zero]

Runs that already have an ok result in --results-dir are read, not re-run (as `bnnbench run`).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

# (label, network passes per mini-batch, --set overrides)
VARIANTS = (
    ("plain S=1", 1, {"train_samples": 1}),
    ("control variate S=1", 1, {"train_samples": 1, "control_variate": True}),
    ("plain S=2", 2, {"train_samples": 2}),
    ("antithetic S=2", 2, {"train_samples": 2, "antithetic": True}),
    ("control variate S=2", 2, {"train_samples": 2, "control_variate": True}),
)
# task: [(column, split, metric)], clean data only
COLUMNS = {
    "digits-mlp": [("val NLL", "val", "nll"), ("test NLL", "test", "nll"), ("test ECE", "test", "ece")],
    "digits-fidelity": [("test TV", "test", "tv"), ("test agreement", "test", "agreement")],
}


def mean_and_error(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}" if values else "-"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values) / math.sqrt(len(values)):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, required=True)
    parser.add_argument("--tasks", nargs="+", default=list(COLUMNS), choices=list(COLUMNS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--budget", default=None, help="a named budget of the task (default: the task's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="score-vi settings for every variant, parsed as `bnnbench run --set` parses them")
    args = parser.parse_args()

    from bnnbench.api import run
    from bnnbench.tomlfile import parse_value

    common = {key: parse_value(value) for key, _, value in (item.partition("=") for item in args.set)}

    started = time.perf_counter()
    for task in args.tasks:
        rows = []
        for label, passes, overrides in VARIANTS:
            task_started = time.perf_counter()
            metrics = run(task, "score-vi", seeds=range(args.seeds), overrides=common | overrides,
                          results_dir=args.results_dir, budget=args.budget, device=args.device)
            clean = metrics[(metrics["corruption"] == "none") & (metrics["severity"] == 0)]
            cells = [mean_and_error(clean[(clean["split"] == split) & (clean["metric"] == metric)]["value"].tolist())
                     for _, split, metric in COLUMNS[task]]
            records = [json.loads((args.results_dir / task / "score-vi" / run_id / "run.json").read_text())
                       for run_id in sorted(clean["run_id"].unique())]
            # the posterior's width: the mean over tensors of each tensor's mean σ (fit_extra.mean_std)
            sigmas = [statistics.fmean(record["fit_extra"]["mean_std"].values()) for record in records]
            rows.append([label, str(passes), str(len(records)), *cells, mean_and_error(sigmas),
                         f"{statistics.fmean(r['fit_seconds'] for r in records):.1f}" if records else "-"])
            print(f"  {task} {label}: {time.perf_counter() - task_started:.0f} s", flush=True)
        header = ["variant", "passes/batch", "seeds", *[column for column, _, _ in COLUMNS[task]], "mean σ", "fit s"]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        settings = "".join(f", {key}={value}" for key, value in common.items())
        print(f"\n{task} (score-vi, budget {args.budget or 'default'}{settings}, mean ± standard error over seeds)")
        for row in [header, ["-" * width for width in widths], *rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        print()
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
