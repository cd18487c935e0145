"""Model factories, timm-style: `factory(input_shape, num_classes, **options) -> nn.Module` (untrained).
`num_classes` keeps timm's name but means the output width: classes, or the target width for regression.

Factories are named "module:function" so that naming a model imports torch only when one is built.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from bnnbench.errors import UsageError, unknown_choice

__all__ = ["MODELS", "check_model_config", "create_model"]

MODELS = {
    "linear": "bnnbench.models.small:linear",
    "mlp": "bnnbench.models.small:mlp",
    "cnn": "bnnbench.models.small:cnn",
    "vit": "bnnbench.models.vit:vit",
}


def _factory(name: str, where: str) -> Callable[..., Any]:
    if name not in MODELS:
        raise unknown_choice("model", name, MODELS, where)
    module, attr = MODELS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def check_model_config(model: dict[str, Any], where: str) -> None:
    """Raise UsageError if the task's [model] table names an unknown model or option."""
    factory = _factory(model["name"], where)
    options = [p for p in inspect.signature(factory).parameters if p not in ("input_shape", "num_classes")]
    for key in model:
        if key != "name" and key not in options:
            raise unknown_choice(f"option of model '{model['name']}'", f"model.{key}",
                                 [f"model.{k}" for k in options], where)


def create_model(model: dict[str, Any], input_shape: tuple[int, ...], num_classes: int, where: str = "task"):
    """Build the untrained network a task's [model] table describes."""
    check_model_config(model, where)
    options = {key: value for key, value in model.items() if key != "name"}
    try:
        return _factory(model["name"], where)(input_shape=input_shape, num_classes=num_classes, **options)
    except (TypeError, ValueError) as error:
        raise UsageError(f"{where}: cannot build model '{model['name']}': {error}") from None
