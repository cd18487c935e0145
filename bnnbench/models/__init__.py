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

from bnnbench.errors import UsageError, unknown_choice
from bnnbench.registry import Registry
from bnnbench.schema import check_types

__all__ = ["MODELS", "check_model_config", "check_pretrained_weights", "create_model", "last_layer_name",
           "model_options"]

MODELS: Registry[Callable[..., Any]] = Registry("model")  # name -> "module:factory", imported on use
MODELS.register("linear", "bnnbench.models.small:linear")
MODELS.register("mlp", "bnnbench.models.small:mlp")
MODELS.register("cnn", "bnnbench.models.small:cnn")
MODELS.register("vit", "bnnbench.models.vit:vit")
MODELS.register("resnet", "bnnbench.models.resnet:resnet")
MODELS.register("forecast-mlp", "bnnbench.models.forecast:forecast_mlp")
MODELS.register("dlinear", "bnnbench.models.forecast:dlinear")
MODELS.register("patchtst", "bnnbench.models.forecast:patchtst")


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
    """Build the untrained network a task's [model] table describes (checked when the task was loaded)."""
    options = {key: value for key, value in model.items() if key != "name"}
    try:
        return _factory(model["name"], where)(input_shape=input_shape, num_classes=num_classes, **options)
    except (TypeError, ValueError) as error:
        raise UsageError(f"{where}: cannot build model '{model['name']}': {error}") from None


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
