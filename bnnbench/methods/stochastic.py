"""Predictives of networks whose forward pass is itself random (MC dropout, rank-1 BNNs): S draws are S
copies of the batch stacked into as few forward passes as `MAX_ROWS` allows, so evaluation costs a few
wide passes rather than S narrow ones."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from bnnbench.likelihoods import Likelihood
from bnnbench.train import autocast

__all__ = ["MAX_ROWS", "StochasticForwardPredictive", "tiled_forward"]

MAX_ROWS = 16384  # rows per forward pass at evaluation: a ViT on 8x8 digits then holds about 1 GB of activations


def tiled_forward(model: nn.Module, x: Tensor, copies: int, copies_per_pass: int) -> Tensor:
    """(copies, B, ...) outputs of `model` on `copies` stacked copies of `x`, `copies_per_pass` at a time
    (copy-major rows: rows c·B … (c+1)·B − 1 are copy c)."""
    outputs = []
    for begin in range(0, copies, copies_per_pass):
        n = min(copies_per_pass, copies - begin)
        out = model(x.repeat(n, *([1] * (x.dim() - 1))))
        outputs.append(out.view(n, len(x), *out.shape[1:]))
    return torch.cat(outputs)


class StochasticForwardPredictive:
    """`copies(n_samples)` stochastic passes of `model` per batch, in passes of whole groups of `group`
    copies (rank-1 needs every pass to hold whole sets of its K components)."""

    def __init__(self, model: nn.Module, likelihood: Likelihood, copies: Callable[[int], int], group: int = 1) -> None:
        self.model, self.likelihood, self.copies, self.group = model, likelihood, copies, group

    @torch.no_grad()
    def predict(self, x: Tensor, n_samples: int) -> Tensor:
        copies = self.copies(n_samples)
        per_pass = max(self.group, MAX_ROWS // max(len(x), 1) // self.group * self.group)
        with autocast(x.device):
            outputs = tiled_forward(self.model, x, copies, per_pass)
        return self.likelihood.log_predictive(outputs)
