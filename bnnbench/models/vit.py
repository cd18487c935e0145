"""timm's VisionTransformer, sized by the task (small images, trained from scratch) or fine-tuned from
pretrained weights."""

from __future__ import annotations

from torch import nn

__all__ = ["vit"]


def vit(
    input_shape: tuple[int, ...],
    num_classes: int,
    patch_size: int = 2,
    embed_dim: int = 64,
    depth: int = 4,
    num_heads: int = 4,
    mlp_ratio: float = 2.0,
    drop_rate: float = 0.0,
    pretrained: bool = False,
    pretrained_name: str = "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
) -> nn.Module:
    """A timm `VisionTransformer` for square images of `input_shape` (C, H, W), class-token pooling.

    With `pretrained`, the width, depth and heads are `pretrained_name`'s and its weights come from the local
    Hugging Face cache; timm resamples the patch embedding to `patch_size` and the position embedding to
    the image's token grid (FlexiViT-style), so a 224-px checkpoint fine-tunes on 32-px images directly.
    """
    in_chans, height, width = input_shape
    if height != width or height % patch_size:
        raise ValueError(f"image {height}x{width} is not square or not divisible by patch_size={patch_size}")
    if pretrained:
        from bnnbench.models.pretrained import create_pretrained

        model = create_pretrained(pretrained_name, num_classes=num_classes, img_size=height, patch_size=patch_size,
                                  in_chans=in_chans, drop_rate=drop_rate)
        model.bnnbench_last_layer = "net.head"
        return model
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=height, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                              embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                              drop_rate=drop_rate)
    model.bnnbench_last_layer = "head"
    return model
