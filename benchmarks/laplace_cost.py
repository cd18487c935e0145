"""Cost of the Laplace methods relative to one MAP epoch: seconds of the post-hoc part of each fit (curvature,
posterior, prior-precision tuning; for sampled-laplace the anchors, EM and the SGD solves) over the seconds of one
map training epoch on the same task, data, batch size and thread count, and each fit's peak memory.

Every fit trains its MAP for `--epochs` epochs first (the post-hoc cost does not depend on how long). Each
(method, repeat) runs in a fresh subprocess (see vi_cost.py); medians over repeats.

    python benchmarks/laplace_cost.py --task digits-mlp --epochs 5 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics

from vi_cost import measure

METHODS = ("laplace-ll", "laplace-subnet", "laplace-all", "sampled-laplace")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits-mlp")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()

    def median_of(method: str) -> dict:
        runs = [measure(args.task, method, args.epochs, args.device, {}) for _ in range(args.repeats)]
        return {key: statistics.median(run[key] for run in runs) for key in runs[0]}

    epoch = median_of("map")["seconds_per_epoch"]
    print(f"task {args.task}, device {args.device}, threads {os.environ.get('OMP_NUM_THREADS', 'default')}, "
          f"median of {args.repeats} runs; one map epoch {epoch:.4f} s")
    print(f"{'method':16} {'post-hoc s':>11} {'x map epoch':>12} {'fit peak MB':>12}")
    for method in args.methods.split(","):
        values = median_of(method)
        print(f"{method:16} {values['posthoc_seconds']:11.2f} {values['posthoc_seconds'] / epoch:12.1f} "
              f"{values['fit_peak_mb']:12.1f}")


if __name__ == "__main__":
    main()
