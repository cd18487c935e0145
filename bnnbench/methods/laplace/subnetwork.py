"""`laplace-subnet`: subnetwork Laplace (Daxberger et al. 2021; laplace-torch `SubnetLaplace`): a full-covariance
GGN Laplace over `n_params` selected weights, every other weight fixed at MAP (the conditional posterior).

Selection (laplace-torch's masks), top `n_params` scores:
- `largest-variance-swag` (default): marginal variances of diagonal SWAG (40 epochs of SGD at lr 0.01 from the
  MAP, laplace-torch's defaults); keeping the largest minimises the 2-Wasserstein distance to the factorised
  posterior, the paper's strategy;
- `largest-variance`: the same with a diagonal Laplace's variances. On digits it picks weights the data never
  reach (the always-blank border pixels' input weights have zero curvature, so their variance is the prior's):
  measured on digits-mlp, validation NLL was then 0.1799 at every prior precision from 1e-2 to 1e5, the MAP's;
- `largest-magnitude`: |θ_MAP|;
- `random`: uniform scores (seeded by the run seed).

The curvature and the GLM predictive differentiate the outputs with respect to the subnetwork's weights alone
(`subnet_jacobian`): a per-example reverse pass (C cotangents per image, vmapped) yields J_S (B, C, |S|); the
selected entries of large Linear and Conv2d weights enter as sparse output terms, so no per-example gradient of a
whole weight is formed, and those of other tensors are added to their MAP values. With `link_approx = "mc"` and
fewer samples than outputs, K tangents are pushed forward instead (`subnet_jvp`).
The GGN Σ J_Sᵀ Λ J_S is laplace-torch's own formula fed these Jacobians (`SubnetGGN`, its curvature backend), and
the predictive's J_S Σ_S J_Sᵀ comes from the posterior's (|S|, |S|) covariance or its variances. laplace-torch's
backends build the (B, C, P) Jacobian over every weight and index it, which cut a ResNet-18's calls to one image.
Both are checked against laplace-torch's own on the same subnetwork.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, cached_property

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vmap

from bnnbench.errors import UsageError
from bnnbench.methods.laplace.common import (
    LINK,
    TANGENT_ROWS,
    LaplaceHparams,
    LaplacePredictive,
    RegressionView,
    check_memory,
    data_loader,
    fit_laplace,
    import_laplace,
    jacobian_bytes,
    jacobian_rows,
    laplace_backend,
    quiet_jit_deprecation,
    tunes_on_validation,
)
from bnnbench.methods.map import precision_prior_settings
from bnnbench.params import math_attention
from bnnbench.types import Dimension, MethodSpec

__all__ = ["SPEC", "Hparams", "SELECTIONS", "SubnetPredictive", "fit", "subnet_ggn", "subnet_jacobian"]

SELECTIONS = ("largest-variance-swag", "largest-variance", "largest-magnitude", "random")
# a weight whose selected entries enter as sparse output terms (`_sparse_offsets`): its size and their share of it
SPARSE_MIN_ENTRIES, SPARSE_MAX_SHARE = 4096, 1 / 8


@dataclass(frozen=True)
class Hparams(LaplaceHparams):
    hessian: str = "full"
    n_params: int = 1000  # s; clipped to the network's size
    selection: str = "largest-variance-swag"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hessian not in ("full", "diag"):
            raise UsageError(f"laplace-subnet: hessian must be full or diag, got '{self.hessian}'")
        if self.selection not in SELECTIONS:
            raise UsageError(f"unknown selection '{self.selection}'; valid choices: {', '.join(SELECTIONS)}")
        if self.n_params < 1:
            raise UsageError(f"laplace-subnet: n_params must be >= 1, got {self.n_params}")


def select_subnetwork(model, likelihood: str, selection: str, n_params: int, train, batch_size: int,
                      seed: int) -> torch.Tensor:
    """Sorted indices (into the flattened parameter vector) of the `n_params` selected weights; `batch_size` is
    SWAG's SGD batch."""
    laplace = import_laplace()
    from laplace.utils.subnetmask import (
        LargestMagnitudeSubnetMask,
        LargestVarianceDiagLaplaceSubnetMask,
        LargestVarianceSWAGSubnetMask,
        RandomSubnetMask,
    )

    rows = jacobian_rows(model, train.x)
    if selection == "largest-variance-swag":
        torch.manual_seed(seed)
        mask, rows = LargestVarianceSWAGSubnetMask(model, n_params, likelihood), batch_size
    elif selection == "largest-variance":
        diagonal = laplace.DiagLaplace(model, likelihood, backend=laplace_backend(model))
        mask = LargestVarianceDiagLaplaceSubnetMask(model, n_params, diagonal)
    elif selection == "largest-magnitude":
        mask = LargestMagnitudeSubnetMask(model, n_params)
    else:
        torch.manual_seed(seed)
        mask = RandomSubnetMask(model, n_params)
    view = model if isinstance(model, RegressionView) else None
    with _module_hooks_kept(model):
        indices = mask.select(data_loader(train, rows, likelihood == "regression", view))
    return indices.sort().values.cpu()  # laplace-torch checks for a (CPU) torch.LongTensor; it indexes CUDA with it


@contextmanager
def _module_hooks_kept(model: nn.Module) -> Iterator[None]:
    """The model's module hooks as they were before: BackPACK's `extend` (the diagonal Laplace that
    "largest-variance" fits) leaves full backward hooks on every layer, and torch.func's Jacobians of the
    subnetwork then fail on them ("an autograd.Function with functorch transforms must override setup_context")."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    saved = {(module, kind): dict(getattr(module, kind)) for module in model.modules() for kind in kinds}
    try:
        yield
    finally:
        for (module, kind), hooks in saved.items():
            current = getattr(module, kind)
            current.clear()
            current.update(hooks)
        for module in model.modules():  # the full backward hooks' switch, set by register_full_backward_hook
            module._is_full_backward_hook = None if not module._backward_hooks else module._is_full_backward_hook


def fit(task, model, data, budget, context, hparams: Hparams = Hparams()):
    Laplace = import_laplace().Laplace  # noqa: N806 (laplace-torch's factory)

    chosen = {}
    n_params = min(hparams.n_params, sum(p.numel() for p in model.parameters()))
    probe = data.train.x[:1].to(next(model.parameters()).device)
    memory = check_memory(model, hparams.hessian, n_params, hparams.max_curvature_gb, "laplace-subnet",
                          "a smaller n_params", jacobian_bytes(model, probe, n_params, hparams.batch_size))

    def make(network, likelihood, noise_std, prior_precision, train):
        indices = select_subnetwork(network, likelihood, hparams.selection, n_params, train, hparams.batch_size,
                                    context.seed)
        chosen["n_selected"] = len(indices)
        laplace = Laplace(network, likelihood, subset_of_weights="subnetwork", hessian_structure=hparams.hessian,
                          subnetwork_indices=indices, sigma_noise=noise_std, prior_precision=prior_precision,
                          backend=subnet_ggn())
        return laplace, indices

    predictive, info = fit_laplace(task, model, data, budget, context, hparams, method="laplace-subnet",
                                   make_laplace=make, predictive=SubnetPredictive,
                                   jacobian_weights=jacobian_weights, extra={"memory_estimate_bytes": memory})
    info.extra |= {"selection": hparams.selection, **chosen}
    return predictive, info



class SubnetPredictive(LaplacePredictive):
    """laplace-torch's subnetwork posterior with its GLM predictive from Jacobians over the subnetwork only (see
    the module docstring); pred_type nn and the view's path (`RegressionView`) stay laplace-torch's."""

    @cached_property
    def _parts(self) -> list[tuple[str, Tensor]]:
        """The subnetwork's positions per tensor, on the network's device: fixed once fitted."""
        return _subnet_parts(self.model, self.indices.to(next(self.model.parameters()).device))

    _sparse: dict[int, _SparseOffset] | None = None  # the sparse output terms (`sparse_terms`), found at first use
    _n_outputs = 0  # C, read at first use

    def predict(self, x: Tensor, n_samples: int) -> Tensor:
        if self.pred_type != "glm" or self.view is not None:
            return super().predict(x, n_samples)
        if self._sparse is None:
            self._sparse = sparse_terms(self.model, self._parts, x[:1])
            with torch.no_grad():
                self._n_outputs = self.model(x[:1]).shape[-1]
        # K tangents or C cotangents, whichever are fewer (validation tuning reuses the Jacobians across α)
        if (self.link_approx == "mc" and not self.regression and self._seen is None
                and max(n_samples, 1) < self._n_outputs):
            return self._tangent_samples(x, max(n_samples, 1))
        rows = jacobian_rows(self.model, x, _jacobian_span(self.model, self._parts), len(x))
        # full or diag: one property read per call (laplace-torch recomputes them on every access)
        full = isinstance(self.laplace, import_laplace().FullLaplace)
        posterior = self.laplace.posterior_covariance if full else self.laplace.posterior_variance
        return torch.cat([self._predict_rows(part, posterior, full, n_samples) for part in x.split(rows)], dim=1)

    def _predict_rows(self, x: Tensor, posterior: Tensor, full: bool, n_samples: int) -> Tensor:
        jacobian, outputs = self.reused(x, lambda rows: subnet_jacobian(self.model, self._parts, rows, self._sparse))
        posterior = posterior.to(jacobian)
        covariance = (jacobian @ posterior if full else jacobian * posterior) @ jacobian.transpose(1, 2)
        return self.glm_predictive(outputs, covariance, n_samples)

    def _tangent_samples(self, x: Tensor, n_samples: int) -> Tensor:
        """Samples f(x; θ*) + J_S(x) δ_k of the linearised logits, δ_k ~ N(0, Σ_S) from the posterior's square root
        (laplace-torch's, cached by it for a full Σ_S), pushed forward in one vmapped jvp: K tangent passes where the
        Jacobians take C reverse passes (CIFAR-100: 8 against 100). Validation tuning keeps the Jacobians, which serve
        every prior precision; both sample N(f, J_S Σ_S J_Sᵀ)."""
        scale = self.laplace.posterior_scale
        noise = torch.randn(n_samples, scale.shape[-1], dtype=x.dtype, device=x.device)
        deltas = noise @ scale.to(noise).T if scale.dim() == 2 else noise * scale.to(noise)
        samples = []
        for part in x.split(TANGENT_ROWS):
            outputs, offsets = subnet_jvp(self.model, self._parts, part, deltas)
            samples.append(self.likelihood.log_predictive(outputs + offsets))
        return torch.cat(samples, dim=1)


def _subnet_parts(model: nn.Module, indices: Tensor) -> list[tuple[str, Tensor]]:
    """(parameter name, positions within that tensor) of the sorted flat `indices`, in parameter order."""
    parts, offset = [], 0
    for name, value in model.named_parameters():
        inside = indices[(indices >= offset) & (indices < offset + value.numel())] - offset
        if len(inside):
            parts.append((name, inside))
        offset += value.numel()
    return parts


def subnet_jacobian(model: nn.Module, parts: list[tuple[str, Tensor]], x: Tensor,
                    sparse: dict[int, _SparseOffset] | None = None) -> tuple[Tensor, Tensor]:
    """Per-example Jacobians (B, C, |S|) of the outputs with respect to the subnetwork's weights at MAP, and the
    outputs f(x; θ*) (B, C) from the same pass: reverse mode over each image's C outputs, vmapped over the images.

    The selected entries δ of a large Linear or ungrouped Conv2d weight (`_sparse_offsets`) enter as a sparse term
    added to the layer's output (`_SparseOffset`): a Linear weight's (i, j) entry adds x_j δ to output i, so the
    derivative for δ is gathered from the layer's input and output gradient at the selected positions, and the
    backward pass forms no per-example gradient of the whole weight (digits-vit, 1,000 weights: 46 -> 27 forward
    passes' time). Any other tensor (a bias, a LayerNorm's, a position embedding) is its MAP value with δ added at
    its selected entries, whose per-example gradient the backward pass forms in full. `sparse`: the terms
    `sparse_terms` gave, else found and checked on the first image here."""
    sparse = sparse_terms(model, parts, x[:1]) if sparse is None else sparse
    return _jacobian(model, parts, x, sparse)


def sparse_terms(model: nn.Module, parts: list[tuple[str, Tensor]], probe: Tensor) -> dict[int, _SparseOffset]:
    """The parts that enter as sparse output terms (`_SparseOffset`), by position in `parts`. A weight that the
    network also reads without calling its layer (a tied weight) escapes the terms, so they are used only where the
    probe image's Jacobian equals the dense path's to rounding (bf16 autocast included); else none."""
    sparse = _sparse_offsets(model, parts)
    if sparse:
        dense, _ = _jacobian(model, parts, probe, {})
        if (_jacobian(model, parts, probe, sparse)[0] - dense).abs().max() > 0.05 * dense.abs().max():
            return {}
    return sparse


def subnet_jvp(model: nn.Module, parts: list[tuple[str, Tensor]], x: Tensor, tangents: Tensor) -> tuple[Tensor, Tensor]:
    """f(x; θ*) (B, C) and J_S(x) δ (K, B, C) for each row δ of `tangents` (K, |S|), in one forward-mode pass vmapped
    over the K tangents (the primal does not depend on them, so it runs once). The selected entries are added to
    their tensors, not entered as `_SparseOffset` terms: in forward mode the terms' sums cost more than the weight
    tangents' products (K = 8, 1,000 weights, batch 128, one thread: digits-vit 27 against 20 forward passes' time,
    a tiny ResNet 22 against 18)."""
    base = {name: value.detach() for name, value in model.named_parameters()}
    zeros = tuple(torch.zeros(len(where), dtype=x.dtype, device=x.device) for _, where in parts)

    def outputs(offsets: tuple[Tensor, ...]) -> Tensor:
        return functional_call(model, _offset_weights(base, parts, offsets, {}), (x,))

    def push(tangent: Tensor) -> tuple[Tensor, Tensor]:
        return jvp(outputs, (zeros,), (tuple(tangent.split([len(where) for _, where in parts])),))

    with math_attention(), quiet_jit_deprecation(), torch.no_grad():
        return vmap(push, out_dims=(None, 0))(tangents)


def _offset_weights(base: dict[str, Tensor], parts: list[tuple[str, Tensor]], offsets: tuple[Tensor, ...],
                    sparse: dict[int, _SparseOffset]) -> dict[str, Tensor]:
    """The weights at θ* + δ: `offsets` δ per part, handed to the sparse terms or added at the selected entries."""
    weights = dict(base)
    for index, ((name, where), offset) in enumerate(zip(parts, offsets, strict=True)):
        if index in sparse:
            sparse[index].offset = offset
        else:
            weights[name] = base[name].flatten().index_add(0, where, offset).view_as(base[name])
    return weights


def _jacobian(model: nn.Module, parts: list[tuple[str, Tensor]], x: Tensor,
              sparse: dict[int, _SparseOffset]) -> tuple[Tensor, Tensor]:
    """`subnet_jacobian` with the parts in `sparse` (by position in `parts`) as sparse output terms."""
    base = {name: value.detach() for name, value in model.named_parameters()}
    zeros = tuple(torch.zeros(len(where), dtype=x.dtype, device=x.device) for _, where in parts)

    def outputs(offsets: tuple[Tensor, ...], image: Tensor) -> tuple[Tensor, Tensor]:
        out = functional_call(model, _offset_weights(base, parts, offsets, sparse), (image.unsqueeze(0),)).squeeze(0)
        return out, out

    with math_attention(), _hooked(sparse.values()):
        per_part, values = vmap(jacrev(outputs, has_aux=True), in_dims=(None, 0))(zeros, x)
    return torch.cat(per_part, dim=-1).detach(), values.detach()


class _SparseOffset:
    """A forward hook adding a layer's output term from `offset`, the δ at the selected entries (positions `where`
    in the flattened weight (out, in·k·k)): output channel i gains δ times input column j (a convolution's input
    unfolded to columns), through a one-hot (|S_layer|, out) product, which forward and reverse mode batch as a
    matrix product (an index_add copied the whole output, and its tangents, per call)."""

    def __init__(self, module: nn.Module, where: Tensor) -> None:
        self.module = module
        weight = module.weight
        per_row = weight[0].numel()
        self.columns = where % per_row
        self.to_channels = nn.functional.one_hot(where // per_row, len(weight)).to(weight.dtype)
        self.channels = None
        if isinstance(module, nn.Conv2d):  # unfold only the input channels the entries read
            kernel = math.prod(module.kernel_size)
            self.channels, position = torch.unique(self.columns // kernel, return_inverse=True)
            self.columns = position * kernel + self.columns % kernel
        self.offset: Tensor | None = None

    def __call__(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        if isinstance(module, nn.Linear):  # (..., out): channels last
            return output + (inputs[0][..., self.columns] * self.offset) @ self.to_channels
        columns = nn.functional.unfold(inputs[0][:, self.channels], module.kernel_size, module.dilation,
                                       module.padding, module.stride)
        term = (columns[:, self.columns] * self.offset.unsqueeze(-1)).transpose(1, 2) @ self.to_channels
        return output + term.transpose(1, 2).view_as(output)


def _sparse_offsets(model: nn.Module, parts: list[tuple[str, Tensor]]) -> dict[int, _SparseOffset]:
    """The parts that enter as a sparse output term (`_SparseOffset`): the selected entries of a Linear or an
    ungrouped Conv2d weight (what `unfold` reproduces) of at least SPARSE_MIN_ENTRIES entries, of which they are at
    most SPARSE_MAX_SHARE. Elsewhere the per-example gradient of the whole tensor costs less than the term's gather,
    product and sum (a bias's is its output gradient). Batch 128, 1,000 weights, one thread, in forward passes'
    time, every Linear and Conv2d part sparse / this rule / none: a tiny ViT (5,802 weights) 76 / 26 / 25;
    digits-vit 26 / 27 / 46; a tiny ResNet 36 / 32 / 38 (largest magnitude), 49 / 50 / 197 (random)."""
    sparse = {}
    for index, (name, where) in enumerate(parts):
        owner, _, kind = name.rpartition(".")
        module = model.get_submodule(owner)
        conv = (isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
                and not isinstance(module.padding, str))
        if (kind == "weight" and (type(module) is nn.Linear or conv) and module.weight.numel() >= SPARSE_MIN_ENTRIES
                and len(where) <= SPARSE_MAX_SHARE * module.weight.numel()):
            sparse[index] = _SparseOffset(module, where)
    return sparse


@contextmanager
def _hooked(offsets):
    handles = [offset.module.register_forward_hook(offset) for offset in offsets]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@cache
def subnet_ggn():
    """laplace-torch's GGN backend with the Jacobians taken over the subnetwork only (`subnet_jacobian`): its
    `full` and `diag` then sum J_Sᵀ Λ J_S without a Jacobian over every weight. A class, as laplace-torch takes
    backends, made once laplace-torch is imported."""

    class SubnetGGN(import_laplace().curvature.GGNInterface):
        _parts: list[tuple[str, Tensor]] | None = None
        _sparse: dict[int, _SparseOffset] | None = None

        def jacobians(self, x: Tensor, enable_backprop: bool = False) -> tuple[Tensor, Tensor]:
            if self._parts is None:  # fixed for the fit: found and checked on its first batch, not on every batch
                self._parts = _subnet_parts(self.model, self.subnetwork_indices.to(x.device))
                self._sparse = sparse_terms(self.model, self._parts, x[:1])
            return subnet_jacobian(self.model, self._parts, x, self._sparse)

    return SubnetGGN


def jacobian_weights(model: nn.Module, indices: Tensor) -> int:
    """Weights one image's subnetwork Jacobian spans at once (`_jacobian_span`), for `fit_laplace`."""
    return _jacobian_span(model, _subnet_parts(model, indices))


def _jacobian_span(model: nn.Module, parts: list[tuple[str, Tensor]]) -> int:
    """The selected weights, and the largest selected tensor's per-example gradient while the backward pass is in
    it."""
    return max(sum(len(where) for _, where in parts), *(model.get_parameter(name).numel() for name, _ in parts))

SPEC = MethodSpec("laplace-subnet", Hparams, fit, post_hoc=True, needs_validation=tunes_on_validation,
                  posterior_settings=precision_prior_settings("laplace-subnet", tune="none"),
                  search_space=(Dimension("n_params", "categorical", choices=(100, 300, 1000)),
                                Dimension("selection", "categorical", choices=SELECTIONS), LINK))
