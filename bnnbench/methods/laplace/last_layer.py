"""`laplace-ll`: last-layer Laplace (laplace-torch `LLLaplace`), the output `nn.Linear` the model factory names
(`bnnbench.models.last_layer_name`); every other weight stays at MAP. Default hessian kron, as laplace-torch's.

On regression through `RegressionView` (per-step outputs, learned noise scale) the head is not the viewed model's
last operation, which `LLLaplace` assumes; there the same posterior is laplace-torch's all-weights Laplace with
every weight but the output layer's frozen (laplace-torch covers the parameters that require gradients).

The predictive (`LastLayerPredictive`) is computed in feature space, not through laplace-torch's Jacobians: the
outputs are linear in the last layer's weights, f = W φ + b, so with the features φ of one forward pass the GLM
predictive is exact and closed-form, J Σ Jᵀ with J = I_C ⊗ [φ, 1], and the Monte Carlo predictive over weights is φ
pushed through K sampled heads. laplace-torch builds a (C x P) Jacobian per test point instead (7.9 GB of float32
for cifar100-vit's head, P = 19,300, at a batch of 1,024, so its calls were cut to one image each), and its
`functional_samples(pred_type="nn")` writes the head's sampled weights into the whole network's vector (a crash).
The posterior itself (curvature, prior, tuning) stays laplace-torch's; the predictive is checked against its
`_glm_predictive_distribution` and its own nn samples."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bnnbench.methods.laplace.common import (
    LINK,
    LaplaceHparams,
    LaplacePredictive,
    RegressionView,
    check_memory,
    fit_laplace,
    import_laplace,
    laplace_backend,
    parameter_indices,
    tunes_on_validation,
)
from bnnbench.methods.map import precision_prior_settings
from bnnbench.models import last_layer_name
from bnnbench.types import Dimension, MethodSpec

__all__ = ["SPEC", "Hparams", "LastLayerPredictive", "fit"]


@dataclass(frozen=True)
class Hparams(LaplaceHparams):
    hessian: str = "kron"


def fit(task, model, data, budget, context, hparams: Hparams = Hparams()):
    Laplace = import_laplace().Laplace  # noqa: N806 (laplace-torch's factory)

    name = last_layer_name(model)

    memory = check_memory(model, hparams.hessian, list(model.get_submodule(name).named_parameters()),
                          hparams.max_curvature_gb, "laplace-ll", "hessian=kron or hessian=diag")

    def make(network, likelihood, noise_std, prior_precision, train):
        if isinstance(network, RegressionView):
            viewed_name = last_layer_name(network)
            for parameter_name, parameter in network.named_parameters():
                parameter.requires_grad_(parameter_name.startswith(viewed_name + "."))
            laplace = Laplace(network, likelihood, subset_of_weights="all", hessian_structure=hparams.hessian,
                              sigma_noise=noise_std, prior_precision=prior_precision,
                              backend=laplace_backend(network))
            return laplace, parameter_indices(network, viewed_name)
        laplace = Laplace(network, likelihood, subset_of_weights="last_layer", hessian_structure=hparams.hessian,
                          sigma_noise=noise_std, prior_precision=prior_precision, last_layer_name=name,
                          backend=laplace_backend(network))
        return laplace, parameter_indices(network, name)

    return fit_laplace(task, model, data, budget, context, hparams, method="laplace-ll", make_laplace=make,
                       extra={"last_layer": name, "memory_estimate_bytes": memory},
                       predictive=LastLayerPredictive,
                       jacobian_weights=lambda network, indices: len(indices))


class LastLayerPredictive(LaplacePredictive):
    """laplace-torch's last-layer posterior, predicted from the features (see the module docstring). The view's
    all-weights form (`RegressionView`) and features of more than (B, D) take the inherited Jacobian path."""

    def predict(self, x: Tensor, n_samples: int) -> Tensor:
        if self.view is not None:
            return super().predict(x, n_samples)
        outputs, features = self.reused(x, self._outputs_and_features)
        if outputs.dim() != 2 or features.dim() != 2:
            return super().predict(x, n_samples)
        if self.pred_type == "nn":
            return self.likelihood.log_predictive(self._sampled_heads(features, max(n_samples, 1)))
        return self.glm_predictive(outputs, self.output_covariance(features), n_samples)

    @torch.no_grad()
    def _outputs_and_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.laplace.model.forward_with_features(x)

    def output_covariance(self, features: Tensor) -> Tensor:
        """J Σ Jᵀ (B, C, C), J = I_C ⊗ [φ, 1]: the GLM's output covariance, from the features alone."""
        head = self.laplace.model.last_layer
        bias = head.bias is not None
        structure = type(self.laplace).__name__
        if structure.startswith("Kron"):
            return _kron_covariance(self.laplace.posterior_precision, features, bias)
        n_out = head.weight.shape[0]
        with_one = torch.cat([features, torch.ones_like(features[:, :1])], dim=1) if bias else features
        if structure.startswith("Diag"):
            variance = self.laplace.posterior_variance
            per_output = _head_layout(variance, n_out, features.shape[1], bias)  # (C, D + 1)
            return torch.diag_embed(with_one.square() @ per_output.T)
        covariance = self.laplace.posterior_covariance  # full: (P, P) in the head's (weight, bias) order
        rows = _head_layout(covariance, n_out, features.shape[1], bias)  # (C, D + 1, P)
        half = _head_layout(torch.einsum("bi,cip->bcp", with_one, rows), n_out, features.shape[1], bias, dim=2)
        return torch.einsum("bcdj,bj->bcd", half, with_one)  # half: (B, C, C, D + 1)

    def _sampled_heads(self, features: Tensor, n_samples: int) -> Tensor:
        """Outputs (S, B, C) of the MAP features through S heads sampled from the posterior."""
        head = self.laplace.model.last_layer
        samples = self.laplace.sample(n_samples).to(features)  # (S, P) in the head's (weight, bias) order
        n_out, n_features = head.weight.shape
        weights = samples[:, :n_out * n_features].reshape(n_samples, n_out, n_features)
        outputs = torch.einsum("bd,scd->sbc", features, weights)
        return outputs + samples[:, n_out * n_features:].unsqueeze(1) if head.bias is not None else outputs


def _head_layout(flat: Tensor, n_out: int, n_features: int, bias: bool, dim: int = 0) -> Tensor:
    """Entries over the head's parameters (weight (C, D) row-major, then bias (C)) along `dim`, as (C, D + 1)."""
    weight = flat.narrow(dim, 0, n_out * n_features)
    weight = weight.reshape(*flat.shape[:dim], n_out, n_features, *flat.shape[dim + 1:])
    if not bias:
        return weight
    bias_part = flat.narrow(dim, n_out * n_features, n_out).unsqueeze(dim + 1)
    return torch.cat([weight, bias_part], dim=dim + 1)


def _kron_covariance(precision, features: Tensor, bias: bool) -> Tensor:
    """J Σ Jᵀ for laplace-torch's Kronecker-factored head posterior (`KronDecomposed`: the weight's block
    Q_out ⊗ Q_in with eigenvalues l_out ⊗ l_in + δ, then the bias's block Q_b with l_b + δ). With p = Q_inᵀ φ,
    J_w (Q_out ⊗ Q_in) = Q_out ⊗ pᵀ, so the weight's part is Q_out diag(m) Q_outᵀ, m_a = Σ_j p_j² / (l_out,a l_in,j +
    δ): O(B·D·(D + C)) per batch, where the explicit Jacobian costs O(B·C²·D)."""
    blocks = list(zip(precision.eigenvectors, precision.eigenvalues, precision.deltas, strict=True))
    (q_out, q_in), (l_out, l_in), delta = blocks[0]
    if precision.damping:
        inverse = 1 / torch.outer(l_out + delta.sqrt(), l_in + delta.sqrt())
    else:
        inverse = 1 / (torch.outer(l_out, l_in) + delta)
    projected = (features @ q_in).square()  # (B, D)
    covariance = torch.einsum("ca,ba,da->bcd", q_out, projected @ inverse.T, q_out)
    if bias:
        (q_bias,), (l_bias,), delta_bias = blocks[1]
        covariance = covariance + (q_bias / (l_bias + delta_bias)) @ q_bias.T
    return covariance



SPEC = MethodSpec("laplace-ll", Hparams, fit, post_hoc=True, needs_validation=tunes_on_validation,
                  posterior_settings=precision_prior_settings("laplace-ll", tune="none"),
                  search_space=(Dimension("hessian", "categorical", choices=("kron", "full")), LINK))
