"""Small networks for the embedded tasks: a linear model, an MLP and a two-block CNN."""

from __future__ import annotations

import math

from torch import nn

__all__ = ["cnn", "linear", "mlp"]


def linear(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """One `nn.Linear` on flat inputs (parameters `weight` and `bias`): the sanity tasks' model, whose
    exact posterior is known in closed form."""
    if len(input_shape) != 1:
        raise ValueError(f"the linear model takes flat inputs, got input shape {input_shape}")
    model = nn.Linear(input_shape[0], num_classes)
    model.bnnbench_last_layer = ""  # the model is its own output layer
    return model


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: list[int] = (128, 128)) -> nn.Module:
    """Flatten, then Linear-ReLU blocks of widths `hidden`, then a linear head."""
    widths = [math.prod(input_shape), *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(width_in, width_out), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], num_classes))
    model = nn.Sequential(*layers)
    model.bnnbench_last_layer = str(len(layers) - 1)
    return model


def cnn(input_shape: tuple[int, ...], num_classes: int, channels: list[int] = (32, 64), hidden: int = 128) -> nn.Module:
    """3x3 conv-ReLU blocks (the last followed by 2x2 max-pooling), then an MLP head."""
    in_channels, height, width = input_shape
    layers: list[nn.Module] = []
    for channels_in, channels_out in zip([in_channels, *channels[:-1]], channels, strict=True):
        layers += [nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1), nn.ReLU()]
    layers += [nn.MaxPool2d(2), nn.Flatten(),
               nn.Linear(channels[-1] * (height // 2) * (width // 2), hidden), nn.ReLU(),
               nn.Linear(hidden, num_classes)]
    model = nn.Sequential(*layers)
    model.bnnbench_last_layer = str(len(layers) - 1)
    return model
