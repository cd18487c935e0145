"""Koopa (Liu et al., NeurIPS 2023, "Koopa: Learning Non-stationary Time Series Dynamics with Koopman Predictors"),
univariate: context window (B, context_length) -> per-step outputs (B, prediction_length, channels).

The conventions are `bnnbench.models.forecast`'s: windows arrive normalised by their context (the data does the
paper's series stationarisation), `channels` is 2 (mean, log standard deviation) or 1 (mean), and the output
layer is one `nn.Linear`, the last layer (`model.bnnbench_last_layer = "head"`).

The paper's pieces, each a module here:
- `FourierFilter`: the window's rFFT; the `invariant_fraction` (the paper's alpha) of frequencies with the largest
  amplitude make the time-invariant part x_inv (their inverse FFT), the rest x_var = x - x_inv, so the parts sum
  to the window. The paper fixes one set of frequencies, the largest in amplitude averaged over the training set;
  a bnnbench factory is built from shapes alone and never sees the data, so the set is chosen per window (and per
  block, on the block's input), by the same amplitude rule. Where a series' dominant periods are stable (days,
  weeks) every window picks the same ones.
  The choice is a mask of constants (no gradient flows through which frequencies were picked).
- The time-invariant Koopman predictor: an MLP encoder embeds x_inv (the whole context) into `dynamic_dim`
  observables, one learned global operator per block (`KoopmanOperator`, a square bias-free `nn.Linear`, started
  orthogonal so it neither blows up nor damps the embedding) advances them over the horizon, an MLP decoder maps
  them to the forecast.
- The time-variant Koopman predictor (`TimeVariantPredictor`): x_var cut into segments of `seg_len` (the context
  padded at its start by repeating its first value up to whole segments), each segment embedded by an MLP; a
  local operator is fitted to this window's own embeddings by least squares, DMD style (`fit_local_operator`),
  rolled forward over ceil(horizon / seg_len) segments and decoded (the forecast, cut to the horizon), and applied
  one step to each snapshot (the backcast, cut to the context).
- `num_blocks` blocks with the paper's block-wise residual: each block's time-variant backcast is removed from its
  input to make the next block's input, and the blocks' forecasts (invariant plus variant) are summed. As in the
  authors' code the encoders and decoders are shared by the blocks, so every block's operator acts on the same
  observables; only the invariant operators are per block.

The local least squares is DMD's K = pinv(A) B (A the m snapshots that have a successor, B those successors, rows
of dynamic_dim D) with a ridge-regularised pseudo-inverse from the normal equations, through `torch.linalg.solve`:
pinv(A) = A^T (A A^T + lam I)^-1 when m <= D (the usual case: m = segments - 1 is a handful), else
(A^T A + lam I)^-1 A^T, the same matrix, each the better-conditioned solve for its shape. This is differentiable,
defined when the snapshots are rank-deficient (one transition when the context is two segments, as in the authors'
scripts), vmappable over parameter samples, and K is kept as its two factors, never formed per window (D x D per
window would be 4096 x 512 x 512 floats for an evaluation batch). lam is `LOCAL_RIDGE` times the snapshots' mean
squared norm, a relative 1e-4, so K is the least-squares (minimum-norm) solution to that precision.
`torch.linalg.lstsq`, the authors' choice, has one driver on CUDA, `gels`, which assumes a full-rank system, and the
snapshots here are rank-deficient whenever m < D.

The head: the summed forecast (B, horizon) -> `nn.Linear(horizon, horizon * channels)` -> (B, horizon, channels).
It starts with the mean channel equal to the forecast (identity weights, zero bias) and the log scale zero (the
context's scale), so the untrained network is the paper's Koopa and training moves the mean from there; the log
scale is a learned affine function of the forecast, per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bnnbench.models.forecast import per_step_head, window_length

__all__ = ["LOCAL_RIDGE", "FourierFilter", "Koopa", "KoopmanOperator", "LocalOperator", "TimeVariantPredictor",
           "fit_local_operator", "koopa"]

LOCAL_RIDGE = 1e-4  # relative to the snapshots' mean squared norm
_RIDGE_FLOOR = 1e-12  # keeps the solve defined should every snapshot be zero


class FourierFilter(nn.Module):
    """(B, L) -> (x_inv, x_var), each (B, L): the part of each window on its largest-amplitude frequencies, and the
    rest. `n_invariant` of the L // 2 + 1 rFFT frequencies are kept (ties at the threshold are all kept)."""

    def __init__(self, length: int, invariant_fraction: float) -> None:
        super().__init__()
        if not 0 < invariant_fraction <= 1:
            raise ValueError(f"invariant_fraction must be in (0, 1], got {invariant_fraction}")
        self.length = length
        self.n_invariant = max(1, int((length // 2 + 1) * invariant_fraction))

    def invariant_mask(self, x: Tensor) -> Tensor:
        """(B, L // 2 + 1) 1.0 on the frequencies that make the invariant part, else 0.0."""
        amplitude = torch.fft.rfft(x, dim=-1).abs().detach()
        threshold = torch.topk(amplitude, self.n_invariant, dim=-1).values[..., -1:]
        return (amplitude >= threshold).to(x.dtype)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        spectrum = torch.fft.rfft(x, dim=-1)
        invariant = torch.fft.irfft(spectrum * self.invariant_mask(x), n=self.length, dim=-1)
        return invariant, x - invariant


def _mlp(width_in: int, hidden_dim: int, hidden_layers: int, width_out: int, activation: type[nn.Module]) -> nn.Module:
    widths = [width_in, *[hidden_dim] * hidden_layers, width_out]
    layers: list[nn.Module] = []
    for width_a, width_b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(width_a, width_b), activation()]
    return nn.Sequential(*layers[:-1])  # no activation on the embedding or the output


class KoopmanOperator(nn.Linear):
    """The time-invariant predictor's global operator: z -> K z on the embedding, linear by construction (no bias),
    initialised to a random orthogonal matrix (all eigenvalues on the unit circle)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim, dim, bias=False)
        nn.init.orthogonal_(self.weight)


@dataclass(frozen=True)
class LocalOperator:
    """A window's fitted operator as its two factors, K = pinv(A) @ B (row vectors: z_next = z @ K)."""

    pseudo_inverse: Tensor  # pinv(A): (..., D, m)
    successors: Tensor  # B: (..., m, D)

    def advance(self, z: Tensor) -> Tensor:
        """z @ K for rows z (..., n, D), without forming K."""
        return (z @ self.pseudo_inverse) @ self.successors

    def matrix(self) -> Tensor:
        """K itself (..., D, D), for inspection and tests."""
        return self.pseudo_inverse @ self.successors


def fit_local_operator(z_previous: Tensor, z_next: Tensor, ridge: float = LOCAL_RIDGE) -> LocalOperator:
    """The ridge least-squares K with z_next ~ z_previous @ K, rows (..., m, D) each (DMD on one window's
    embeddings; see the module docstring)."""
    m, dim = z_previous.shape[-2:]
    lam = ridge * z_previous.square().sum((-2, -1), keepdim=True) / m + _RIDGE_FLOOR
    transposed = z_previous.transpose(-2, -1)
    if m <= dim:  # shapes, not values: one graph under vmap
        eye = torch.eye(m, dtype=z_previous.dtype, device=z_previous.device)
        pseudo_inverse = torch.linalg.solve(z_previous @ transposed + lam * eye, z_previous).transpose(-2, -1)
    else:
        eye = torch.eye(dim, dtype=z_previous.dtype, device=z_previous.device)
        pseudo_inverse = torch.linalg.solve(transposed @ z_previous + lam * eye, transposed)
    return LocalOperator(pseudo_inverse, z_next)


class TimeVariantPredictor(nn.Module):
    """(B, L) time-variant part -> (backcast (B, L), forecast (B, H)) through a locally fitted Koopman operator."""

    def __init__(self, context: int, horizon: int, seg_len: int, encoder: nn.Module, decoder: nn.Module,
                 ridge: float = LOCAL_RIDGE) -> None:
        super().__init__()
        self.context, self.horizon, self.seg_len, self.ridge = context, horizon, seg_len, ridge
        self.n_in = math.ceil(context / seg_len)
        self.n_out = math.ceil(horizon / seg_len)
        if self.n_in < 2:
            raise ValueError(f"seg_len ({seg_len}) must be less than context_length ({context}): the local operator "
                             "is fitted to at least two segments (one transition)")
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        padding = self.n_in * self.seg_len - self.context
        padded = torch.cat([x[:, :1].expand(-1, padding), x], dim=1)
        z = self.encoder(padded.unflatten(1, (self.n_in, self.seg_len)))  # (B, n_in, D)
        operator = fit_local_operator(z[:, :-1], z[:, 1:], self.ridge)
        reconstructed = torch.cat([z[:, :1], operator.advance(z[:, :-1])], dim=1)
        backcast = self.decoder(reconstructed).flatten(1)[:, padding:]
        steps, state = [], z[:, -1:]
        for _ in range(self.n_out):  # a fixed count from the shapes, so vmap and functional calls trace one graph
            state = operator.advance(state)
            steps.append(state)
        forecast = self.decoder(torch.cat(steps, dim=1)).flatten(1)[:, :self.horizon]
        return backcast, forecast


class Koopa(nn.Module):
    """Stacked Koopa blocks (see the module docstring); forward gives the per-step head's outputs."""

    def __init__(self, context: int, horizon: int, seg_len: int, dynamic_dim: int, hidden_dim: int,
                 hidden_layers: int, num_blocks: int, invariant_fraction: float, channels: int) -> None:
        super().__init__()
        for name, value, least in (("seg_len", seg_len, 1), ("dynamic_dim", dynamic_dim, 1),
                                   ("hidden_dim", hidden_dim, 1), ("hidden_layers", hidden_layers, 0),
                                   ("num_blocks", num_blocks, 1)):
            if value < least:
                raise ValueError(f"{name} must be >= {least}, got {value}")
        self.filter = FourierFilter(context, invariant_fraction)
        self.invariant_encoder = _mlp(context, hidden_dim, hidden_layers, dynamic_dim, nn.ReLU)
        self.invariant_decoder = _mlp(dynamic_dim, hidden_dim, hidden_layers, horizon, nn.ReLU)
        self.operators = nn.ModuleList(KoopmanOperator(dynamic_dim) for _ in range(num_blocks))
        # tanh keeps the segment embeddings bounded, so the locally fitted operator sees well-scaled snapshots
        self.variant = TimeVariantPredictor(
            context, horizon, seg_len, _mlp(seg_len, hidden_dim, hidden_layers, dynamic_dim, nn.Tanh),
            _mlp(dynamic_dim, hidden_dim, hidden_layers, seg_len, nn.Tanh))
        self.head, self.unflatten = per_step_head(horizon, horizon, channels)
        with torch.no_grad():  # mean channel = the Koopa forecast, log scale 0 (see the module docstring)
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.head.weight[0::channels].copy_(torch.eye(horizon))

    def forecast(self, x: Tensor) -> Tensor:
        """The summed Koopa forecast (B, horizon), before the head."""
        residual, total = x, None
        for operator in self.operators:
            invariant, variant = self.filter(residual)
            backcast, variant_forecast = self.variant(variant)
            block = self.invariant_decoder(operator(self.invariant_encoder(invariant))) + variant_forecast
            total = block if total is None else total + block
            residual = residual - backcast
        return total

    def forward(self, x: Tensor) -> Tensor:
        return self.unflatten(self.head(self.forecast(x)))


def koopa(input_shape: tuple[int, ...], num_classes: int, seg_len: int = 24, dynamic_dim: int = 64,
          hidden_dim: int = 64, hidden_layers: int = 1, num_blocks: int = 3, invariant_fraction: float = 0.2,
          channels: int = 2) -> nn.Module:
    """Koopa for a (context_length,) window and a `num_classes`-step horizon. `hidden_layers` hidden layers of width
    `hidden_dim` in each encoder and decoder MLP (the authors' `--hidden_layers N` counts the output layer too:
    theirs 2 is 1 here); `invariant_fraction` is the paper's alpha."""
    model = Koopa(window_length(input_shape), num_classes, seg_len, dynamic_dim, hidden_dim, hidden_layers,
                  num_blocks, invariant_fraction, channels)
    model.bnnbench_last_layer = "head"
    return model
