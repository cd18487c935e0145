"""Cost of score-vi and elbo-vi relative to map: seconds per training epoch and the fit's peak memory.

Each (method, repeat) runs in a fresh subprocess, so one method's allocations never count against another
and peak memory is the process's own. Seconds per epoch are those of the VI phase (after the MAP warm-up)
for the VI methods and of the whole fit for map, on the same task, data, batch size and thread count.
Prints medians over repeats and the ratios to map.

    python benchmarks/vi_cost.py --task digits-mlp --epochs 10 --repeats 3 [--peer-python scratch/bin/python]

With --peer-python, bayesian-torch's reparameterisation and flipout layers on the same MLP are measured in
the same run (that interpreter needs bayesian-torch; bnnbench does not depend on it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

METHODS = ("map", "elbo-vi", "score-vi")
# score-vi's cheap variant: one inner step per mini-batch against an anchor refreshed every 5 (score_vi.md)
LAGGED = ("score-vi K=1,r=5", "score-vi", {"inner_steps": 1, "refresh_every": 5})

CHILD = r"""
import json, resource, sys, torch
from bnnbench.data import load_data
from bnnbench.methods import build_method
from bnnbench.models import create_model
from bnnbench.tasks import load_task
from bnnbench.types import Budget, FitContext
task_name, method, epochs, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
overrides = json.loads(sys.argv[5])
torch.manual_seed(0)
task = load_task(task_name)
data = load_data(task.data).bundle
model = create_model(task.model, data.input_shape, data.num_outputs)
fit_method = build_method(method, task, overrides)
device = torch.device(device)
def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024
before = rss_mb()
if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
    base_cuda = torch.cuda.memory_allocated()
_, info = fit_method.fit(task, model, data, Budget(max_epochs=epochs), FitContext(device, 0, False))
per_epoch = info.extra.get("vi_seconds_per_epoch", info.seconds / max(info.epochs, 1))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = {"seconds_per_epoch": per_epoch, "fit_peak_mb": peak - before,
       "posthoc_seconds": info.extra.get("laplace_seconds", 0.0)}
if device.type == "cuda":
    out["fit_peak_mb"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
print(json.dumps(out))
"""


def measure(task: str, method: str, epochs: int, device: str, overrides: dict) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, task, method, str(epochs), device, json.dumps(overrides)],
                            check=True, capture_output=True, text=True, env=os.environ)
    return json.loads(result.stdout.strip().splitlines()[-1])


PEER_LAYERS = ("reparameterization", "flipout")


def measure_peer(python: str, task: str, layer: str, epochs: int) -> dict:
    """bayesian-torch's mean-field layers on the same MLP (benchmarks/peer_bayesian_torch.py, run by `python`)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_bayesian_torch.py")
    result = subprocess.run([python, script, "--task", task, "--layer", layer, "--epochs", str(epochs)], check=True,
                            capture_output=True, text=True, env=os.environ)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits-mlp")
    parser.add_argument("--epochs", type=int, default=10, help="map epochs; VI methods run twice as many "
                        "(half warm-up) so their VI phase has as many epochs as map")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD:KEY=VALUE",
                        help="hyper-parameter override for one method, e.g. score-vi:inner_steps=1")
    parser.add_argument("--peer-python", metavar="PATH", help="an interpreter with bayesian-torch installed: its "
                        "mean-field layers on the same MLP join the table (benchmarks/peer_bayesian_torch.py)")
    args = parser.parse_args()
    overrides: dict[str, dict] = {method: {} for method in METHODS}
    for item in args.set:
        method, _, assignment = item.partition(":")
        key, _, value = assignment.partition("=")
        overrides[method][key] = json.loads(value) if value[:1].isdigit() or value in ("true", "false") else value
    runs_of = [(method, method, overrides[method]) for method in METHODS]
    runs_of.append((LAGGED[0], LAGGED[1], overrides["score-vi"] | LAGGED[2]))
    results = {}
    for label, method, method_overrides in runs_of:
        epochs = args.epochs if method == "map" else 2 * args.epochs
        runs = [measure(args.task, method, epochs, args.device, method_overrides) for _ in range(args.repeats)]
        results[label] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    for layer in PEER_LAYERS if args.peer_python else ():
        runs = [measure_peer(args.peer_python, args.task, layer, args.epochs) for _ in range(args.repeats)]
        results[f"bayesian-torch {layer[:7]}"] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print_ratios(results, f"task {args.task}, device {args.device}, median of {args.repeats} runs, "
                 f"{args.epochs} epochs timed")


def print_ratios(results: dict[str, dict], title: str) -> None:
    """Seconds per epoch and fit peak memory of each labelled method, and their ratios to "map"'s."""
    base = results["map"]
    print(f"{title}, threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"{'method':24} {'s/epoch':>9} {'x map':>7} {'fit peak MB':>12} {'x map':>7}")
    for method, values in results.items():
        time_ratio = values["seconds_per_epoch"] / base["seconds_per_epoch"]
        memory_ratio = values["fit_peak_mb"] / max(base["fit_peak_mb"], 1e-9)
        print(f"{method:24} {values['seconds_per_epoch']:9.4f} {time_ratio:7.2f} {values['fit_peak_mb']:12.1f} "
              f"{memory_ratio:7.2f}")

if __name__ == "__main__":
    main()
