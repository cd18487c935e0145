"""`rank1`: rank-1 BNNs (Dusenberry et al. 2020), spec in ../shared/methods/others.md §2.

Every `nn.Linear` and `nn.Conv{1,2,3}d` of the model (timm's ViT included: patch embedding, qkv, proj,
MLP, head) gets, per mixture component k = 1..K, an input-side factor s_k, an output-side factor r_k and a
bias b_k:  y = ((x ∘ s_k) W) ∘ r_k + b_k,  i.e. the weight W ∘ (r_k s_kᵀ). W stays a point estimate
(with the task's weight decay); s and r get the variational posterior q = (1/K) Σ_k q_k(r) q_k(s), fully
factorised Gaussians (or Cauchys) around means initialised at random signs, under the prior N(1, σ_p²)
(or Cauchy(1, σ_p)). Fresh r, s are drawn per example and per component on every forward pass.

The wrapping is generic and leaves the model's modules in place: a forward pre-hook on the model draws
every layer's factors for the batch at once (one gather and one random draw for all layers), and hooks
on each layer scale its input by s and its output by r and add b_k (the layer's own bias moves into b_k).
Row i of a batch of B rows belongs to component ⌊iK/B⌋: contiguous blocks.

Training (the shared loop): the batch is split across the K components (`batch_split = "split"`, what the
issue asks; each example trains one component per epoch, so an epoch costs what MAP's does) or tiled K
times (`"tile"`, the authors' default: every component sees every example, K times the rows). The loss is

    mean over rows of −log p(y | x, W, r, s)  +  β_t · KL / N,   β_t = min(1, t / (kl_anneal_fraction · T)),

KL summed over components (`kl_reduction = "sum"`, the authors' code) or averaged ("mean", the tighter
bound of the mixture's KL); closed form for Gaussians, a one-sample estimate at the drawn factors for
Cauchys. Prediction: the test batch is tiled so that each component gets ⌈S/K⌉ samples; the evaluator
mixes all of them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnbench.errors import UsageError
from bnnbench.likelihoods import get_likelihood
from bnnbench.methods.map import LR, map_objective
from bnnbench.methods.stochastic import StochasticForwardPredictive
from bnnbench.train import TrainConfig, evaluating, planned_batches, train_loop
from bnnbench.types import Budget, DataBundle, Dimension, FitContext, FitInfo, MethodSpec, TaskSpec

__all__ = ["SPEC", "Hparams", "Rank1Factors", "fit", "gaussian_kl"]

DISTRIBUTIONS = ("gaussian", "cauchy")
KL_REDUCTIONS = ("sum", "mean")
BATCH_SPLITS = ("split", "tile")
WRAPPED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Drawn factors are clipped to [-10, 10] as in the authors' layers, but with a straight-through gradient
# (theirs is zero for a clipped draw): it halves the clip's cost, and a Gaussian draw essentially never clips.
CLIP = 10.0


@dataclass(frozen=True)
class Hparams(TrainConfig):
    """The shared training settings (W and b_k take the weight decay), plus the rank-1 posterior's.

    prior_std: σ_p of the prior N(1, σ_p²) (or Cauchy scale) on every entry of r and s.
    random_sign_init: probability that a factor's posterior mean starts at +1 rather than −1; a negative
        value v starts the means at N(1, |v|) instead.
    init_dropout_rate: p of the "dropout-like" initial posterior std √(p / (1 − p)).
    factor_lr_scale: learning-rate multiplier for the posterior parameters of r and s.
    """

    n_components: int = 4
    distribution: str = "gaussian"
    prior_std: float = 0.1
    random_sign_init: float = 0.5
    init_dropout_rate: float = 1e-3
    kl_reduction: str = "sum"
    kl_anneal_fraction: float = 0.8
    batch_split: str = "split"
    factor_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, value, valid in (("distribution", self.distribution, DISTRIBUTIONS),
                                   ("kl_reduction", self.kl_reduction, KL_REDUCTIONS),
                                   ("batch_split", self.batch_split, BATCH_SPLITS)):
            if value not in valid:
                raise UsageError(f"unknown {name} '{value}'; valid choices: {', '.join(valid)}")
        if self.n_components < 1 or self.prior_std <= 0 or not 0 < self.init_dropout_rate < 1:
            raise UsageError("rank1 needs n_components >= 1, prior_std > 0 and init_dropout_rate in (0, 1)")
        if self.random_sign_init > 1 or not 0 < self.kl_anneal_fraction <= 1 or self.factor_lr_scale <= 0:
            raise UsageError("rank1 needs random_sign_init <= 1, kl_anneal_fraction in (0, 1] and "
                             "factor_lr_scale > 0")


def gaussian_kl(loc: Tensor, scale: Tensor, prior_loc: float, prior_scale: float) -> Tensor:
    """Elementwise KL(N(loc, scale²) ‖ N(prior_loc, prior_scale²))."""
    return (math.log(prior_scale) - torch.log(scale)
            + (scale**2 + (loc - prior_loc) ** 2) / (2 * prior_scale**2) - 0.5)


def _cauchy_log_density(x: Tensor, loc: Tensor | float, scale: Tensor | float) -> Tensor:
    return -math.log(math.pi) - torch.log(torch.as_tensor(scale)) - torch.log1p(((x - loc) / scale) ** 2)


@dataclass(frozen=True)
class _Layer:
    name: str
    kind: str  # "linear" or "conv"
    bias: int | None  # index of its part of the flat bias vector (None: the layer has no bias)


class Rank1Factors(nn.Module):
    """The rank-1 factors of every wrapped layer of one model, in flat (K, D) tensors, and the hooks that
    apply them. `sample = False` uses the posterior means (deterministic; for tests)."""

    def __init__(self, model: nn.Module, n_components: int, distribution: str, prior_std: float,
                 random_sign_init: float, init_dropout_rate: float, generator: torch.Generator) -> None:
        super().__init__()
        self.n_components, self.distribution, self.prior_std = n_components, distribution, prior_std
        self.sample = True
        self.layers: list[_Layer] = []
        self.factor_sizes: list[int] = []  # s then r for each layer, in the flat factor vector
        self.bias_sizes: list[int] = []
        biases = []
        for name, module in model.named_modules():
            if not isinstance(module, WRAPPED):
                continue
            if isinstance(module, nn.Linear):
                kind, d_in, d_out = "linear", module.in_features, module.out_features
            else:
                kind, d_in, d_out = "conv", module.in_channels, module.out_channels
            self.factor_sizes += [d_in, d_out]
            bias = None
            if module.bias is not None:
                bias = len(self.bias_sizes)
                self.bias_sizes.append(d_out)
                biases.append(module.bias.detach().clone())
                module.bias = None  # b_k takes the layer's bias; W alone stays in the layer
            self.layers.append(_Layer(name, kind, bias))
        factor_size = sum(self.factor_sizes)
        if not self.layers:
            raise UsageError(f"rank1: {type(model).__name__} has no nn.Linear or nn.ConvNd layer to wrap")
        device = next(model.parameters()).device
        shape = (n_components, factor_size)
        if random_sign_init >= 0:
            signs = torch.rand(shape, generator=generator) < random_sign_init
            loc = torch.where(signs, 1.0, -1.0)
        else:
            loc = 1.0 + abs(random_sign_init) * torch.randn(shape, generator=generator)
        init_std = math.sqrt(init_dropout_rate / (1 - init_dropout_rate))
        rho = torch.full(shape, math.log(math.expm1(init_std)))  # softplus⁻¹(σ₀)
        if distribution == "gaussian":  # TruncatedNormal(softplus⁻¹(σ₀), 0.1), truncated at two std
            rho += 0.1 * torch.fmod(torch.randn(shape, generator=generator), 2.0)
        self.loc = nn.Parameter(loc.to(device))
        self.rho = nn.Parameter(rho.to(device))
        bias = torch.cat(biases) if biases else torch.zeros(0)
        self.bias = nn.Parameter(bias.to(device).expand(n_components, -1).clone())
        self._factors: Tensor | None = None  # this forward pass's draw, (rows, D), and its per-layer parts
        self._parts: tuple[Tensor, ...] = ()
        self._biases: tuple[Tensor, ...] = ()
        self.handles = [model.register_forward_pre_hook(self._draw_factors)]
        for index, layer in enumerate(self.layers):
            module = model.get_submodule(layer.name)
            self.handles.append(module.register_forward_pre_hook(functools.partial(self._scale_input, index)))
            self.handles.append(module.register_forward_hook(functools.partial(self._scale_output, index)))

    def scale(self) -> Tensor:
        return F.softplus(self.rho)

    def _per_row(self, values: Tensor, rows: int) -> Tensor:
        """(K, D) per-component values as (rows, D) per-row ones: row i belongs to component ⌊iK/rows⌋."""
        k = self.n_components
        if rows % k == 0:  # expand-and-copy: its backward is a sum, not a scatter
            return values.unsqueeze(1).expand(k, rows // k, values.shape[1]).reshape(rows, values.shape[1])
        return values[torch.arange(rows, device=values.device) * k // rows]

    def _draw_factors(self, module: nn.Module, args: tuple) -> None:
        rows = len(args[0])
        loc = self._per_row(self.loc, rows)
        if self.sample:
            if self.distribution == "gaussian":
                noise = torch.randn_like(loc)
            else:
                noise = torch.tan(math.pi * (torch.rand_like(loc) - 0.5))
            factors = torch.addcmul(loc, self._per_row(self.scale(), rows), noise)
            with torch.no_grad():  # clip the values only; see CLIP
                factors.clamp_(-CLIP, CLIP)
        else:
            factors = loc
        self._factors = factors
        self._parts = factors.split(self.factor_sizes, dim=1)  # one view per s and r: their backward is one cat
        self._biases = self._per_row(self.bias, rows).split(self.bias_sizes, dim=1)

    @staticmethod
    def _rows(values: Tensor, x: Tensor) -> Tensor:
        """Per-example values for a layer input whose leading dimension may fold extra axes into the batch
        (batch-major, as torch's reshape does)."""
        rows, batch = len(x), len(values)
        if rows == batch:
            return values
        if rows % batch:
            raise UsageError(f"rank1: a layer input has {rows} rows for a batch of {batch}; its leading axis "
                             "must be the batch (or fold other axes into it batch-major)")
        return values.repeat_interleave(rows // batch, dim=0)

    @staticmethod
    def _broadcast(values: Tensor, x: Tensor, kind: str) -> Tensor:
        values = Rank1Factors._rows(values, x).to(x.dtype)
        if kind == "linear":  # features last; any axes between batch and features (tokens) broadcast
            return values.view(len(values), *([1] * (x.dim() - 2)), -1) if x.dim() > 2 else values
        return values.view(len(values), -1, *([1] * (x.dim() - 2)))  # channels second

    def _scale_input(self, index: int, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        return (x * self._broadcast(self._parts[2 * index], x, self.layers[index].kind), *args[1:])

    def _scale_output(self, index: int, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        layer = self.layers[index]
        output = output * self._broadcast(self._parts[2 * index + 1], output, layer.kind)
        if layer.bias is not None:
            output = output + self._broadcast(self._biases[layer.bias], output, layer.kind)
        return output

    def kl(self, reduction: str) -> Tensor:
        """KL(q_k ‖ p) summed over every factor entry, summed or averaged over the components. For Cauchys a
        one-sample estimate at the factors drawn in the last forward pass (averaged over its rows per component)."""
        if self.distribution == "gaussian":
            per_component = gaussian_kl(self.loc, self.scale(), 1.0, self.prior_std).sum(dim=1)
        else:
            factors, rows = self._factors, len(self._factors)
            components = torch.arange(rows, device=factors.device) * self.n_components // rows
            log_ratio = (_cauchy_log_density(factors, self.loc[components], self.scale()[components])
                         - _cauchy_log_density(factors, 1.0, self.prior_std)).sum(dim=1)
            counts = torch.bincount(components, minlength=self.n_components).clamp_min(1)
            per_component = torch.zeros(self.n_components, device=factors.device).index_add(
                0, components, log_ratio) / counts
        return per_component.sum() if reduction == "sum" else per_component.mean()

    def remove(self) -> None:
        """Take the hooks off (the layers keep bias None: b_k lives here)."""
        for handle in self.handles:
            handle.remove()


def fit(task: TaskSpec, model: nn.Module, data: DataBundle, budget: Budget, context: FitContext,
        hparams: Hparams = Hparams()) -> tuple[StochasticForwardPredictive, FitInfo]:
    """Wrap the model's layers with rank-1 factors and train W, b_k and q(r, s) jointly from the model's init."""
    likelihood = get_likelihood(task.likelihood, task.likelihood_options)
    model.to(context.device).train()
    n_model_params = sum(p.numel() for p in model.parameters())
    factors = Rank1Factors(model, hparams.n_components, hparams.distribution, hparams.prior_std,
                           hparams.random_sign_init, hparams.init_dropout_rate,
                           torch.Generator().manual_seed(context.seed))
    n_data, k = len(data.train), hparams.n_components
    # a [posterior] table's Gaussian prior goes on the shared weights W and biases b_k; r and s keep their own
    objective = map_objective(task, hparams)
    log_prior, temperature = objective.get("log_prior"), objective.get("temperature", 1.0)
    shared = {**dict(model.named_parameters()), "rank1_bias": factors.bias}
    anneal_steps = max(1.0, hparams.kl_anneal_fraction * planned_batches(n_data, hparams.batch_size, budget))
    step = 0

    def loss_fn(x: Tensor, y: Tensor) -> Tensor:
        nonlocal step
        if hparams.batch_split == "tile":
            x, y = x.repeat(k, *([1] * (x.dim() - 1))), y.repeat(k, *([1] * (y.dim() - 1)))
        step += 1
        beta = min(1.0, step / anneal_steps)
        nll = -likelihood.log_likelihood(model(x), y).mean() / temperature
        loss = nll + beta * factors.kl(hparams.kl_reduction) / n_data
        return loss if log_prior is None else loss - log_prior(shared) / n_data

    groups = [{"params": [*model.parameters(), factors.bias]},
              {"params": [factors.loc, factors.rho], "weight_decay": 0.0,
               "lr": hparams.lr * hparams.factor_lr_scale}]
    def components(x: Tensor) -> Tensor:  # one pass of the K components, as evaluated, for a trial's monitor
        with evaluating(model):
            return StochasticForwardPredictive(model, likelihood, lambda n: k, group=k).predict(x, k)

    loop = train_loop(groups, loss_fn, data.train, objective["config"], budget, context, description=f"rank1 K={k}",
                      predictive=components)
    model.eval()
    n_rank1 = factors.loc.numel() + factors.rho.numel() + factors.bias.numel()
    predictive = StochasticForwardPredictive(model, likelihood, lambda n: k * math.ceil(n / k), group=k)
    extra = {"epoch_losses": loop.epoch_losses, "n_wrapped_layers": len(factors.layers),
             "n_rank1_params": n_rank1, "rank1_param_fraction": n_rank1 / n_model_params,
             "final_kl": float(factors.kl(hparams.kl_reduction).detach()) if hparams.distribution == "gaussian"
             else None}
    return predictive, FitInfo(steps=loop.steps, epochs=loop.epochs, seconds=loop.seconds, extra=extra)


SPEC = MethodSpec("rank1", Hparams, fit,
                  search_space=(LR, Dimension("prior_std", "log-uniform", 0.01, 1.0),
                                Dimension("factor_lr_scale", "log-uniform", 1.0, 100.0)))
