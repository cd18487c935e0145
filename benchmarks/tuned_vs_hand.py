"""Do tuned settings hold at the full budget? Runs every method of a task at its full budget over the report seeds
with each given variant of its settings (a task file as it was, a tuned file) and prints test NLL (mean ± standard
error over seeds) side by side, with each tuned study's cost in full-run equivalents and its pruned count.

    python benchmarks/tuned_vs_hand.py --task digits-mlp --variant hand=old/digits-mlp.toml \
        --variant new-tuned=digits-mlp:tasks/tuned/digits-mlp.toml --results-dir /tmp/transfer --workers 2

A variant is LABEL=TASK[:TUNED]: TASK a task name or .toml file, TUNED a `bnnbench tune` file applied to it.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from bnnbench import api
from bnnbench.tuned import load_tuned


def _variant(text: str) -> tuple[str, str, str | None]:
    label, _, spec = text.partition("=")
    task, _, tuned = spec.partition(":")
    return label, task, tuned or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, help="the task's name (for the table)")
    parser.add_argument("--variant", action="append", required=True, help="LABEL=TASK[:TUNED]")
    parser.add_argument("--methods", default="map,score-vi,elbo-vi,laplace-ll,laplace-subnet,laplace-all,"
                                              "sampled-laplace,ensemble,mc-dropout,swag,rank1")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--metric", default="nll")
    parser.add_argument("--results-dir", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    methods, seeds = args.methods.split(","), [int(seed) for seed in args.seeds.split(",")]
    table: dict[str, dict[str, str]] = {method: {} for method in methods}
    costs: dict[str, dict[str, str]] = {method: {} for method in methods}
    labels = []
    for text in args.variant:
        label, task, tuned = _variant(text)
        labels.append(label)
        results = args.results_dir / label
        api.sweep([task], methods, seeds=seeds, workers=args.workers, results_dir=results, tuned=tuned)
        _, metrics = api.load_results(results)
        rows = metrics[(metrics["split"] == "test") & (metrics["corruption"] == "none") &
                       (metrics["metric"] == args.metric)]
        summaries = load_tuned(Path(tuned))["summary"] if tuned else {}
        for method in methods:
            values = rows[rows["method"] == method]["value"].tolist()
            if not values:
                table[method][label] = "failed"
                continue
            mean = sum(values) / len(values)
            se = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values)) \
                if len(values) > 1 else math.nan
            table[method][label] = f"{mean:.4f} ± {se:.4f} (n={len(values)})"
            summary = summaries.get(method)
            if summary:
                costs[method][label] = (f"{summary.get('full_runs', '?')} runs, {summary.get('pruned', 0)} pruned, "
                                        f"{summary.get('diverged', 0)} diverged")
    print(f"{args.task}: test {args.metric}, full budget, seeds {args.seeds} (mean ± standard error)")
    print(" | ".join(["method", *labels, *[f"{label} study" for label in labels if costs and any(
        label in c for c in costs.values())]]))
    for method in methods:
        cells = [table[method].get(label, "-") for label in labels]
        cells += [costs[method].get(label, "-") for label in labels if any(label in c for c in costs.values())]
        print(" | ".join([method, *cells]))


if __name__ == "__main__":
    main()
