"""Cost of ensemble, mc-dropout, swag and rank1 relative to map: seconds per training epoch and the fit's peak
memory, each (method, repeat) in a fresh subprocess (see vi_cost.py). Every method trains for the same number
of epochs over the same data; an ensemble's epoch trains all K members, vmapped (default) or in a loop.

    python benchmarks/others_cost.py --task digits-mlp --epochs 10 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics

from vi_cost import measure, print_ratios

RUNS = [("map", "map", {}), ("ensemble K=5 vmap", "ensemble", {"vectorise": "vmap"}),
        ("ensemble K=5 loop", "ensemble", {"vectorise": "loop"}), ("mc-dropout", "mc-dropout", {}),
        ("swag", "swag", {}), ("rank1 K=4", "rank1", {})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits-mlp")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    results = {}
    for label, method, overrides in RUNS:
        runs = [measure(args.task, method, args.epochs, args.device, overrides) for _ in range(args.repeats)]
        results[label] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print_ratios(results, f"task {args.task}, device {args.device}, median of {args.repeats} runs, "
                 f"{args.epochs} epochs")

if __name__ == "__main__":
    main()
