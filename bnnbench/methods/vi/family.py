"""The Gaussian families that score-vi and elbo-vi share (variational family, prior and proximal anchor), and
the full-covariance Gaussian that GSM and BaM update.

Mean μ and ω = log σ are each one flat vector over all the variational parameters, laid out by the model's
parameter names (`FlatParams`), so the same code serves an MLP, a CNN or a timm ViT. Flat, because the
methods' work outside the network is element-wise: one kernel over every coordinate per operation, where
per-tensor storage costs one per tensor (a ViT has ~150), and the optimiser updates two tensors. The network
sees named views (`named`). The closed forms follow ../shared/methods/score_vi.md.

Three families (`family = "diag" | "lowrank" | "full"`), one interface, each covariance written as
Σ = diag(d) + F Fᵀ so that one KL serves every pair:
- `DiagonalGaussian`: F empty, d = σ²; P + P numbers. score-vi's inner steps have a closed form for it.
- `LowRankGaussian`: d = σ², F = U = diag(σ) V (P × R); (2 + R) P numbers. Σ⁻¹ by Woodbury and log det Σ by the matrix
  determinant lemma, both through the R × R capacitance matrix I + Uᵀ diag(σ⁻²) U, so a step costs O(P R²).
- `FullGaussian`: d = 0, F = L = diag(σ) (I + N), N strictly lower-triangular (Cholesky); 2P + P² numbers, O(P³)
  per solve. Only for what a dense P × P matrix allows (`FullGaussian.check_size`).
The off-diagonal parameters (V, N) are relative to σ: Adam moves every parameter by about its learning rate per
step, which on σ's own scale (ω = log σ) is a relative change, and must be one on the correlations too; raw entries
of U or L moved by 1e-3 next to a σ of 1e-3 (a network's q at its start) broke the fit in a few steps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bnnbench.params import FlatParams

__all__ = ["FAMILIES", "DiagonalGaussian", "FullGaussian", "GaussianFamily", "LowRankGaussian", "entropy",
           "family_numbers", "kl_divergence", "make_family"]

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

    # Σ = diag(d) + F Fᵀ, the form `kl_divergence` reads every family in
    def diagonal_part(self) -> Tensor:
        return self.variance()

    def factor(self) -> Tensor | None:
        return None

    def precision_times(self, rows: Tensor) -> Tensor:
        """Σ⁻¹ x for each row x of `rows` (n, P)."""
        return rows * torch.exp(-2 * self.log_std)

    def precision_diagonal(self) -> Tensor:
        return torch.exp(-2 * self.log_std)

    def log_det(self) -> Tensor:
        return 2 * self.log_std.sum()

    def covariance(self) -> Tensor:
        return torch.diag(self.variance())


class _Structured:
    """What the low-rank and full families share: draws, score and log-density through `_transform` (noise to
    offset) and `precision_times`, named views, and the diagonal of Σ."""

    layout: FlatParams
    mean: Tensor
    log_std: Tensor

    def names(self) -> list[str]:
        return self.layout.names

    def parameters(self) -> list[Tensor]:
        raise NotImplementedError

    def detached(self):
        """A frozen copy (the proximal anchor q_t, or the fitted posterior): every parameter detached, cloned."""
        return type(self)(self.layout, *(parameter.detach().clone() for parameter in self.parameters()))

    def named(self, flat: Tensor) -> Params:
        return self.layout.unflatten(flat)

    def named_rows(self, rows: Tensor) -> Params:
        return DiagonalGaussian.named_rows(self, rows)  # the same row split, nothing diagonal about it

    def numel(self) -> int:
        return self.layout.size

    def noise_size(self) -> int:
        raise NotImplementedError

    def _transform(self, noise: Tensor) -> Tensor:
        raise NotImplementedError

    def draws(self, n: int, antithetic: bool = False) -> Tensor:
        """`n` draws θ = μ + A ε as rows (n, P), with Σ = A Aᵀ and ε ~ N(0, I) from torch's global generator, one
        vector per draw (pair) as `DiagonalGaussian.draws`; differentiable in the family's parameters."""
        if antithetic and n % 2:
            raise ValueError(f"antithetic sampling needs an even number of samples, got {n}")
        epsilon = torch.stack([torch.randn(self.noise_size(), dtype=self.mean.dtype, device=self.mean.device)
                               for _ in range(n // 2 if antithetic else n)])
        offsets = self._transform(epsilon)
        if antithetic:
            offsets = torch.stack([offsets, -offsets], dim=1).reshape(n, -1)
        return self.mean + offsets

    def samples(self, n: int, antithetic: bool = False) -> list[Params]:
        return [self.named(row) for row in self.draws(n, antithetic)]

    def score(self, theta: Tensor) -> Tensor:
        """∇_θ log q(θ) = −Σ⁻¹ (θ − μ), θ flat (P,) or rows (n, P)."""
        return -self.precision_times(theta - self.mean)

    def log_prob(self, theta: Tensor) -> Tensor:
        offset = theta - self.mean
        mahalanobis = (offset * self.precision_times(offset)).sum(-1)
        return -0.5 * (mahalanobis + self.log_det() + self.numel() * math.log(2 * math.pi))

    def variance(self) -> Tensor:
        factor = self.factor()
        return self.diagonal_part() + factor.square().sum(1)

    def mean_std(self) -> dict[str, float]:
        """Mean marginal σ per tensor (a diagnostic)."""
        return {name: value.detach().sqrt().mean().item() for name, value in self.named(self.variance()).items()}

    def covariance(self) -> Tensor:
        factor = self.factor()
        return torch.diag(self.diagonal_part()) + factor @ factor.T


class LowRankGaussian(_Structured):
    """N(μ, diag(σ²) + U Uᵀ), σ = exp(ω), U = diag(σ) V of shape (P, R): the diagonal keeps every coordinate's own
    scale and U the R directions in which the weights co-vary most; V (`shape`) is U relative to σ."""

    def __init__(self, layout: FlatParams, mean: Tensor, log_std: Tensor, shape: Tensor) -> None:
        if mean.shape != (layout.size,) or log_std.shape != mean.shape or shape.ndim != 2 or len(shape) != len(mean):
            raise ValueError(f"mean and log_std must be flat vectors of {layout.size} values, shape (P, R)")
        self.layout, self.mean, self.log_std, self.shape = layout, mean, log_std, shape

    @classmethod
    def trainable(cls, init_mean: Params, init_std: float, rank: int) -> LowRankGaussian:
        """Mean at `init_mean`, σ at `init_std` and V small and random (N(0, 1) / √R, from torch's global
        generator): U = 0 is a stationary point of both objectives (their U-gradients are E[·] U), so a zero start
        would never leave the diagonal."""
        layout = FlatParams(init_mean)
        mean = _master(layout.flatten(init_mean)).requires_grad_(True)
        log_std = torch.full_like(mean, math.log(init_std)).requires_grad_(True)
        shape = torch.randn(len(mean), rank, dtype=mean.dtype, device=mean.device) / math.sqrt(rank)
        return cls(layout, mean, log_std, shape.requires_grad_(True))

    def parameters(self) -> list[Tensor]:
        return [self.mean, self.log_std, self.shape]

    def noise_size(self) -> int:
        return self.numel() + self.shape.shape[1]

    def _transform(self, noise: Tensor) -> Tensor:
        local, shared = noise.split([self.numel(), self.shape.shape[1]], dim=1)
        return torch.exp(self.log_std) * (local + shared @ self.shape.T)

    def diagonal_part(self) -> Tensor:
        return torch.exp(2 * self.log_std)

    def factor(self) -> Tensor:
        return torch.exp(self.log_std).unsqueeze(1) * self.shape

    def _capacitance(self) -> tuple[Tensor, Tensor]:
        """(D⁻¹ U, the Cholesky factor of I + Uᵀ D⁻¹ U), D = diag(σ²); Uᵀ D⁻¹ U = Vᵀ V."""
        scaled = self.shape * torch.exp(-self.log_std).unsqueeze(1)
        capacitance = torch.eye(self.shape.shape[1], dtype=self.mean.dtype, device=self.mean.device)
        # cholesky_ex: a NaN in V or σ (a diverging fit) must reach the loss, where the training loop's NaN guard
        # records a failed run, not raise from inside the algebra
        return scaled, torch.linalg.cholesky_ex(capacitance + self.shape.T @ self.shape).L

    def precision_times(self, rows: Tensor) -> Tensor:
        """Σ⁻¹ x = D⁻¹ x − D⁻¹ U C⁻¹ Uᵀ D⁻¹ x (Woodbury), C = I + Uᵀ D⁻¹ U."""
        scaled, chol = self._capacitance()
        single = rows.ndim == 1
        rows = rows.unsqueeze(0) if single else rows
        inner = torch.cholesky_solve((rows @ scaled).T, chol)  # C⁻¹ Uᵀ D⁻¹ x, (R, n)
        result = rows * torch.exp(-2 * self.log_std) - (scaled @ inner).T
        return result[0] if single else result

    def precision_diagonal(self) -> Tensor:
        scaled, chol = self._capacitance()
        whitened = torch.linalg.solve_triangular(chol, scaled.T, upper=False)  # L_C⁻¹ Uᵀ D⁻¹, (R, P)
        return torch.exp(-2 * self.log_std) - whitened.square().sum(0)

    def log_det(self) -> Tensor:
        """log det Σ = Σ_d 2ω_d + log det C (the matrix determinant lemma)."""
        _, chol = self._capacitance()
        return 2 * self.log_std.sum() + 2 * torch.log(torch.diagonal(chol)).sum()


class FullGaussian(_Structured):
    """N(μ, L Lᵀ), L = diag(σ) (I + N) lower-triangular with diagonal σ = exp(ω); N's entries below the diagonal
    (`lower`, relative to σ) are free."""

    def __init__(self, layout: FlatParams, mean: Tensor, log_std: Tensor, lower: Tensor) -> None:
        if mean.shape != (layout.size,) or log_std.shape != mean.shape or lower.shape != (len(mean), len(mean)):
            raise ValueError(f"mean and log_std must be flat vectors of {layout.size} values, lower (P, P)")
        self.layout, self.mean, self.log_std, self.lower = layout, mean, log_std, lower

    @classmethod
    def trainable(cls, init_mean: Params, init_std: float) -> FullGaussian:
        layout = FlatParams(init_mean)
        mean = _master(layout.flatten(init_mean)).requires_grad_(True)
        log_std = torch.full_like(mean, math.log(init_std)).requires_grad_(True)
        return cls(layout, mean, log_std, torch.zeros(len(mean), len(mean), dtype=mean.dtype,
                                                     device=mean.device).requires_grad_(True))

    @classmethod
    def from_moments(cls, layout: FlatParams, mean: Tensor, covariance: Tensor) -> FullGaussian:
        """The member with this mean and (symmetric positive definite) covariance, e.g. GSM's or BaM's iterate."""
        chol = torch.linalg.cholesky(0.5 * (covariance + covariance.T))
        diagonal = torch.diagonal(chol)
        return cls(layout, mean.clone(), torch.log(diagonal), torch.tril(chol / diagonal.unsqueeze(1), -1))

    def parameters(self) -> list[Tensor]:
        return [self.mean, self.log_std, self.lower]

    def scale_tril(self) -> Tensor:
        unit = torch.tril(self.lower, -1) + torch.eye(self.numel(), dtype=self.mean.dtype, device=self.mean.device)
        return torch.exp(self.log_std).unsqueeze(1) * unit

    def noise_size(self) -> int:
        return self.numel()

    def _transform(self, noise: Tensor) -> Tensor:
        return noise @ self.scale_tril().T

    def diagonal_part(self) -> Tensor:
        return torch.zeros_like(self.mean)

    def factor(self) -> Tensor:
        return self.scale_tril()

    def precision_times(self, rows: Tensor) -> Tensor:
        single = rows.ndim == 1
        columns = (rows.unsqueeze(0) if single else rows).T
        result = torch.cholesky_solve(columns, self.scale_tril(), upper=False).T
        return result[0] if single else result

    def precision_diagonal(self) -> Tensor:
        inverse = torch.linalg.solve_triangular(self.scale_tril(), torch.eye(self.numel(), dtype=self.mean.dtype,
                                                                             device=self.mean.device), upper=False)
        return inverse.square().sum(0)

    def log_det(self) -> Tensor:
        return 2 * self.log_std.sum()

    @staticmethod
    def check_size(size: int, limit: int, who: str) -> None:
        """Refuse (UsageError) a dense P × P covariance over `limit` coordinates, in one line naming both."""
        if size > limit:
            from bnnbench.errors import UsageError

            raise UsageError(f"{who} holds a dense covariance over the variational weights: {size:,} of them need "
                             f"{size * size * 8 / 2**30:.3g} GiB per matrix and O(P³) work per step, over its limit of "
                             f"{limit:,}; choose fewer with variational_params (e.g. \"last-layer\") or use score-vi "
                             f"with family = \"lowrank\"")


GaussianFamily = DiagonalGaussian | LowRankGaussian | FullGaussian
FAMILIES = ("diag", "lowrank", "full")


def make_family(family: str, init_mean: Params, init_std: float, rank: int = 1) -> GaussianFamily:
    """A trainable member of `family`, mean at `init_mean` and σ at `init_std`."""
    if family == "diag":
        return DiagonalGaussian.trainable(init_mean, init_std)
    if family == "lowrank":
        return LowRankGaussian.trainable(init_mean, init_std, rank)
    if family == "full":
        return FullGaussian.trainable(init_mean, init_std)
    raise ValueError(f"unknown family '{family}'; valid choices: {', '.join(FAMILIES)}")


def family_numbers(family: str, size: int, rank: int = 1) -> int:
    """How many numbers a member over `size` coordinates holds (for the memory estimate)."""
    return {"diag": 2 * size, "lowrank": (2 + rank) * size, "full": 2 * size + size * size}[family]


def entropy(q: GaussianFamily) -> Tensor:
    """H(q) = ½ log det Σ + P/2 (1 + log 2π)."""
    return 0.5 * q.log_det() + 0.5 * q.numel() * (1 + math.log(2 * math.pi))


def kl_divergence(a: GaussianFamily, b: GaussianFamily) -> Tensor:
    """KL(a ‖ b). Two diagonal Gaussians: Σ_d [ω_b − ω_a + (σ_a² + (μ_a − μ_b)²) / (2σ_b²) − ½], summed over
    coordinates. Otherwise ½ [tr(Σ_b⁻¹ Σ_a) + δᵀ Σ_b⁻¹ δ − P + log det Σ_b − log det Σ_a], δ = μ_a − μ_b, with
    tr(Σ_b⁻¹ Σ_a) = Σ_d (Σ_b⁻¹)_dd d_a,d + tr(F_aᵀ Σ_b⁻¹ F_a) from Σ_a = diag(d_a) + F_a F_aᵀ."""
    if a.names() != b.names():
        raise ValueError("KL divergence of Gaussians over different parameters")
    if isinstance(a, DiagonalGaussian) and isinstance(b, DiagonalGaussian):
        spread = torch.exp(2 * a.log_std) + (a.mean - b.mean).square()
        return (b.log_std - a.log_std + 0.5 * spread * torch.exp(-2 * b.log_std) - 0.5).sum()
    if isinstance(b, FullGaussian):  # one triangular solve: tr(Σ_b⁻¹ Σ_a) = ‖L_b⁻¹ A‖², A Aᵀ = Σ_a, and δ alike
        root = a.factor() if isinstance(a, FullGaussian) else torch.diag(a.diagonal_part().sqrt())
        if isinstance(a, LowRankGaussian):
            root = torch.cat([root, a.factor()], dim=1)
        offset = (a.mean - b.mean).unsqueeze(1)
        solved = torch.linalg.solve_triangular(b.scale_tril(), torch.cat([root, offset], dim=1), upper=False)
        return 0.5 * (solved.square().sum() - a.numel() + b.log_det() - a.log_det())
    trace = (b.precision_diagonal() * a.diagonal_part()).sum()
    factor = a.factor()
    if factor is not None:
        trace = trace + (factor.T * b.precision_times(factor.T)).sum()
    offset = a.mean - b.mean
    mahalanobis = (offset * b.precision_times(offset)).sum()
    return 0.5 * (trace + mahalanobis - a.numel() + b.log_det() - a.log_det())
