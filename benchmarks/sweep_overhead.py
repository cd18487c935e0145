"""Overhead of `bnnbench sweep`: the whole command's wall time against the sum of its runs' own times (run.json
`duration_s`, from a run's start to its results), per repeat, and the median of the ratios.

The difference is what a sweep adds: starting the interpreter and the workers, importing torch, loading the data
and validating every configuration once, handing runs to workers, and shutting down.

    python benchmarks/sweep_overhead.py --tasks digits-mlp --methods map,swag,mc-dropout,ensemble,elbo-vi \
        --seeds 0-1 --budget ci --repeats 5
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(args: argparse.Namespace, results: Path) -> tuple[float, float, int]:
    """(command wall seconds, sum of the runs' own seconds, runs) of one sweep into an empty results dir."""
    shutil.rmtree(results, ignore_errors=True)
    command = [sys.executable, "-m", "bnnbench", "sweep", "--tasks", args.tasks, "--methods", args.methods,
               "--seeds", args.seeds, "--workers", str(args.workers), "--device", args.device, "--quiet",
               "--results-dir", str(results), *(["--budget", args.budget] if args.budget else [])]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - start
    records = [json.loads(path.read_text()) for path in results.glob("*/*/*/run.json")]
    return wall, sum(record["duration_s"] for record in records), len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="digits-mlp")
    parser.add_argument("--methods", default="map,swag,mc-dropout,ensemble,elbo-vi")
    parser.add_argument("--seeds", default="0-1")
    parser.add_argument("--budget", default="ci")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        measure(args, Path(scratch) / "results")  # warm-up: file caches
        rows = [measure(args, Path(scratch) / "results") for _ in range(args.repeats)]
    print(f"sweep {args.tasks} x {args.methods} x seeds {args.seeds} (budget {args.budget}, {args.workers} worker(s))")
    print(f"{'repeat':>6} {'runs':>5} {'wall s':>8} {'runs s':>8} {'ratio':>7}")
    for index, (wall, own, runs) in enumerate(rows):
        print(f"{index:>6} {runs:>5} {wall:8.2f} {own:8.2f} {wall / own:7.3f}")
    ratios = [wall / own for wall, own, _ in rows]
    walls, owns = [row[0] for row in rows], [row[1] for row in rows]
    print(f"median wall {statistics.median(walls):.2f} s, median runs {statistics.median(owns):.2f} s, "
          f"median ratio {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
