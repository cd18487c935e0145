"""Closed-form full-covariance Gaussian updates of two score-based black-box VI methods: GSM and BaM.

Both methods fit q = N(μ, Σ) to a target p known through its score ∇log p only. Each iteration draws a batch
z_1 … z_B ~ q_t = N(μ_t, Σ_t), evaluates g_b = ∇log p(z_b), and moves to q_{t+1} in closed form. This module
holds only those closed forms (one step each, on tensors); drawing samples and evaluating scores is the caller's.

GSM: Gaussian score matching
    Modi, Margossian, Yao, Gower, Blei, Saul, "Variational Inference with Gaussian Score Matching",
    NeurIPS 2023 (arXiv:2307.07849).

    One sample z with score g: q_{t+1} is the Gaussian closest to q_t in KL(q_t ‖ q) among those whose score at z
    equals g, i.e. −Σ⁻¹(z − μ) = g, equivalently μ = z + Σg. With d = μ_t − z the solution is

        ρ(1 + ρ) = gᵀΣ_t g + (gᵀd)²                      (ρ ≥ 0, the positive root of the quadratic)
        μ_{t+1} = z + (Σ_t g + d (dᵀg)) / (1 + ρ)
        Σ_{t+1} = Σ_t + d dᵀ − (μ_{t+1} − z)(μ_{t+1} − z)ᵀ

    The mean is usually written μ_t + (1+ρ)⁻¹ [I − d gᵀ/(1 + ρ + gᵀd)] (Σ_t g − d); expanding it and using
    ρ(1 + ρ) = gᵀΣ_t g + (gᵀd)² gives the shorter form above, which is what is computed (the tests check it against
    the constraint and against a numerical KL minimisation). Note Σ_t g + d(dᵀg) = V g with V = Σ_t + d dᵀ, and
    Σ_{t+1} + Σ_{t+1} g gᵀ Σ_{t+1} = V: the one-sample GSM step is BaM's match step with B = 1 and λ → ∞.

    A batch of B samples: each sample gives its own update (μ_b, Σ_b) from the same q_t, and q_{t+1} takes their
    averages, μ_{t+1} = (1/B) Σ_b μ_b and Σ_{t+1} = (1/B) Σ_b Σ_b, i.e. the B single-sample increments are averaged
    (as in the authors' reference implementation, github.com/modichirag/GSM-VI). An average of positive definite
    matrices is positive definite.

BaM: batch and match
    Cai, Modi, Pillaud-Vivien, Margossian, Gower, Blei, Saul, "Batch and match: black-box variational inference
    with a score-based divergence", ICML 2024 (arXiv:2402.14758).

    q_{t+1} minimises  (1/B) Σ_b ‖∇log q(z_b) − g_b‖²_{Cov(q)} + (2/λ_t) KL(q_t ‖ q)  over Gaussians q, where
    ‖v‖²_A = vᵀAv. With the batch statistics (sample moments divided by B, not B − 1)

        z̄ = (1/B) Σ_b z_b,   C = (1/B) Σ_b (z_b − z̄)(z_b − z̄)ᵀ,
        ḡ = (1/B) Σ_b g_b,   Γ = (1/B) Σ_b (g_b − ḡ)(g_b − ḡ)ᵀ,

    and λ = λ_t:

        U = λ Γ + λ/(1+λ) ḡḡᵀ
        V = Σ_t + λ C + λ/(1+λ) (μ_t − z̄)(μ_t − z̄)ᵀ
        Σ_{t+1} solves Σ U Σ + Σ = V, i.e. Σ_{t+1} = 2V [I + (I + 4UV)^{1/2}]⁻¹
        μ_{t+1} = μ_t/(1+λ) + λ/(1+λ) (Σ_{t+1} ḡ + z̄)

    Limits: λ → 0 leaves q_t unchanged, to first order in λ (the step is O(λ)); λ → ∞ drops the KL term and, when
    Γ is invertible (B > D and scores in general position), Σ_{t+1} → the solution of Σ Γ Σ = C and
    μ_{t+1} → Σ_{t+1} ḡ + z̄. For a Gaussian target the score is affine, so Γ = S⁻¹ C S⁻¹ and ḡ = −S⁻¹(z̄ − m)
    exactly for any batch: the target N(m, S) is then a fixed point of the step for every λ and every batch.

    Learning rate: `bam_learning_rate` gives λ_t = BD/(t + 1), the decaying schedule the paper uses for its
    non-Gaussian targets (its Gaussian-target experiments also try constant λ = B and BD, and B/(t+1)).

Sources
    The equations above were checked against the authors' reference code (modichirag/GSM-VI: gsm_numpy.py,
    bam.py), against an independent implementation (AdvancedVI.jl's FisherMinBatchMatch, which states the same
    proximal objective), and re-derived from the two stated objectives; tests/test_batch_updates.py checks each
    against a numerical minimisation of its objective. No code was taken from either implementation.

Numerical choices
    The covariance step never forms (I + 4UV)^{1/2}: UV is not symmetric, its square root needs a general (Schur)
    matrix function, and the Σ it returns is symmetric only up to rounding. Nor does it form U and V: both are sums
    of Gram matrices, and squaring their factors is what loses accuracy when λ is large and the batch is rank
    deficient (B ≤ D). Instead, with V = AᵀA and U = GᵀG for the stacked factors
        A = [chol(Σ_t)ᵀ ; √(λ/B)(z_b − z̄)ᵀ for each b ; √(λ/(1+λ)) (μ_t − z̄)ᵀ]   ((D + B + 1) × D),
        G = [√(λ/B)(g_b − ḡ)ᵀ for each b ; √(λ/(1+λ)) ḡᵀ]                       ((B + 1) × D),
    a QR decomposition A = QR gives V = RᵀR (R invertible because Σ_t is), and an SVD G Rᵀ = P diag(s) Wᵀ gives
    M = R U Rᵀ = W diag(s²) Wᵀ (W a full D × D orthogonal matrix; s = 0 on the directions U does not reach). Writing
    Σ = Rᵀ X R turns Σ U Σ + Σ = V into X M X + X = I, solved by X = W diag(x) Wᵀ with
    x_i = 2 / (1 + √(1 + 4 s_i²)) ∈ (0, 1]. So Σ_{t+1} = F Fᵀ with F = Rᵀ W diag(√x): symmetric positive definite
    by construction, for any B (B < D included), and the same matrix as 2V [I + (I + 4UV)^{1/2}]⁻¹
    (UV = R⁻¹ M R). On a Gaussian target's fixed point with B = 3 < D = 6 and λ = 10⁶ this form was accurate to
    ~1e-12, against ~1e-5 when U and V are formed explicitly and ~1e-2 with the direct matrix square root.
    GSM keeps the paper's additive rank-two form (O(BD²) a step): with very large ρ (a target far narrower than q_t)
    its smallest eigenvalues lose relative accuracy, but each per-sample Σ_b is positive definite in exact
    arithmetic and so is their average.
    GSM's ρ is computed as 2a / (1 + √(1 + 4a)) rather than (√(1 + 4a) − 1)/2, which loses all digits for small a.
    Both updates work in the dtype and on the device of their inputs; use float64 where accuracy matters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["bam_learning_rate", "bam_update", "gsm_update"]


def _check_shapes(mean: Tensor, covariance: Tensor, samples: Tensor, scores: Tensor) -> None:
    if mean.ndim != 1:
        raise ValueError(f"mean must have shape (D,), got {tuple(mean.shape)}")
    dim = mean.shape[0]
    if covariance.shape != (dim, dim):
        raise ValueError(f"covariance must have shape ({dim}, {dim}), got {tuple(covariance.shape)}")
    if samples.ndim != 2 or samples.shape[1] != dim or samples.shape[0] < 1:
        raise ValueError(f"samples must have shape (B, {dim}) with B >= 1, got {tuple(samples.shape)}")
    if scores.shape != samples.shape:
        raise ValueError(f"scores must have the shape of samples {tuple(samples.shape)}, got {tuple(scores.shape)}")


def _symmetric(matrix: Tensor) -> Tensor:
    return 0.5 * (matrix + matrix.mT)


def _solve_factored_quadratic_matrix_equation(v_factor: Tensor, u_factor: Tensor) -> Tensor:
    """The symmetric positive definite Σ with Σ U Σ + Σ = V, given V = AᵀA (A of full column rank) and U = GᵀG.

    Square-root form (module docstring, "Numerical choices"): U and V are never formed.
    """
    dim = v_factor.shape[1]
    r = torch.linalg.qr(v_factor, mode="r").R  # V = RᵀR; R's sign convention does not matter
    # A full W is needed only when G has fewer rows than D: its extra rows span the directions where x = 1.
    _, singular_values, w_transposed = torch.linalg.svd(u_factor @ r.mT, full_matrices=u_factor.shape[0] < dim)
    eigenvalues = torch.zeros(dim, dtype=r.dtype, device=r.device)
    eigenvalues[: singular_values.shape[0]] = singular_values[:dim] ** 2
    x = 2.0 / (1.0 + torch.sqrt(1.0 + 4.0 * eigenvalues))
    factor = (r.mT @ w_transposed.mT) * torch.sqrt(x)
    return _symmetric(factor @ factor.mT)


def gsm_update(mean: Tensor, covariance: Tensor, samples: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """One GSM step: (μ_{t+1}, Σ_{t+1}) from q_t = N(mean, covariance), samples z_b ~ q_t (B, D) and their scores.

    Each sample's KL-closest score-matching Gaussian is computed from the same q_t, and the B results are averaged
    (module docstring). With B = 1 the new Gaussian's score at the sample equals the given score exactly.
    """
    _check_shapes(mean, covariance, samples, scores)
    offsets = mean - samples  # d_b = μ_t − z_b
    covariance_scores = scores @ covariance  # rows Σ_t g_b (Σ_t symmetric)
    offset_dot_score = (offsets * scores).sum(dim=1)
    a = (covariance_scores * scores).sum(dim=1) + offset_dot_score**2  # a_b = g_bᵀ V_b g_b ≥ 0
    rho = 2.0 * a / (1.0 + torch.sqrt(1.0 + 4.0 * a))
    # μ_b = z_b + V_b g_b / (1 + ρ_b): built from z_b, so each μ_b meets its score constraint up to rounding
    steps = (covariance_scores + offsets * offset_dot_score[:, None]) / (1.0 + rho)[:, None]
    batch = samples.shape[0]
    new_mean = (samples + steps).mean(dim=0)
    new_covariance = covariance + (offsets.mT @ offsets - steps.mT @ steps) / batch
    return new_mean, _symmetric(new_covariance)


def bam_update(
    mean: Tensor, covariance: Tensor, samples: Tensor, scores: Tensor, learning_rate: float
) -> tuple[Tensor, Tensor]:
    """One BaM step: (μ_{t+1}, Σ_{t+1}) from q_t = N(mean, covariance), a batch z_b ~ q_t (B, D), scores, λ_t > 0.

    Σ_{t+1} is symmetric positive definite for any batch size, B < D included (module docstring).
    """
    _check_shapes(mean, covariance, samples, scores)
    lam = float(learning_rate)
    if not (lam > 0.0 and math.isfinite(lam)):
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
    batch = samples.shape[0]
    sample_mean = samples.mean(dim=0)
    score_mean = scores.mean(dim=0)
    batch_weight = math.sqrt(lam / batch)
    shrink = lam / (1.0 + lam)
    # V = AᵀA and U = GᵀG row by row: Σ_t, λC and λ/(1+λ)(μ_t − z̄)(μ_t − z̄)ᵀ; λΓ and λ/(1+λ)ḡḡᵀ
    v_factor = torch.cat(
        [
            torch.linalg.cholesky(covariance).mT,
            batch_weight * (samples - sample_mean),
            math.sqrt(shrink) * (mean - sample_mean)[None],
        ]
    )
    u_factor = torch.cat([batch_weight * (scores - score_mean), math.sqrt(shrink) * score_mean[None]])
    new_covariance = _solve_factored_quadratic_matrix_equation(v_factor, u_factor)
    new_mean = mean / (1.0 + lam) + shrink * (new_covariance @ score_mean + sample_mean)
    return new_mean, new_covariance


def bam_learning_rate(iteration: int, batch_size: int, dim: int, scale: float = 1.0) -> float:
    """λ_t = scale · B·D / (t + 1) for iteration t = 0, 1, 2, …: BaM's decaying schedule (scale = 1 is the paper's).

    The paper uses this schedule for its non-Gaussian targets (for Gaussian targets it also reports constant λ = B
    and λ = BD, and B/(t + 1)). Large early steps move fast; as λ_t shrinks the KL(q_t ‖ q) term weighs more, so
    later steps move less on the strength of one batch.
    """
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0 (the first step is t = 0), got {iteration}")
    if batch_size < 1 or dim < 1:
        raise ValueError(f"batch_size and dim must be >= 1, got {batch_size} and {dim}")
    if not (scale > 0.0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    return scale * batch_size * dim / (iteration + 1)
