"""The diagonal Gaussian that score-vi and elbo-vi share: variational family, prior and proximal anchor.

Mean μ and ω = log σ are each one flat vector over all the variational parameters, laid out by the model's
parameter names (`FlatParams`), so the same code serves an MLP, a CNN or a timm ViT. Flat, because the
methods' work outside the network is element-wise: one kernel over every coordinate per operation, where
per-tensor storage costs one per tensor (a ViT has ~150), and the optimiser updates two tensors. The network
sees named views (`named`). The closed forms follow ../shared/methods/score_vi.md.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bnnbench.params import FlatParams

__all__ = ["DiagonalGaussian", "kl_divergence"]

Params = dict[str, Tensor]


def _master(value: Tensor) -> Tensor:
    """A detached copy in float32 (float64 stays float64): variational parameters are never half precision."""
    return value.detach().clone().to(torch.float64 if value.dtype == torch.float64 else torch.float32)


class DiagonalGaussian:
    """N(mean, diag(exp(log_std))²), `mean` and `log_std` (ω) flat vectors in `layout`. ω keeps σ positive
    without constraints, as the score-vi closed forms are written in ω."""

    def __init__(self, layout: FlatParams, mean: Tensor, log_std: Tensor) -> None:
        if mean.shape != (layout.size,) or log_std.shape != mean.shape:
            raise ValueError(f"mean and log_std must be flat vectors of {layout.size} values")
        self.layout, self.mean, self.log_std = layout, mean, log_std

    @classmethod
    def from_named(cls, mean: Params, log_std: Params) -> DiagonalGaussian:
        """From named tensors (copied into the flat layout)."""
        if mean.keys() != log_std.keys():
            raise ValueError("mean and log_std must name the same tensors")
        layout = FlatParams(mean)
        return cls(layout, layout.flatten(mean), layout.flatten(log_std))

    @classmethod
    def trainable(cls, init_mean: Params, init_std: float) -> DiagonalGaussian:
        """A family member to optimise: mean at `init_mean`, every σ at `init_std`; the two leaves need grad."""
        layout = FlatParams(init_mean)
        mean = _master(layout.flatten(init_mean)).requires_grad_(True)
        return cls(layout, mean, torch.full_like(mean, math.log(init_std)).requires_grad_(True))

    @classmethod
    def isotropic(cls, mean: Params, std: float) -> DiagonalGaussian:
        """A fixed N(mean, std² I), e.g. the prior."""
        layout = FlatParams(mean)
        flat = _master(layout.flatten(mean))
        return cls(layout, flat, torch.full_like(flat, math.log(std)))

    def names(self) -> list[str]:
        return self.layout.names

    def named(self, flat: Tensor) -> Params:
        """Views of a flat vector in this layout, keyed and shaped like the model's parameters."""
        return self.layout.unflatten(flat)

    def named_rows(self, rows: Tensor) -> Params:
        """Rows (K, P) of flat vectors as named tensors (K, *shape): K weight settings stacked for vmap."""
        parts = rows.split([shape.numel() for shape in self.layout.shapes], dim=1)
        return {name: part.reshape(len(rows), *shape)
                for name, part, shape in zip(self.layout.names, parts, self.layout.shapes, strict=True)}

    def parameters(self) -> list[Tensor]:
        return [self.mean, self.log_std]

    def numel(self) -> int:
        return self.layout.size

    def detached(self) -> DiagonalGaussian:
        """A frozen copy (the proximal anchor q_t, or the fitted posterior)."""
        return DiagonalGaussian(self.layout, self.mean.detach().clone(), self.log_std.detach().clone())

    def variance(self) -> Tensor:
        return torch.exp(2 * self.log_std)

    def draws(self, n: int, antithetic: bool = False) -> Tensor:
        """`n` draws θ = μ + σ ⊙ ε as rows (n, P), ε ~ N(0, I) from torch's global generator; differentiable
        in (μ, ω). With `antithetic`, in pairs μ ± σ ⊙ ε (n must be even): a pair cancels the part of an
        estimator that is odd in ε, e.g. all the noise of a linear score, at no extra cost per draw."""
        if antithetic and n % 2:
            raise ValueError(f"antithetic sampling needs an even number of samples, got {n}")
        # one normal vector per draw (pair), as torch's generator hands them out one call at a time: the draws
        # are then the same whatever n, so a run's stream does not depend on how many are asked for at once
        epsilon = torch.stack([torch.randn(self.numel(), dtype=self.mean.dtype, device=self.mean.device)
                               for _ in range(n // 2 if antithetic else n)])
        noise = torch.exp(self.log_std) * epsilon
        if antithetic:  # rows μ + σε₁, μ − σε₁, μ + σε₂, ...
            noise = torch.stack([noise, -noise], dim=1).reshape(n, -1)
        return self.mean + noise

    def samples(self, n: int, antithetic: bool = False) -> list[Params]:
        """`n` draws (see `draws`) as named tensors, for `functional_call`."""
        return [self.named(row) for row in self.draws(n, antithetic)]

    def score(self, theta: Tensor) -> Tensor:
        """∇_θ log q(θ) = −(θ − μ) ⊙ σ⁻², θ flat."""
        return (self.mean - theta) * torch.exp(-2 * self.log_std)

    def log_prob(self, theta: Tensor) -> Tensor:
        """log q(θ) of a flat θ, summed over every coordinate."""
        standardised = (theta - self.mean) * torch.exp(-self.log_std)
        return (-0.5 * standardised.square() - self.log_std).sum() - 0.5 * math.log(2 * math.pi) * self.numel()

    def mean_std(self) -> dict[str, float]:
        """Mean σ per tensor (a diagnostic)."""
        return {name: torch.exp(value.detach()).mean().item() for name, value in self.named(self.log_std).items()}


def kl_divergence(a: DiagonalGaussian, b: DiagonalGaussian) -> Tensor:
    """KL(a ‖ b) = Σ_d [ω_b − ω_a + (σ_a² + (μ_a − μ_b)²) / (2σ_b²) − ½], summed over coordinates."""
    if a.names() != b.names():
        raise ValueError("KL divergence of Gaussians over different parameters")
    spread = torch.exp(2 * a.log_std) + (a.mean - b.mean).square()
    return (b.log_std - a.log_std + 0.5 * spread * torch.exp(-2 * b.log_std) - 0.5).sum()
