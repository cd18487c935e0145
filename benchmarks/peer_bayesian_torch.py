"""The peer for `vi_cost.py`: mean-field Gaussian VI with bayesian-torch's layers (the most-used PyTorch BNN
layer library) on the same MLP, data split, batch size and thread count as bnnbench's map and VI runs.

bayesian-torch is not a bnnbench dependency: run this with an interpreter that has it, e.g. a scratch
environment that sees this project's packages plus `pip install bayesian-torch`. `vi_cost.py --peer-python
PATH` runs it in the same measurement as bnnbench's methods. Prints one JSON line: seconds per epoch (all
epochs after the first, which pays first-call costs) and the process's peak memory growth.

    python benchmarks/peer_bayesian_torch.py --task digits-mlp --layer reparameterization --epochs 10
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time

import torch
from torch import nn


def bayesian_mlp(widths: list[int], num_classes: int, layer: str) -> nn.Module:
    from bayesian_torch.layers import LinearFlipout, LinearReparameterization

    kind = {"reparameterization": LinearReparameterization, "flipout": LinearFlipout}[layer]

    class BayesianMLP(nn.Module):
        """Flatten, Bayesian Linear-ReLU blocks, a Bayesian head: bnnbench's `mlp` with every Linear replaced
        (prior N(0, 1), as bnnbench's VI default)."""

        def __init__(self) -> None:
            super().__init__()
            sizes = [*widths, num_classes]
            self.layers = nn.ModuleList(kind(width_in, width_out, prior_variance=1.0)
                                        for width_in, width_out in zip(sizes[:-1], sizes[1:], strict=True))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x, kl = x.flatten(1), 0.0
            for index, layer in enumerate(self.layers):
                x, layer_kl = layer(x)
                kl = kl + layer_kl
                if index < len(self.layers) - 1:
                    x = torch.relu(x)
            return x, kl

    return BayesianMLP()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits-mlp")
    parser.add_argument("--layer", choices=["reparameterization", "flipout"], default="reparameterization")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()

    from bnnbench.data import load_data
    from bnnbench.tasks import load_task

    task = load_task(args.task)
    if task.model["name"] != "mlp":
        raise SystemExit(f"the peer has only bnnbench's mlp; task {args.task} has {task.model['name']}")
    data = load_data(task.data).bundle
    torch.manual_seed(0)
    model = bayesian_mlp([math.prod(data.input_shape), *task.model.get("hidden", [128, 128])], data.num_outputs,
                         args.layer)
    batch_size, n = int(task.train.get("batch_size", 128)), len(data.train)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    with open("/proc/self/status") as status:  # as vi_cost.py's children: resident now, against the peak after
        before = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
    seconds = []
    for _ in range(args.epochs + 1):
        start = time.perf_counter()
        for rows in torch.randperm(n, generator=generator).split(batch_size):
            logits, kl = model(data.train.x[rows])
            loss = nn.functional.cross_entropy(logits, data.train.y[rows]) + kl / n
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - start)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(json.dumps({"seconds_per_epoch": sum(seconds[1:]) / args.epochs, "fit_peak_mb": peak,
                      "posthoc_seconds": 0.0}))


if __name__ == "__main__":
    main()
