"""timm networks with pretrained weights from the local Hugging Face cache, never from the network.

A run must not hang on a download or silently train from scratch, so the weights file is looked up in
the cache first and a missing one is a usage error that says how to fetch it. Pretrained networks expect
inputs normalised as in their pre-training; bnnbench's images are in [0, 1], so the network is wrapped in
`Normalized` (normalisation belongs to the model, see bnnbench.data).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bnnbench.errors import UsageError

__all__ = ["Normalized", "create_pretrained"]

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's Hugging Face repositories hold


class Normalized(nn.Module):
    """`net((x - mean) / std)` with per-channel mean and std."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def cached_weights(name: str) -> str:
    """The local path of timm model `name`'s pretrained weights; UsageError when they are not cached."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    config = get_pretrained_cfg(name)
    if config is None or not config.hf_hub_id:
        raise UsageError(f"timm has no pretrained weights named '{name}' on the Hugging Face hub; "
                         "name one as ARCHITECTURE.TAG, e.g. vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    repo = config.hf_hub_id.split("@")[0]
    for filename in WEIGHT_FILES:
        path = try_to_load_from_cache(repo, filename)
        if isinstance(path, str):
            return path
    raise UsageError(f"pretrained weights '{name}' are not in the local Hugging Face cache (repository {repo}); "
                     f"on a machine with network run: python -c \"import timm; timm.create_model('{name}', "
                     "pretrained=True)\" and copy ~/.cache/huggingface/hub (or $HF_HOME) here")


def create_pretrained(name: str, **options: Any) -> nn.Module:
    """timm model `name` (ARCHITECTURE.TAG) with its cached pretrained weights, adapted by timm to
    `options` (num_classes gets a new head; img_size and patch_size resample position and patch
    embeddings), wrapped in its pre-training normalisation. Under `torch.device("meta")` the network is built with
    timm's initialisation instead: its shapes are the same, and sizing it must not read a weights file."""
    import timm
    from timm.models import get_pretrained_cfg

    if torch.get_default_device().type == "meta":  # sizing the network (models.check_buildable): no weights needed
        net = timm.create_model(name, pretrained=False, **options)
    else:
        path = cached_weights(name)
        try:
            net = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": path}, **options)
        except (RuntimeError, ValueError, KeyError) as error:
            raise UsageError(f"cannot load pretrained weights '{name}' from {path}: {error}") from None
    config = get_pretrained_cfg(name)
    return Normalized(net, config.mean, config.std)
