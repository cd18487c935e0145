"""Model factories build the networks the task files describe."""

from __future__ import annotations

import pytest
import torch

from bnnbench.data import declared_shapes, load_data
from bnnbench.data.finegrained import SOURCES as FINE_GRAINED
from bnnbench.data.timeseries import EMBEDDED
from bnnbench.errors import UsageError
from bnnbench.models import MAX_PARAMETER_BYTES, check_buildable, create_model
from bnnbench.tasks import list_tasks, load_task, task_at_budget

IMAGE_FILES = {"cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100)}  # sources that need files


@pytest.mark.parametrize("name", list_tasks())
def test_task_models_map_inputs_to_outputs(name):
    task = load_task(name)
    if task.model.get("pretrained"):  # no Hugging Face cache in tests: the ci budget's network, built from scratch
        task = task_at_budget(task, "ci")
    if task.data["source"] in FINE_GRAINED:  # 224-px images: a batch of 2 keeps the test fast
        shape, outputs_wanted = declared_shapes(task.data)
        x = torch.rand(2, *shape)
    elif task.data["source"] in IMAGE_FILES:  # the network does not need the pixels: random images of the shape
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
    assert outputs.shape[:2] == (len(x), outputs_wanted) and torch.isfinite(outputs).all()  # forecasts: (B, H, C)
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


# ------------------------------------------------------------------------- sizing at the door (issue 30)

GOOD_MODELS = [
    ({"name": "linear"}, (10,), 1),
    ({"name": "mlp", "hidden": [32, 16]}, (1, 8, 8), 10),
    ({"name": "cnn", "channels": [8, 16], "hidden": 32}, (1, 8, 8), 10),
    ({"name": "vit", "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}, (3, 32, 32), 10),
    ({"name": "resnet", "architecture": "resnet18"}, (3, 32, 32), 100),
    ({"name": "forecast-mlp", "hidden": [16]}, (24,), 6),
    ({"name": "dlinear", "moving_average": 5}, (24,), 6),
    ({"name": "patchtst", "patch_len": 8, "stride": 4, "width": 16, "depth": 1, "heads": 2}, (24,), 6),
]


@pytest.mark.parametrize(("model", "shape", "outputs"), GOOD_MODELS, ids=[m["name"] for m, _, _ in GOOD_MODELS])
def test_the_meta_build_counts_the_parameters_of_the_real_network(model, shape, outputs):
    real = create_model(model, shape, outputs)
    assert check_buildable(model, shape, outputs) == sum(parameter.numel() for parameter in real.parameters())


def test_a_negative_width_is_refused_naming_the_model_and_the_error():
    with pytest.raises(UsageError) as error:
        check_buildable({"name": "mlp", "hidden": [-5]}, (64,), 10, "task.toml")
    message = str(error.value)
    assert "\n" not in message and message.startswith("task.toml: cannot build model 'mlp' (hidden = [-5])")
    assert "RuntimeError: Trying to create tensor with negative dimension -5" in message


def test_heads_that_do_not_divide_the_width_are_refused_not_asserted():
    with pytest.raises(UsageError, match=r"model 'vit' \(embed_dim = 65\).*AssertionError: dim should be divisible"):
        check_buildable({"name": "vit", "embed_dim": 65}, (3, 32, 32), 10)


def test_a_huge_width_is_refused_with_its_count_and_memory_without_allocating_it():
    with pytest.raises(UsageError) as error:  # 1e18 parameters: only the meta device can hold them
        check_buildable({"name": "mlp", "hidden": [1_000_000_000, 1_000_000_000]}, (64,), 10, "task.toml")
    message = str(error.value)
    assert "\n" not in message and "model 'mlp' (hidden = [1000000000, 1000000000])" in message
    assert "1,000,000,076,000,000,010 parameters, 3.5 EiB as float32" in message
    assert "limit of 1,073,741,824 parameters (4.0 GiB)" in message


def test_the_parameter_limit_is_inclusive():
    limit = MAX_PARAMETER_BYTES // 4
    assert check_buildable({"name": "linear"}, (limit - 1,), 1) == limit  # weights and one bias
    with pytest.raises(UsageError, match="1,073,741,825 parameters, 4.0 GiB as float32"):
        check_buildable({"name": "linear"}, (limit,), 1)


def test_a_pretrained_network_is_sized_without_its_weights(monkeypatch):
    import timm

    import bnnbench.models.pretrained as pretrained

    def no_weights(name: str) -> str:
        raise AssertionError("sizing a network must not look for its weights")

    monkeypatch.setattr(pretrained, "cached_weights", no_weights)
    model = {"name": "vit", "patch_size": 4, "pretrained": True}
    real = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=10)  # its architecture
    assert check_buildable(model, (3, 32, 32), 10) == sum(parameter.numel() for parameter in real.parameters())
