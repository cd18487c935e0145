"""Model factories build the networks the task files describe."""

from __future__ import annotations

import pytest
import torch

from bnnbench.errors import UsageError
from bnnbench.models import create_model
from bnnbench.tasks import list_tasks, load_task


@pytest.mark.parametrize("name", list_tasks())
def test_task_models_map_images_to_logits(name):
    task = load_task(name)
    model = create_model(task.model, (1, 8, 8), 10)
    x = torch.rand(4, 1, 8, 8, requires_grad=True)
    logits = model(x)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    logits[0, 3].backward()
    assert x.grad[1:].abs().sum() == 0  # examples do not mix (no batch statistics)
    assert x.grad[0].abs().sum() > 0


def test_mlp_parameter_count():
    model = create_model({"name": "mlp", "hidden": [128, 128]}, (1, 8, 8), 10)
    assert sum(p.numel() for p in model.parameters()) == 64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10


def test_vit_is_timm_and_checks_patch_size():
    from timm.models.vision_transformer import VisionTransformer

    model = create_model({"name": "vit", "patch_size": 2, "embed_dim": 32, "depth": 1, "num_heads": 2}, (1, 8, 8), 10)
    assert isinstance(model, VisionTransformer) and model.patch_embed.num_patches == 16
    with pytest.raises(UsageError, match="not divisible by patch_size=3"):
        create_model({"name": "vit", "patch_size": 3}, (1, 8, 8), 10)
