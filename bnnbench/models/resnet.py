"""timm ResNets for small images: the CIFAR stem (3x3 stride-1 first convolution, no max-pooling) keeps
32x32 inputs at 32x32 in the first stage, as in the CIFAR ResNets of He et al. (2016)."""

from __future__ import annotations

from torch import nn

__all__ = ["resnet"]


def resnet(
    input_shape: tuple[int, ...],
    num_classes: int,
    architecture: str = "resnet18",
    cifar_stem: bool = True,
    channels_last: bool = True,
    pretrained: bool = False,
    pretrained_name: str = "resnet18.a1_in1k",
) -> nn.Module:
    """timm `architecture` (resnet18, resnet34, resnet50, ...) for `input_shape` (C, H, W).

    `pretrained` loads `pretrained_name`'s weights from the local Hugging Face cache (the new head and, with
    the CIFAR stem, the new first convolution start from timm's initialisation). `channels_last` stores
    the weights NHWC, which cuDNN's convolutions run fastest in on tensor-core GPUs under bf16.
    """
    import timm

    in_chans = input_shape[0]
    if pretrained:
        from bnnbench.models.pretrained import create_pretrained

        model = create_pretrained(pretrained_name, num_classes=num_classes, in_chans=in_chans)
        net, prefix = model.net, "net."
    else:
        model = net = timm.create_model(architecture, num_classes=num_classes, in_chans=in_chans)
        prefix = ""
    if cifar_stem:
        width = net.conv1.out_channels
        net.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    if channels_last:
        import torch

        model = model.to(memory_format=torch.channels_last)
    model.bnnbench_last_layer = prefix + "fc"
    return model
