"""The diagonal Gaussian that score-vi and elbo-vi share: variational family, prior and proximal anchor.

Parameters are kept per tensor, keyed by the model's parameter names (never one flat vector), so the
same code serves an MLP, a CNN or a timm ViT. The closed forms follow ../shared/methods/score_vi.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["DiagonalGaussian", "kl_divergence"]

Params = dict[str, Tensor]


def _master(value: Tensor) -> Tensor:
    """A detached copy in float32 (float64 stays float64): variational parameters are never half precision."""
    return value.detach().clone().to(torch.float64 if value.dtype == torch.float64 else torch.float32)


class DiagonalGaussian:
    """N(mean, diag(exp(log_std))²) over named tensors. `log_std` (ω) keeps σ positive without
    constraints, as the score-vi closed forms are written in ω."""

    def __init__(self, mean: Params, log_std: Params) -> None:
        if mean.keys() != log_std.keys():
            raise ValueError("mean and log_std must name the same tensors")
        self.mean, self.log_std = mean, log_std

    @classmethod
    def trainable(cls, init_mean: Params, init_std: float) -> DiagonalGaussian:
        """A family member to optimise: mean at `init_mean`, every σ at `init_std`; leaves need grad."""
        mean = {name: _master(value).requires_grad_(True) for name, value in init_mean.items()}
        log_std = {name: torch.full_like(value, math.log(init_std)).requires_grad_(True)
                   for name, value in mean.items()}
        return cls(mean, log_std)

    @classmethod
    def isotropic(cls, mean: Params, std: float) -> DiagonalGaussian:
        """A fixed N(mean, std² I), e.g. the prior."""
        mean = {name: _master(value) for name, value in mean.items()}
        return cls(mean, {name: torch.full_like(value, math.log(std)) for name, value in mean.items()})

    def names(self) -> list[str]:
        return list(self.mean)

    def parameters(self) -> list[Tensor]:
        return [*self.mean.values(), *self.log_std.values()]

    def numel(self) -> int:
        return sum(value.numel() for value in self.mean.values())

    def detached(self) -> DiagonalGaussian:
        """A frozen copy (the proximal anchor q_t, or the fitted posterior)."""
        return DiagonalGaussian({n: v.detach().clone() for n, v in self.mean.items()},
                                {n: v.detach().clone() for n, v in self.log_std.items()})

    def variance(self) -> Params:
        return {name: torch.exp(2 * value) for name, value in self.log_std.items()}

    def sample(self) -> Params:
        """θ = μ + σ ⊙ ε, ε ~ N(0, I) from torch's global generator; differentiable in (μ, ω)."""
        return self.samples(1)[0]

    def samples(self, n: int, antithetic: bool = False) -> list[Params]:
        """`n` draws; with `antithetic`, in pairs μ ± σ ⊙ ε (n must be even). A pair cancels the part of an
        estimator that is odd in ε, e.g. all the noise of a linear score, at no extra cost per draw."""
        if antithetic and n % 2:
            raise ValueError(f"antithetic sampling needs an even number of samples, got {n}")
        names, means = self.names(), list(self.mean.values())
        stds = torch._foreach_exp(list(self.log_std.values()))
        draws = []
        for _ in range(n // 2 if antithetic else n):
            # One normal draw for all tensors, viewed per tensor: a launch per draw, not per tensor.
            flat = torch.randn(self.numel(), dtype=means[0].dtype, device=means[0].device)
            epsilon = [part.view_as(mean) for part, mean in zip(flat.split(self._sizes()), means, strict=True)]
            noise = torch._foreach_mul(stds, epsilon)
            draws.append(dict(zip(names, torch._foreach_add(means, noise), strict=True)))
            if antithetic:
                draws.append(dict(zip(names, torch._foreach_sub(means, noise), strict=True)))
        return draws

    def _sizes(self) -> list[int]:
        return [value.numel() for value in self.mean.values()]

    def score(self, theta: Params) -> Params:
        """∇_θ log q(θ) = −(θ − μ) ⊙ σ⁻²."""
        names = self.names()
        diff = torch._foreach_sub(list(self.mean.values()), [theta[name] for name in names])
        inv_var = torch._foreach_exp(torch._foreach_mul(list(self.log_std.values()), -2.0))
        return dict(zip(names, torch._foreach_mul(diff, inv_var), strict=True))

    def log_prob(self, theta: Params) -> Tensor:
        """log q(θ), summed over every coordinate."""
        total = 0.0
        for name, mean in self.mean.items():
            log_std = self.log_std[name]
            total = total + (-0.5 * ((theta[name] - mean) * torch.exp(-log_std)) ** 2 - log_std).sum()
        return total - 0.5 * math.log(2 * math.pi) * self.numel()

    def mean_std(self) -> dict[str, float]:
        """Mean σ per tensor (a diagnostic)."""
        return {name: torch.exp(value.detach()).mean().item() for name, value in self.log_std.items()}


def kl_divergence(a: DiagonalGaussian, b: DiagonalGaussian, names: Iterable[str] | None = None) -> Tensor:
    """KL(a ‖ b) = Σ_d [ω_b − ω_a + (σ_a² + (μ_a − μ_b)²) / (2σ_b²) − ½], summed over coordinates."""
    names = list(names or a.names())
    log_std_a, log_std_b = [a.log_std[name] for name in names], [b.log_std[name] for name in names]
    shift = torch._foreach_sub([a.mean[name] for name in names], [b.mean[name] for name in names])
    spread = torch._foreach_addcmul(torch._foreach_exp(torch._foreach_mul(log_std_a, 2.0)), shift, shift)
    terms = torch._foreach_sub(log_std_b, log_std_a)
    inv_var_b = torch._foreach_exp(torch._foreach_mul(log_std_b, -2.0))
    terms = torch._foreach_add(terms, torch._foreach_mul(spread, inv_var_b), alpha=0.5)
    terms = torch._foreach_add(terms, -0.5)
    # Each coordinate's term is a KL divergence, so >= 0: its 1-norm is its sum, one launch for all tensors.
    return torch.stack(torch._foreach_norm(terms, 1)).sum()
