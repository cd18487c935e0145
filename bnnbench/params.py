"""A functional view of a model's weights: its parameters as one flat vector and back, for methods that
keep posterior samples or moments as vectors (SWAG, sampled Laplace), and K weight settings of one
architecture run together by a vmapped `torch.func.functional_call` (ensembles, SWAG samples)."""

from __future__ import annotations

import copy
import os

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from bnnbench.errors import UsageError

__all__ = ["SAMPLE_PASSES", "FlatParams", "StackedWeights", "batched_passes", "batchnorm_parameter_names",
           "math_attention"]


def math_attention():
    """Attention through PyTorch's math kernel: the fused CPU kernels have no forward-mode derivative and no
    vmap rule (vmap then loops over the batched dimension), which per-example Jacobians, jvps and
    vmapped ensembles need."""
    return sdpa_kernel([SDPBackend.MATH])


class FlatParams:
    """The layout of `model.named_parameters()` (or of a dict of named tensors) in one flat vector, in that order."""

    def __init__(self, model: nn.Module | dict[str, Tensor]) -> None:
        named = list(model.items() if isinstance(model, dict) else model.named_parameters())
        self.names = [name for name, _ in named]
        self.shapes = [value.shape for _, value in named]

    @property
    def size(self) -> int:
        return sum(shape.numel() for shape in self.shapes)

    def flatten(self, params: dict[str, Tensor]) -> Tensor:
        """The named tensors (a model's parameters, or moments keyed like them) as one detached vector."""
        return torch.cat([params[name].detach().reshape(-1) for name in self.names])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Views of `flat` keyed and shaped like the model's parameters."""
        parts = flat.split([shape.numel() for shape in self.shapes])
        return {name: part.view(shape) for name, part, shape in zip(self.names, parts, self.shapes, strict=True)}


def batchnorm_parameter_names(model: nn.Module) -> set[str]:
    """Names of the affine parameters of `model`'s BatchNorm layers."""
    return {f"{prefix}.{name}" if prefix else name
            for prefix, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
            for name, _ in module.named_parameters(recurse=False)}


SAMPLE_PASSES = ("auto", "batched", "loop")


def batched_passes(device: torch.device) -> bool:
    """Whether K weight settings predict in one vmapped pass (True) or a loop of K passes; the two agree to
    1e-5 (tests/test_batched_samples.py), so this is a matter of speed only. Measured on a CPU (issue 23, eight
    samples, one thread): the loop is as fast for the digits MLP and faster for the digits CNN (2x: batched
    weights make convolutions grouped ones) and the ViTs (1.5x on digits-vit, 1.2x on cifar10-vit: vmap needs
    the math attention kernel), so "auto" loops on the CPU and batches on CUDA, where batching saves kernel
    launches. BNNBENCH_SAMPLE_PASSES=batched|loop overrides it; the GPU check measures both."""
    choice = os.environ.get("BNNBENCH_SAMPLE_PASSES", "auto")
    if choice not in SAMPLE_PASSES:
        raise UsageError(f"unknown BNNBENCH_SAMPLE_PASSES '{choice}'; valid choices: {', '.join(SAMPLE_PASSES)}")
    return choice == "batched" or (choice == "auto" and device.type == "cuda")


class StackedWeights:
    """K weight settings of one architecture: parameters and buffers stacked along a leading K axis, run in
    one vmapped `functional_call` (a step or a prediction costs one pass of K-times-wider tensors)."""

    def __init__(self, model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor]) -> None:
        self.base = copy.deepcopy(model).to("meta")  # the architecture only; the weights come from the stack
        self.params, self.buffers = params, buffers
        self.vectorised = True  # False after `vmap_blocker` found a reason: outputs_shared then loops over K

    @classmethod
    def from_models(cls, models: list[nn.Module]) -> StackedWeights:
        """Stacked copies of the models' weights, as new leaf tensors that require grad."""
        params, buffers = stack_module_state(models)
        return cls(models[0], params, buffers)

    def __len__(self) -> int:
        return len(next(iter(self.params.values())))

    def call(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        """One weight setting's outputs (the function vmap maps)."""
        return functional_call(self.base, (params, buffers), (x,))

    def outputs_shared(self, x: Tensor) -> Tensor:
        """(K, B, ...) outputs of each weight setting on the same rows x: one vmapped pass where vmap runs the
        network and `batched_passes` says it pays on x's device, else a loop of K passes."""
        return self.outputs_batched(x) if self.vectorised and batched_passes(x.device) else self.outputs_looped(x)

    def outputs_batched(self, x: Tensor) -> Tensor:
        with math_attention():
            return vmap(self.call, in_dims=(0, 0, None), randomness="different")(self.params, self.buffers, x)

    def outputs_looped(self, x: Tensor) -> Tensor:
        return torch.stack([self.call({name: value[k] for name, value in self.params.items()},
                                      {name: value[k] for name, value in self.buffers.items()}, x)
                            for k in range(len(self))])

    def vmap_blocker(self, x: Tensor, training: bool) -> str:
        """Why these weights cannot run under vmap ("" when they can), for training (a backward pass, and
        BatchNorm's in-place statistics) or prediction: known obstacles first, then whatever a vmapped pass on
        `x` raises. A blocker turns `outputs_shared` into a loop."""
        reason = ""
        if training and any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in self.base.modules()):
            reason = "BatchNorm updates running statistics in place"
        else:
            try:
                with torch.set_grad_enabled(training):
                    outputs = self.outputs_batched(x)
                    if training:
                        outputs.float().square().sum().backward()
            except (RuntimeError, NotImplementedError, TypeError) as error:
                reason = f"vmap failed: {type(error).__name__}: {str(error).splitlines()[0]}"
            finally:
                for value in self.params.values():
                    value.grad = None
        self.vectorised = not reason
        return reason
