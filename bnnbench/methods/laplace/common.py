"""What the laplace-torch methods share: hyper-parameters, the MAP phase, the memory guard, fitting and
prior-precision tuning through laplace-torch, and the predictive the evaluator calls.

laplace-torch (Daxberger et al. 2021, the subnetwork paper's authors) computes the curvature (GGN/Fisher
via its backends), the posterior and the GLM predictive; bnnbench only wraps it behind the Method and
Predictive contract, so the evaluator scores a Laplace posterior like every other method.

The MAP phase: with a fixed prior (`tune = "none"`) the network is trained to the mode of that prior,
N(0, 1/prior_precision) (the task's weight decay is not used), so the Laplace approximation is centred where
its own prior puts the mode: on a linear-Gaussian model it is then the exact posterior. With a tuned prior
(`val`, `marglik`) MAP uses the task's AdamW weight decay and the prior precision is tuned afterwards, as in
laplace-torch's post-hoc workflow.

Regression with per-step outputs (forecasting) or a learned noise scale goes through `RegressionView`, which
shows laplace-torch flat outputs whose unit-noise regression GGN is the Gaussian's Fisher GGN (see there).
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from bnnbench.errors import UsageError
from bnnbench.likelihoods import Categorical, Gaussian, Likelihood, get_likelihood
from bnnbench.methods.map import gaussian_log_prior, train_map
from bnnbench.params import math_attention
from bnnbench.train import LoopResult, TrainConfig, loop_config
from bnnbench.types import Budget, DataBundle, Dimension, FitContext, FitInfo, ParameterPosterior, Split, TaskSpec

__all__ = ["LINK", "TANGENT_ROWS", "LaplaceHparams", "LaplacePredictive", "RegressionView", "check_kron_layers",
           "check_memory", "curvature_bytes", "data_loader", "fit_laplace", "gaussian_samples", "jacobian_bytes",
           "jacobian_rows", "laplace_backend", "parameter_indices", "train_map_phase"]

PRED_TYPES = ("glm", "nn")
LINK_APPROXIMATIONS = ("probit", "mc")
TUNINGS = ("val", "marglik", "none")
HESSIANS = ("full", "kron", "diag")
JACOBIAN_BYTES = 2**28
GLM_ROWS = 16
TANGENT_ROWS = 512  # rows per vmapped jvp over K tangents (K copies of the activations are alive)
VAL_GRID_LOG10 = (-4.0, 8.0)  # wide on purpose: a minimum on a bound is recorded as a warning
FLAT_NLL = 1e-4  # relative: a bound within this of the minimum ties it
LINK = Dimension("link_approx", "categorical", choices=LINK_APPROXIMATIONS)  # what `bnnbench tune` searches


@dataclass(frozen=True)
class LaplaceHparams(TrainConfig):
    """Shared settings of the Laplace methods (the MAP phase uses `TrainConfig`'s).

    hessian: curvature structure, full | kron | diag (what each method accepts differs).
    pred_type: "glm" (linearised network, laplace-torch's default) or "nn" (Monte Carlo over weights).
    link_approx: for glm classification, "probit" (one closed-form predictive) or "mc" (samples of the
        logits, mixed by the evaluator like every sampling method's).
    tune: prior precision by validation NLL on a log grid ("val", the spec's default), by the Laplace
        evidence on the training data ("marglik", Adam, 100 steps), or fixed at `prior_precision` ("none").
    grid_size: points of the validation grid, log-spaced over [1e-4, 1e8] (`tune_on_validation`).
    max_curvature_gb: refuse to fit a curvature estimated to need more memory than this.
    """

    hessian: str = "kron"
    pred_type: str = "glm"
    link_approx: str = "probit"
    tune: str = "val"
    prior_precision: float = 1.0
    grid_size: int = 49
    max_curvature_gb: float = 4.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, value, choices in (("hessian", self.hessian, HESSIANS), ("pred_type", self.pred_type, PRED_TYPES),
                                    ("link_approx", self.link_approx, LINK_APPROXIMATIONS),
                                    ("tune", self.tune, TUNINGS)):
            if value not in choices:
                raise UsageError(f"unknown {key} '{value}'; valid choices: {', '.join(choices)}")
        if self.pred_type == "nn" and self.link_approx != "mc":
            raise UsageError(f"pred_type nn takes link_approx mc (Monte Carlo over weights), got '{self.link_approx}'")
        if self.prior_precision <= 0 or self.grid_size < 2 or self.max_curvature_gb <= 0:
            raise UsageError("prior_precision and max_curvature_gb must be positive and grid_size >= 2")


def _laplace_likelihood(likelihood: Likelihood) -> tuple[str, float]:
    """laplace-torch's likelihood name and noise std for a bnnbench likelihood (a learned noise scale is
    handled by `RegressionView`, with unit noise)."""
    if isinstance(likelihood, Categorical):
        return "classification", 1.0
    if isinstance(likelihood, Gaussian):
        return "regression", 1.0 if likelihood.noise_std is None else float(likelihood.noise_std)
    raise UsageError(f"the Laplace methods take a categorical or gaussian likelihood, not '{likelihood.name}'")


class RegressionView(nn.Module):
    """The network as laplace-torch sees it on regression with per-step outputs (B, H, C): flat outputs (B, K).

    Fixed noise (C = 1): the means (B, H). Learned scale (C = 2, location μ and log σ), with the likelihood's Fisher
    diag(a / σ², b) in (μ, log σ) (Gaussian a = 1, b = 2; Student-t a = (ν+1)/(ν+3), b = 2ν/(ν+3)):
    g = (√a μ / sg(σ), √b log σ) with sg a stop-gradient, so g's Jacobian is (√a J_μ / σ, √b J_logσ) and
    laplace-torch's regression GGN with unit noise, Σ Jᵀ J, is the likelihood's Fisher GGN
    Σ a J_μᵀ J_μ / σ² + b J_logσᵀ J_logσ. laplace-torch has no heteroscedastic likelihood of its own
    (aleximmer/Laplace#153). Its training targets are g's at the data, (√a y / σ, √b log σ) with σ at the MAP.
    """

    def __init__(self, network: nn.Module, likelihood: Gaussian) -> None:
        super().__init__()
        self.network, self.learned_scale = network, likelihood.noise_std is None
        self.root_a, self.root_b = (math.sqrt(value) for value in likelihood.fisher())
        inner = getattr(network, "bnnbench_last_layer", None)
        if inner is not None:
            self.bnnbench_last_layer = f"network.{inner}" if inner else "network"

    @staticmethod
    def needed(model: nn.Module, likelihood: Likelihood, x: Tensor) -> bool:
        """Whether laplace-torch needs the view: a learned scale, or outputs with more than (B, 1) shape."""
        if not isinstance(likelihood, Gaussian):
            return False
        with torch.no_grad():
            shape = model(x[:1]).shape
        return likelihood.noise_std is None or len(shape) > 2

    def forward(self, x: Tensor) -> Tensor:
        outputs = self.network(x)
        if not self.learned_scale:
            return outputs[..., 0].flatten(1)
        mean, log_std = outputs[..., 0].flatten(1), outputs[..., 1].flatten(1)
        return torch.cat([self.root_a * mean * torch.exp(-log_std.detach()), self.root_b * log_std], dim=1)

    @torch.no_grad()
    def targets(self, split: Split) -> Tensor:
        """g at the data: what laplace-torch's loss and SWAG subnetwork selection compare outputs with."""
        y = split.y.reshape(len(split.y), -1).to(split.x.dtype)
        if not self.learned_scale:
            return y
        log_std = self.network(split.x)[..., 1].flatten(1)
        return torch.cat([self.root_a * y * torch.exp(-log_std), self.root_b * log_std], dim=1)

    def network_outputs(self, flat: Tensor, x: Tensor, linearised: bool) -> Tensor:
        """Samples of g (S, B, K) back to the network's (S, B, H, C). For the linearised network σ in μ / σ is
        the MAP's (the stop-gradient keeps it out of the linearisation); for sampled weights it is the sample's."""
        if not self.learned_scale:
            return flat.unsqueeze(-1)
        scaled_mean, log_std = flat.chunk(2, dim=-1)
        scaled_mean, log_std = scaled_mean / self.root_a, log_std / self.root_b
        if linearised:
            with torch.no_grad():
                scale = torch.exp(self.network(x)[..., 1].flatten(1))
        else:
            scale = torch.exp(log_std)
        return torch.stack([scaled_mean * scale, log_std], dim=-1)


def data_loader(split: Split, batch_size: int, regression: bool, view: RegressionView | None = None) -> DataLoader:
    """A split as laplace-torch takes it; regression targets as (N, K) like the (viewed) network's outputs."""
    if view is not None:
        targets = view.targets(split)
    else:
        targets = split.y.reshape(len(split.y), -1).to(split.x.dtype) if regression else split.y
    return DataLoader(TensorDataset(split.x, targets), batch_size=batch_size)


BACKPACK_MODULES = (nn.Linear, nn.Conv2d, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten,
                    nn.Dropout, nn.Identity)


@contextmanager
def quiet_jit_deprecation():
    """torch 2.14 deprecates torch.jit.script with a FutureWarning, and libraries still script at first use: asdl
    (laplace-torch's dependency) at import, torch.func.jvp's own decompositions at its first call. The warning is
    theirs to act on, not a bnnbench user's; it is silenced around those calls only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        yield


def import_laplace():
    """laplace-torch, imported here so that it is quiet (`quiet_jit_deprecation`). Its BackPack Jacobians call
    backward on outputs whose inputs need no gradient, for which torch warns that full backward hooks fire on
    outputs (a UserWarning, attributed to laplace's module): filtered for laplace's modules only."""
    warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect "
                            "to module outputs", category=UserWarning, module=r"laplace\.")
    with quiet_jit_deprecation():
        import laplace
        import laplace.curvature
        import laplace.utils.subnetmask  # noqa: F401 (the submodules that import asdl)
    return laplace


def laplace_backend(model: nn.Module):
    """BackPack's GGN where it supports every layer of the model (its per-example Jacobians and exact diagonal
    GGN cost C backward passes per batch: the digits CNN's diagonal GGN over 256 points took 1.35 s against
    34 s through curvlinops, same values), else laplace-torch's default (curvlinops, any architecture)."""
    BackPackGGN = import_laplace().curvature.BackPackGGN  # noqa: N806 (a class)

    if isinstance(model, RegressionView):  # BackPack extends module graphs, not the view's tensor operations
        return None
    leaves = [module for module in model.modules() if not list(module.children())]
    return BackPackGGN if all(isinstance(module, BACKPACK_MODULES) for module in leaves) else None


def jacobian_rows(model: nn.Module, x: Tensor, n_weights: int | None = None, most: int = GLM_ROWS) -> int:
    """Rows per laplace-torch call that builds per-example Jacobians over every weight (`n_weights`: over that
    many, such as a head's from its features, where `most` rows per call may be more than GLM_ROWS).

    Its GLM predictive and its diag/full GGN build a (rows, C, P) Jacobian (a subnetwork's too, before it
    indexes) by reverse mode over the whole batch, whose time and memory grow with rows², so batches are cut
    to GLM_ROWS rows and JACOBIAN_BYTES of Jacobian. Measured on one CPU thread: digits-mlp's GLM predictive took
    0.56 s per 180 points in 16-row calls against 1.7 s in 258-row calls; the diag GGN of the digits ViT in
    128-row batches was killed for memory (24 GB)."""
    with torch.no_grad():
        outputs = model(x[:1]).shape[-1]
    itemsize = next(model.parameters()).element_size()
    n_weights = n_weights or sum(value.numel() for value in model.parameters())
    return max(1, min(most, JACOBIAN_BYTES // (outputs * n_weights * itemsize)))


def curvature_bytes(model: nn.Module, hessian: str, parameters: list[tuple[str, Tensor]] | int) -> int:
    """Bytes the posterior precision needs: P² floats for full, Σ (in² + out²) per layer for kron (conv
    kernels flattened to in = C_in·k·k), P for diag. `parameters` are the (name, tensor) pairs the posterior
    covers, or their count for a full subnetwork."""
    itemsize = next(model.parameters()).element_size()
    count = parameters if isinstance(parameters, int) else sum(value.numel() for _, value in parameters)
    if hessian == "full":
        return itemsize * count * count
    if hessian == "diag":
        return itemsize * count
    total = 0
    for _, value in parameters:  # kron: one Kronecker pair per weight matrix, a diagonal for biases
        if value.dim() >= 2:
            total += value.shape[0] ** 2 + math.prod(value.shape[1:]) ** 2
        else:
            total += value.numel() ** 2
    return itemsize * total


KRON_MODULES = (nn.Linear, nn.Conv2d)  # what laplace-torch's Kronecker factors cover (curvlinops' KFAC, BackPack's)


def check_kron_layers(model: nn.Module, hessian: str, method: str, alternatives: str) -> None:
    """Refuse hessian=kron for a network with weights in layers that have no Kronecker factors (LayerNorm, a ViT's
    class token and position embedding): laplace-torch's backends stop there with "Found parameters in un-supported
    layers" after the whole MAP phase."""
    if hessian != "kron":
        return
    other = sorted({type(module).__name__ for module in model.modules()
                    if list(module.parameters(recurse=False)) and not isinstance(module, KRON_MODULES)})
    if other:
        raise UsageError(f"{method} with hessian=kron: laplace-torch's Kronecker factors cover Linear and Conv2d "
                         f"layers only, and this network has weights in {', '.join(other)}; use {alternatives}")


def check_memory(model: nn.Module, hessian: str, parameters: list[tuple[str, Tensor]] | int, limit_gb: float,
                 method: str, alternatives: str, jacobian_bytes: int = 0) -> dict[str, int]:
    """The memory estimate, before any fitting: the posterior precision's bytes (`curvature_bytes`) and, for a
    posterior whose curvature and predictive take per-example Jacobians over its weights alone (a subnetwork), those
    Jacobians' bytes per batch (`jacobian_bytes`). Refuse, with the variant to use instead, an estimate over
    `limit_gb`; else return it for the run's record."""
    estimate = {"curvature": curvature_bytes(model, hessian, parameters)}
    if jacobian_bytes:
        estimate["jacobians"] = jacobian_bytes
    needed = sum(estimate.values())
    if needed > limit_gb * 2**30:
        terms = " + ".join(f"{name} {value / 2**30:.3g} GiB" for name, value in estimate.items())
        raise UsageError(f"{method} with hessian={hessian} needs about {needed / 2**30:.3g} GiB ({terms}), over "
                         f"max_curvature_gb={limit_gb:g}; use {alternatives} (or raise max_curvature_gb)")
    return estimate


def jacobian_bytes(model: nn.Module, x: Tensor, n_weights: int, batch_size: int) -> int:
    """Bytes of the per-example Jacobians (rows, C, n_weights) of one batch of `batch_size` rows, cut to
    JACOBIAN_BYTES (`jacobian_rows`): the batch · C · |S| term of a subnetwork's memory."""
    training = model.training
    try:  # before training: a BatchNorm in train mode would refuse one row and update its running statistics
        with torch.no_grad():
            outputs = model.eval()(x[:1]).flatten(1).shape[-1]
        rows = jacobian_rows(model, x, n_weights, batch_size)
    finally:
        model.train(training)
    return rows * outputs * n_weights * next(model.parameters()).element_size()


class LaplacePredictive(ParameterPosterior):
    """Per-sample predictives from a fitted laplace-torch posterior.

    glm + probit (classification): one closed-form predictive, S = 1. glm + mc and nn: S samples of the
    network outputs (of the linearised network for glm), which the evaluator mixes. glm regression: the exact
    Gaussian N(f_μ, f_var + σ²), S = 1.
    """

    def __init__(self, laplace: Any, model: nn.Module, indices: Tensor | None, likelihood: Likelihood,
                 pred_type: str, link_approx: str, view: RegressionView | None = None) -> None:
        self.laplace, self.model, self.indices, self.likelihood = laplace, model, indices, likelihood
        self.pred_type, self.link_approx, self.view = pred_type, link_approx, view
        self.regression = isinstance(likelihood, Gaussian)

    def parameter_moments(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Posterior mean and marginal variance per model parameter; weights outside the posterior (last
        layer, subnetwork) are point masses at MAP."""
        named = list((self.model if self.view is None else self.view.network).named_parameters())
        mean = torch.cat([value.detach().reshape(-1) for _, value in named])
        variance = torch.zeros_like(mean)
        where = slice(None) if self.indices is None else self.indices
        posterior_mean = self.laplace.mean.detach().reshape(-1).to(mean)
        if posterior_mean.numel() == mean.numel():  # SubnetLaplace's mean is every parameter, its variance is not
            mean = posterior_mean.clone()
        else:
            mean[where] = posterior_mean
        variance[where] = marginal_variance(self.laplace).detach().to(mean.dtype)
        sizes = [value.numel() for _, value in named]

        def unflatten(flat: Tensor) -> dict[str, Tensor]:
            return {name: part.view(value.shape) for (name, value), part in zip(named, flat.split(sizes), strict=True)}

        return unflatten(mean), unflatten(variance)

    def predict(self, x: Tensor, n_samples: int) -> Tensor:
        with math_attention():
            if self.pred_type == "glm" and len(x) > (rows := jacobian_rows(self.model, x)):
                return torch.cat([self._predict(part, n_samples) for part in x.split(rows)], dim=1)
            return self._predict(x, n_samples)

    def _predict(self, x: Tensor, n_samples: int) -> Tensor:
        self.laplace.model.eval()
        learned_scale = self.view is not None and self.view.learned_scale
        if self.pred_type == "glm" and self.regression and not learned_scale:
            with torch.no_grad():
                mean, variance = self.laplace(x, pred_type="glm")
            variance = variance.diagonal(dim1=-2, dim2=-1) if variance.dim() == 3 else variance
            std = (variance.reshape(len(x), -1) + self.laplace.sigma_noise.item() ** 2).sqrt()
            moments = torch.stack([mean.reshape(len(x), -1), std.log()], dim=-1)
            return (moments if self.view is not None else moments.squeeze(-2)).unsqueeze(0)
        if self.pred_type == "glm" and self.link_approx == "probit" and not self.regression:
            with torch.no_grad():
                probabilities = self.laplace(x, pred_type="glm", link_approx="probit")
            return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log().unsqueeze(0)
        if self.pred_type == "glm":
            outputs = self._glm_samples(x, max(n_samples, 1))
        else:
            outputs = self.laplace.functional_samples(x, pred_type=self.pred_type,
                                                      n_samples=max(n_samples, 1)).detach()
        if self.view is not None:
            outputs = self.view.network_outputs(outputs, x, linearised=self.pred_type == "glm")
        return self.likelihood.log_predictive(outputs)


    _seen: list[tuple[Tensor, Any]] | None = None  # (inputs, what `reused` computed from them), while reusing

    @contextmanager
    def reusing_features(self):
        """A context in which the same inputs are predicted again at other prior precisions (validation tuning):
        what a predictive computes from the inputs and the MAP alone (a head's features, a subnetwork's Jacobians)
        does not change with the prior precision, so `reused` computes it once per batch (inputs compared whole, so
        a batch that differs is computed again)."""
        self._seen = []
        try:
            yield
        finally:
            self._seen = None

    def reused(self, x: Tensor, compute):
        """`compute(x)`, or what it gave for the same inputs earlier inside `reusing_features`."""
        for inputs, value in self._seen or ():
            if inputs.shape == x.shape and inputs.device == x.device and torch.equal(inputs, x):
                return value
        value = compute(x)
        if self._seen is not None:
            self._seen.append((x.clone(), value))
        return value

    def glm_predictive(self, outputs: Tensor, covariance: Tensor, n_samples: int) -> Tensor:
        """The GLM predictive from the linearised outputs' Gaussian N(outputs, covariance) (B, C), (B, C, C), as
        laplace-torch forms it: fixed-noise regression N(f, var + σ²), probit softmax(f / sqrt(1 + π/8 var)), or
        samples of the logits for the evaluator to mix."""
        if self.regression:
            std = (covariance.diagonal(dim1=-2, dim2=-1) + self.laplace.sigma_noise.item() ** 2).sqrt()
            return torch.stack([outputs, std.log()], dim=-1).squeeze(-2).unsqueeze(0)
        if self.link_approx == "probit":
            kappa = 1 / torch.sqrt(1 + math.pi / 8 * covariance.diagonal(dim1=-2, dim2=-1))
            return torch.log_softmax(kappa * outputs, dim=-1).unsqueeze(0)
        return self.likelihood.log_predictive(gaussian_samples(outputs, covariance, max(n_samples, 1)))

    def _glm_samples(self, x: Tensor, n_samples: int) -> Tensor:
        """Samples (S, B, K) of the linearised outputs N(f_μ, J Σ Jᵀ) (`gaussian_samples`: laplace-torch's own
        sampler takes a Cholesky factor, see there)."""
        with torch.no_grad():
            # the logits' Gaussian before any link (what laplace-torch's `__call__` builds on; pinned 0.3)
            mean, covariance = self.laplace._glm_predictive_distribution(x)
            return gaussian_samples(mean, covariance, n_samples)


def gaussian_samples(mean: Tensor, covariance: Tensor, n_samples: int) -> Tensor:
    """Samples (S, B, K) of N(mean, covariance) per row, through the symmetric square root from the
    eigendecomposition, rounding-negative eigenvalues set to 0. laplace-torch's own sampler takes a Cholesky factor
    of each (K, K) output covariance, which fails when some outputs do not depend on the posterior's weights (a
    subnetwork: measured on ts-taylor-dlinear, every seed, and on digits-mlp with the 300 largest-variance weights,
    where class 0's logit has none: every trial of that setting failed in `bnnbench tune`)."""
    values, vectors = torch.linalg.eigh(covariance)
    root = vectors * values.clamp_min(0).sqrt().unsqueeze(-2)
    noise = torch.randn(n_samples, *mean.shape, dtype=mean.dtype, device=mean.device)
    return mean + torch.einsum("bij,sbj->sbi", root, noise)


def marginal_variance(laplace: Any) -> Tensor:
    """The diagonal of the posterior covariance, whatever laplace-torch's Hessian structure."""
    if hasattr(laplace, "posterior_variance"):  # diag
        return laplace.posterior_variance
    if hasattr(laplace, "posterior_covariance"):  # full
        return laplace.posterior_covariance.diagonal()
    return laplace.posterior_precision.diag(exponent=-1)  # kron: from its Kronecker eigendecomposition


def parameter_indices(model: nn.Module, prefix: str) -> Tensor:
    """Positions in the flattened parameter vector of the parameters under module `prefix` ("" = all)."""
    positions, offset = [], 0
    for name, value in model.named_parameters():
        if not prefix or name.startswith(prefix + "."):
            positions.append(torch.arange(offset, offset + value.numel()))
        offset += value.numel()
    return torch.cat(positions)


def tunes_on_validation(hparams: LaplaceHparams) -> bool:
    """The Laplace methods' `needs_validation` trait: prior tuning by validation NLL reads the validation split."""
    return hparams.tune == "val"


def train_map_phase(model: nn.Module, likelihood: Likelihood, data: DataBundle, hparams: TrainConfig, budget: Budget,
                    context: FitContext, method: str, fixed_prior_precision: float | None) -> LoopResult:
    """The MAP a Laplace approximation is centred on: the mode of N(0, 1/fixed_prior_precision) when the prior
    is fixed, else the task's AdamW weight decay (the prior precision is tuned afterwards)."""
    if fixed_prior_precision is None:
        loop = train_map(model, likelihood, data, hparams, budget, context, description=f"{method} map",
                         reusable=True)
    else:
        config = loop_config(hparams, weight_decay=0.0)
        loop = train_map(model, likelihood, data, config, budget, context, description=f"{method} map",
                         log_prior=gaussian_log_prior(fixed_prior_precision), reusable=True)
    # laplace-torch flattens parameters with .view(-1), which channels_last convolution weights (a training
    # speed-up) do not allow; the posterior is post-hoc, so the weights go back to the standard layout
    model.to(memory_format=torch.contiguous_format).eval()
    return loop


def fit_laplace(task: TaskSpec, model: nn.Module, data: DataBundle, budget: Budget, context: FitContext,
                hparams: LaplaceHparams, *, method: str, make_laplace, extra: dict[str, Any] | None = None,
                predictive: type[LaplacePredictive] | None = None, jacobian_weights=None,
                ) -> tuple[LaplacePredictive, FitInfo]:
    """Train MAP, build the posterior with `make_laplace(model, likelihood_name, noise_std, prior_precision,
    train) -> (laplace, indices)` (which checks memory and may select a subnetwork; `indices` are the covered
    positions in the flattened parameter vector, None for all), fit it on the training data, tune the prior
    precision, and return the predictive (`predictive`, by default `LaplacePredictive`). `jacobian_weights(network,
    indices)`: how many weights one image's Jacobian spans when the curvature is computed over the posterior's
    weights only (a head's from its features, a subnetwork's); it is then fitted in training batches bounded by
    JACOBIAN_BYTES, not in GLM_ROWS-row calls sized for a Jacobian over every weight."""
    likelihood = get_likelihood(task.likelihood, task.likelihood_options)
    laplace_likelihood, noise_std = _laplace_likelihood(likelihood)
    regression = laplace_likelihood == "regression"
    loop = train_map_phase(model, likelihood, data, hparams, budget, context, method,
                           hparams.prior_precision if hparams.tune == "none" else None)
    start = time.perf_counter()
    device = context.device
    train = Split(data.train.x.to(device), data.train.y.to(device))
    view = RegressionView(model, likelihood) if RegressionView.needed(model, likelihood, train.x) else None
    network = model if view is None else view
    with math_attention(), quiet_jit_deprecation():  # curvlinops' curvature runs torch.func.jvp
        laplace, indices = make_laplace(network, laplace_likelihood, noise_std, hparams.prior_precision, train)
        rows = (jacobian_rows(network, train.x) if jacobian_weights is None
                else jacobian_rows(network, train.x, jacobian_weights(network, indices), hparams.batch_size))
        laplace.fit(data_loader(train, rows, regression, view))
        fit_seconds = time.perf_counter() - start
        predictive = (predictive or LaplacePredictive)(laplace, network, indices, likelihood, hparams.pred_type,
                                                       hparams.link_approx, view)
        tuning = {}
        if hparams.tune == "val":
            tuning = tune_on_validation(laplace, predictive, likelihood, data.val, hparams.grid_size,
                                        budget.n_eval_samples, int(task.eval.get("batch_size", 1024)), device,
                                        context.seed)
        elif hparams.tune == "marglik":
            laplace.optimize_prior_precision(method="marglik", pred_type=hparams.pred_type,
                                             link_approx=hparams.link_approx, n_steps=100, lr=0.1,
                                             prior_structure="scalar", init_prior_prec=hparams.prior_precision)
        prior_precision = laplace.prior_precision.detach().reshape(-1)
    info = FitInfo(steps=loop.steps, epochs=loop.epochs, seconds=loop.seconds + time.perf_counter() - start,
                   extra={"map_seconds": loop.seconds, "laplace_fit_seconds": fit_seconds,
                          "laplace_seconds": time.perf_counter() - start,
                          "prior_precision": prior_precision.mean().item(),
                          "n_posterior_params": int(laplace.n_params if indices is None else len(indices)),
                          **tuning, **(extra or {})})
    return predictive, info


def tune_on_validation(laplace: Any, predictive: LaplacePredictive, likelihood: Likelihood, val: Split,
                       grid_size: int, n_samples: int, batch_size: int, device: torch.device,
                       seed: int) -> dict[str, Any]:
    """Set the scalar prior precision to the grid point with the lowest validation NLL of `predictive`, the
    predictive the evaluator will score, each α scored on its own by the evaluator's NLL.

    Not laplace-torch's `optimize_prior_precision(method="gridsearch")`: its default metric is never reset between
    grid points, so α_k is scored by the mean over α_1..α_k and the search drifts to the top of the grid; for fixed-
    noise regression its default is the MSE of the GLM mean, which no α changes. Scored per α, laplace-ll (seed 0,
    default budgets, measured 2026-12-07) chose α = 100 on digits-overconfident (validation NLL 0.276 against 0.379
    at the top; test NLL 0.310 against MAP's 0.460), and on digits-mlp the curve falls all the way to the top (α =
    5.6e7, a bound warning): there MAP is calibrated and the posterior collapses onto it. Monte Carlo predictives
    draw the same random numbers at every α (common random numbers), so the curve compares α, not draws. An α whose
    posterior cannot be factorised scores inf. Returns the run.json record: the grid, its NLL curve, and a warning
    when the minimum is on a bound."""
    grid = torch.logspace(VAL_GRID_LOG10[0], VAL_GRID_LOG10[1], grid_size, dtype=torch.float64)
    val = Split(val.x.to(device), val.y.to(device), val.windows)
    curve = []
    with predictive.reusing_features():
        for alpha in grid.tolist():
            curve.append(_validation_nll(laplace, predictive, likelihood, val, alpha, n_samples, batch_size, device,
                                         seed))
    best = min(range(grid_size), key=lambda index: curve[index])
    if not math.isfinite(curve[best]):
        raise UsageError("tune=val: the validation NLL is not finite at any prior precision of the grid")
    laplace.prior_precision = grid[best].item()
    record: dict[str, Any] = {"prior_precision_grid": grid.tolist(), "val_nll_grid": curve}
    # a minimum on a bound, or one that the curve only ties there (a flat tail), means the grid held α back
    bounds = [name for name, index in (("lower", 0), ("upper", grid_size - 1))
              if curve[index] - curve[best] <= FLAT_NLL * abs(curve[best])]
    if bounds:
        low, high = VAL_GRID_LOG10
        record["warnings"] = [f"tune=val: the validation NLL is lowest at the {bounds[0]} bound of the prior "
                              f"precision grid [1e{low:g}, 1e{high:g}] (chose {grid[best].item():.3g}, "
                              f"NLL {curve[best]:.4f})"]
    return record


def _validation_nll(laplace: Any, predictive: LaplacePredictive, likelihood: Likelihood, val: Split, alpha: float,
                    n_samples: int, batch_size: int, device: torch.device, seed: int) -> float:
    """The validation NLL of `predictive` at prior precision α, with the same random numbers at every α; inf where
    the posterior cannot be factorised."""
    from bnnbench.evaluate import score_split

    laplace.prior_precision = alpha
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        try:
            value = score_split(predictive, likelihood, val, "nll", n_samples, batch_size, device)
        except RuntimeError as error:  # LinAlgError is one; laplace-torch's own Cholesky checks raise the other
            if not isinstance(error, torch.linalg.LinAlgError) and "positive definite" not in str(error):
                raise
            value = math.inf
    return value if math.isfinite(value) else math.inf
