"""Model factories build the networks the task files describe."""

from __future__ import annotations

import pytest
import torch

from bnnbench.data import load_data
from bnnbench.data.timeseries import EMBEDDED
from bnnbench.errors import UsageError
from bnnbench.models import create_model
from bnnbench.tasks import list_tasks, load_task

IMAGE_FILES = {"cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100)}  # sources that need files


@pytest.mark.parametrize("name", list_tasks())
def test_task_models_map_inputs_to_outputs(name):
    task = load_task(name)
    if task.data["source"] in IMAGE_FILES:  # the network does not need the pixels: random images of the shape
        shape, outputs_wanted = IMAGE_FILES[task.data["source"]]
        x = torch.rand(4, *shape)
    elif task.data["source"] == "timeseries" and task.data["dataset"] not in EMBEDDED:  # random windows
        shape, outputs_wanted = (task.data["context_length"],), task.data["prediction_length"]
        x = torch.randn(4, *shape)
    else:
        bundle = load_data(task.data).bundle
        shape, outputs_wanted, x = bundle.input_shape, bundle.num_outputs, bundle.train.x[:4]
    model = create_model(task.model, shape, outputs_wanted)
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model.eval()  # running statistics: in training mode BatchNorm mixes the batch by design
    x = x.clone().requires_grad_(True)
    outputs = model(x)
    assert outputs.shape[:2] == (4, outputs_wanted) and torch.isfinite(outputs).all()  # forecasts: (B, H, C)
    outputs[0, 0].sum().backward()
    assert x.grad[1:].abs().sum() == 0  # examples do not mix (no batch statistics)
    assert x.grad[0].abs().sum() > 0


def test_linear_model_is_one_nn_linear():
    model = create_model({"name": "linear"}, (10,), 1)
    assert isinstance(model, torch.nn.Linear) and [n for n, _ in model.named_parameters()] == ["weight", "bias"]
    with pytest.raises(UsageError, match="flat inputs"):
        create_model({"name": "linear"}, (1, 8, 8), 10)


def test_mlp_parameter_count():
    model = create_model({"name": "mlp", "hidden": [128, 128]}, (1, 8, 8), 10)
    assert sum(p.numel() for p in model.parameters()) == 64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10


def test_vit_is_timm_and_checks_patch_size():
    from timm.models.vision_transformer import VisionTransformer

    model = create_model({"name": "vit", "patch_size": 2, "embed_dim": 32, "depth": 1, "num_heads": 2}, (1, 8, 8), 10)
    assert isinstance(model, VisionTransformer) and model.patch_embed.num_patches == 16
    with pytest.raises(UsageError, match="not divisible by patch_size=3"):
        create_model({"name": "vit", "patch_size": 3}, (1, 8, 8), 10)
