"""Forecasting networks: context window (B, context_length) -> per-step outputs (B, prediction_length, channels).

`num_classes` is the forecast horizon; `channels` the outputs per step the likelihood reads: 2 for a Gaussian
with a learned scale (mean, log standard deviation), 1 for a Gaussian with fixed noise. Windows arrive already
normalised by their context's mean and scale (`bnnbench.data.timeseries`), so the networks have no
normalisation of their own and their output layer is the last layer: last-layer methods see a plain head.

- `forecast_mlp`: an MLP on the context.
- `dlinear` (Zeng et al. 2023): the context split by a moving average into trend and remainder, each mapped
  linearly to the horizon. The two linear maps are one `nn.Linear` on the concatenated parts (the same function,
  one bias), so the model has a single output layer.
- `patchtst` (Nie et al. 2023), small: the context cut into overlapping patches, each embedded linearly, plus a
  learned position embedding, pre-norm transformer blocks, and a linear head on the flattened patch tokens.
  Attention is written with plain tensor operations so that vmap, functional calls and Jacobians go through it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["dlinear", "forecast_mlp", "patchtst", "per_step_head", "window_length"]


def per_step_head(width: int, horizon: int, channels: int) -> list[nn.Module]:
    """The output layer every forecasting network ends in: features (B, width) -> (B, horizon, channels)."""
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 (fixed noise) or 2 (mean and log scale), got {channels}")
    return [nn.Linear(width, horizon * channels), nn.Unflatten(1, (horizon, channels))]


def window_length(input_shape: tuple[int, ...]) -> int:
    """The context length of a forecasting network's (context_length,) input shape."""
    if len(input_shape) != 1:
        raise ValueError(f"forecasting models take (context_length,) inputs, got input shape {input_shape}")
    return input_shape[0]


def forecast_mlp(input_shape: tuple[int, ...], num_classes: int, hidden: list[int] = (128, 128),
                 channels: int = 2) -> nn.Module:
    """Linear-ReLU blocks of widths `hidden` on the context, then the per-step head."""
    widths = [window_length(input_shape), *hidden]
    layers: list[nn.Module] = []
    for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(width_in, width_out), nn.ReLU()]
    layers += per_step_head(widths[-1], num_classes, channels)
    model = nn.Sequential(*layers)
    model.bnnbench_last_layer = str(len(layers) - 2)
    return model


class TrendRemainder(nn.Module):
    """Concatenates the moving-average trend of the context (edges padded by repeating the end values, as in
    DLinear) and the remainder: (B, L) -> (B, 2L)."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"moving_average must be an odd number >= 1, got {kernel}")
        self.kernel = kernel

    def forward(self, x: Tensor) -> Tensor:
        half = (self.kernel - 1) // 2
        padded = torch.cat([x[:, :1].expand(-1, half), x, x[:, -1:].expand(-1, half)], dim=1)
        trend = padded.unfold(1, self.kernel, 1).mean(-1)
        return torch.cat([trend, x - trend], dim=1)


def dlinear(input_shape: tuple[int, ...], num_classes: int, moving_average: int = 25, channels: int = 2) -> nn.Module:
    """DLinear: one linear map from (trend, remainder) of the context to the horizon."""
    context = window_length(input_shape)
    model = nn.Sequential(TrendRemainder(moving_average), *per_step_head(2 * context, num_classes, channels))
    model.bnnbench_last_layer = "1"
    return model


class Block(nn.Module):
    """Pre-norm transformer block: multi-head self-attention and an MLP, each added to the residual stream."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        x = x + self.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, width))
        return x + self.mlp(self.norm2(x))


class PatchEncoder(nn.Module):
    """Patches of the context -> transformer tokens -> flattened features (B, n_patches * width)."""

    def __init__(self, context: int, patch_len: int, stride: int, width: int, depth: int, heads: int,
                 mlp_ratio: float) -> None:
        super().__init__()
        if patch_len > context or stride < 1:
            raise ValueError(f"patch_len must be <= context_length ({context}) and stride >= 1")
        self.patch_len, self.stride = patch_len, stride
        self.n_patches = (context - patch_len) // stride + 1
        self.embed = nn.Linear(patch_len, width)
        self.position = nn.Parameter(torch.zeros(1, self.n_patches, width))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.Sequential(*[Block(width, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        patches = x.unfold(1, self.patch_len, self.stride)
        return self.norm(self.blocks(self.embed(patches) + self.position)).flatten(1)


def patchtst(input_shape: tuple[int, ...], num_classes: int, patch_len: int = 16, stride: int = 8, width: int = 64,
             depth: int = 2, heads: int = 4, mlp_ratio: float = 2.0, channels: int = 2) -> nn.Module:
    """A small PatchTST: patch tokens through `depth` transformer blocks, then a linear head to the horizon."""
    encoder = PatchEncoder(window_length(input_shape), patch_len, stride, width, depth, heads, mlp_ratio)
    model = nn.Sequential(encoder, *per_step_head(encoder.n_patches * width, num_classes, channels))
    model.bnnbench_last_layer = "1"
    return model
