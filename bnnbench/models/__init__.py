"""Model factories, timm-style: `factory(input_shape, num_classes, **options) -> nn.Module` (untrained).
`num_classes` keeps timm's name but means the output width: classes, or the target width for regression.

Factories are named "module:function" so that naming a model imports torch only when one is built.
Each factory records the name of its output layer (an `nn.Linear`) in `model.bnnbench_last_layer`, for the
methods that treat the last layer apart (last-layer Laplace); `last_layer_name` reads and checks it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from bnnbench.errors import UsageError, error_line, unknown_choice
from bnnbench.registry import Registry
from bnnbench.schema import check_types

__all__ = ["MAX_PARAMETER_BYTES", "MODELS", "check_buildable", "check_model_config", "check_pretrained_weights",
           "create_model", "last_layer_name", "model_options"]

MODELS: Registry[Callable[..., Any]] = Registry("model")  # name -> "module:factory", imported on use
MODELS.register("linear", "bnnbench.models.small:linear")
MODELS.register("mlp", "bnnbench.models.small:mlp")
MODELS.register("cnn", "bnnbench.models.small:cnn")
MODELS.register("vit", "bnnbench.models.vit:vit")
MODELS.register("resnet", "bnnbench.models.resnet:resnet")
MODELS.register("forecast-mlp", "bnnbench.models.forecast:forecast_mlp")
MODELS.register("dlinear", "bnnbench.models.forecast:dlinear")
MODELS.register("patchtst", "bnnbench.models.forecast:patchtst")
MODELS.register("koopa", "bnnbench.models.koopa:koopa")

# The most memory a network's float32 parameters may take: 4 GiB, 2**30 parameters. The shipped tasks' networks have at
# most 11.2 M (ResNet-18), and ViT-L/16, about the largest one would fine-tune as a BNN, 304 M. Training holds at
# least four copies (weights, gradients, AdamW's two moments: 16 GiB at this bound) and ensembles, SWAG and Laplace
# more, past one accelerator's memory; a network beyond this is a typo (a width of 10**9), refused before any work
# rather than failing, or filling the memory, mid-run.
MAX_PARAMETER_BYTES = 4 * 2**30
_FLOAT32_BYTES = 4
# What factories raise on options they cannot build from: their own checks (ValueError), torch's (RuntimeError: a
# negative width; IndexError: an empty list of widths), timm's (AssertionError: heads that do not divide the width;
# RuntimeError: an unknown architecture) and a wrong input rank (TypeError, ValueError when unpacking the shape).
_BUILD_ERRORS = (TypeError, ValueError, RuntimeError, AssertionError, IndexError)


def _factory(name: str, where: str) -> Callable[..., Any]:
    return MODELS.get(name, where)


def model_options(name: str, where: str = "task") -> list[str]:
    """The options a model factory takes (its keyword arguments besides the shapes)."""
    factory = _factory(name, where)
    return [p for p in inspect.signature(factory).parameters if p not in ("input_shape", "num_classes")]


def check_model_config(model: dict[str, Any], where: str) -> None:
    """Raise UsageError if a [model] table (or `--set model.KEY` values, with the model's name) names an unknown
    model or option, or gives an option a value its factory's annotation refuses (`bnnbench.schema`)."""
    factory = _factory(model["name"], where)
    options = model_options(model["name"], where)
    for key in model:
        if key != "name" and key not in options:
            raise unknown_choice(f"option of model '{model['name']}'", f"model.{key}",
                                 [f"model.{k}" for k in options], where)
    parameters = inspect.signature(factory, eval_str=True).parameters
    annotations = {key: parameter.annotation for key, parameter in parameters.items()
                   if parameter.annotation is not inspect.Parameter.empty}
    check_types(model, annotations, "model", where)


def check_pretrained_weights(model: dict[str, Any], where: str = "task") -> None:
    """When the [model] table asks for pretrained weights, raise UsageError unless they are in the local
    cache (before a run writes anything)."""
    if not model.get("pretrained"):
        return
    from bnnbench.models.pretrained import cached_weights

    default = inspect.signature(_factory(model["name"], where)).parameters.get("pretrained_name")
    cached_weights(model.get("pretrained_name") or default.default)


def create_model(model: dict[str, Any], input_shape: tuple[int, ...], num_classes: int, where: str = "task"):
    """Build the untrained network a task's [model] table describes (checked when the task was loaded); UsageError,
    naming the model and its options, when the factory cannot build it for these shapes."""
    return _build(model, input_shape, num_classes, where)


def check_buildable(model: dict[str, Any], input_shape: tuple[int, ...], num_outputs: int, where: str = "task") -> int:
    """The parameter count of the network a [model] table describes, built on PyTorch's meta device (shapes only: no
    memory is allocated, no weights are read). UsageError, one line, when the factory cannot build it or its float32
    parameters would need more than MAX_PARAMETER_BYTES; for the door of a run, once the data give the shapes."""
    import torch

    with torch.device("meta"):
        network = _build(model, input_shape, num_outputs, where)
    count = sum(parameter.numel() for parameter in network.parameters())
    needed = count * _FLOAT32_BYTES
    if needed > MAX_PARAMETER_BYTES:
        limit = MAX_PARAMETER_BYTES // _FLOAT32_BYTES
        raise UsageError(f"{where}: {_described(model)} has {count:,} parameters, {_binary_size(needed)} as float32, "
                         f"over bnnbench's limit of {limit:,} parameters ({_binary_size(MAX_PARAMETER_BYTES)}); "
                         "check its widths")
    return count


def _build(model: dict[str, Any], input_shape: tuple[int, ...], num_classes: int, where: str):
    options = {key: value for key, value in model.items() if key != "name"}
    try:
        return _factory(model["name"], where)(input_shape=input_shape, num_classes=num_classes, **options)
    except _BUILD_ERRORS as error:
        raise UsageError(f"{where}: cannot build {_described(model)} for inputs of shape {tuple(input_shape)} and "
                         f"{num_classes} outputs: {error_line(error)}") from None


def _described(model: dict[str, Any]) -> str:
    """"model 'mlp' (hidden = [-5])": the name and the options, so a message shows the value that broke it."""
    options = ", ".join(f"{key} = {value!r}" for key, value in model.items() if key != "name")
    return f"model '{model['name']}'" + (f" ({options})" if options else "")


def _binary_size(n_bytes: int) -> str:
    size = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} EiB"


def last_layer_name(model) -> str:
    """The module name of `model`'s output layer ("" when the model is one layer), checked to be an
    `nn.Linear`; raises UsageError when the factory did not record one."""
    from torch import nn

    name = getattr(model, "bnnbench_last_layer", None)
    if name is None:
        raise UsageError(f"model {type(model).__name__} does not name its last layer (its factory must set "
                         "`model.bnnbench_last_layer`), so last-layer methods cannot run on it")
    try:
        layer = model.get_submodule(name)
    except AttributeError:
        raise UsageError(f"model {type(model).__name__}: last layer '{name}' does not exist") from None
    if not isinstance(layer, nn.Linear):
        raise UsageError(f"model {type(model).__name__}: last layer '{name}' is a {type(layer).__name__}, "
                         "not an nn.Linear")
    return name
