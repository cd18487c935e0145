"""The fine-grained transfer tasks (Kim 2026's vision benchmarks): the protocol's training augmentation, a named
budget's network, and VI's memory estimate and refusal on a ViT-L/32."""

from __future__ import annotations

import pytest
import torch

from bnnbench import train
from bnnbench.errors import UsageError

TRANSFER_TASKS = [f"{data}-{backbone}" for data in ("pets", "flowers", "aircraft", "dtd")
                  for backbone in ("vitl32", "resnet101")]


def _pixel_centres(size: int) -> torch.Tensor:
    """The [-1, 1] coordinates of a row's pixel centres, as grid_sample (align_corners=False) places them."""
    return (2 * torch.arange(size, dtype=torch.float64) + 1) / size - 1


def _ramp_slopes(monkeypatch, *, scale: float, degrees: float, n: int = 400, size: int = 32):
    """Augment a batch of horizontal ramps (pixel value = its x coordinate): bilinear resampling reproduces a linear
    function exactly, so each output is the affine map the augmentation drew, read back by least squares:
    out(u, v) = a u + b v + c over the pixels whose source lies inside the image."""
    monkeypatch.setattr(train, "RESIZED_CROP_SCALE", (scale, scale))
    monkeypatch.setattr(train, "RESIZED_CROP_RATIO", (1.0, 1.0))
    monkeypatch.setattr(train, "ROTATION_DEGREES", degrees)
    centres = _pixel_centres(size)
    ramp = centres.expand(size, size).to(torch.float32)  # row v, column u: value u
    out = train.augment_images(ramp.expand(n, 1, size, size).clone(), "resized-crop-flip-rotate",
                               torch.Generator().manual_seed(0)).double()
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    inner = (u.abs() < 0.5) & (v.abs() < 0.5)  # maps inside the image for every draw below (|a|+|b| <= 1, |c| small)
    design = torch.stack([u[inner], v[inner], torch.ones_like(u[inner])], 1)
    fits = torch.linalg.lstsq(design.expand(n, -1, -1), out[:, 0][:, inner].unsqueeze(-1)).solution[..., 0]
    residual = (design @ fits.T).T - out[:, 0][:, inner]
    return fits, residual.abs().max().item()


def test_resized_crop_draws_a_quarter_area_crop_mirrored_half_the_time(monkeypatch):
    fits, residual = _ramp_slopes(monkeypatch, scale=0.25, degrees=0.0)
    assert residual < 1e-5
    assert torch.allclose(fits[:, 0].abs(), torch.full((len(fits),), 0.5, dtype=torch.float64), atol=1e-5)
    assert fits[:, 1].abs().max() < 1e-5  # no rotation: no dependence on the row
    assert fits[:, 2].abs().max() <= 0.5 + 1e-5  # the crop's centre keeps it inside the image
    flipped = (fits[:, 0] < 0).double().mean().item()
    assert 0.4 < flipped < 0.6  # 400 fair coins: outside this with probability < 1e-4


def test_rotation_is_uniform_within_its_degrees(monkeypatch):
    fits, residual = _ramp_slopes(monkeypatch, scale=1.0, degrees=30.0)
    assert residual < 1e-5
    angles = torch.rad2deg(torch.atan2(-fits[:, 1], fits[:, 0].abs()))  # u_in = ±cos a u − sin a v
    assert angles.abs().max() <= 30 + 1e-3
    assert angles.min() < -25 and angles.max() > 25 and abs(angles.mean()) < 3
    assert torch.allclose(fits[:, :2].norm(dim=1), torch.ones(len(fits), dtype=torch.float64), atol=1e-5)


def test_augmentation_keeps_shape_and_range():
    x = torch.rand(6, 3, 40, 40)
    out = train.augment_images(x, "resized-crop-flip-rotate", torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


def test_every_transfer_task_loads_and_its_ci_budget_swaps_the_network():
    from bnnbench.tasks import load_task, task_at_budget

    for name in TRANSFER_TASKS:
        task = load_task(name)
        assert task.budget.max_epochs == 100 and task.budget.n_eval_samples == 5
        assert task.data["val_fraction"] == 0.5 and task.train["batch_size"] == 16
        assert "ece_classwise" in task.eval["metrics"]
        assert task.methods["score-vi"]["temperature"] == 1e-6
        ci = task_at_budget(task, "ci").model
        assert ci["pretrained"] is False
        if name.endswith("vitl32"):
            assert task.model["pretrained_name"] == "vit_large_patch32_224.orig_in21k"
            assert ci == {**task.model, "pretrained": False, "embed_dim": 16, "depth": 1, "num_heads": 2}
        else:  # the budget names its model: its table replaces the task's whole, included files' keys too
            assert task.model["pretrained_name"] == "resnet101.tv_in1k"
            assert ci == {"name": "resnet", "architecture": "test_resnet", "cifar_stem": False, "pretrained": False}
        assert task_at_budget(task, "default") is task


def _task_file(tmp_path, budget_tables: str):
    path = tmp_path / "tiny-transfer.toml"
    path.write_text('name = "tiny-transfer"\nversion = 1\ndescription = "x"\nlikelihood = "categorical"\n'
                    '[data]\nsource = "digits"\n[model]\nname = "mlp"\n[budget]\nmax_epochs = 1\n'
                    f'[budget.ci]\nmax_steps = 2\n{budget_tables}')
    return path


def test_a_budgets_network_is_checked_when_the_task_loads(tmp_path):
    from bnnbench.tasks import load_task, task_at_budget

    task = load_task(_task_file(tmp_path, "[budget.ci.model]\nhidden = [7]\n"))
    assert task_at_budget(task, "ci").model == {"name": "mlp", "hidden": [7]}
    with pytest.raises(UsageError, match=r"\[budget.ci.model\].*model.widths"):
        load_task(_task_file(tmp_path, "[budget.ci.model]\nwidths = [7]\n"))
    with pytest.raises(UsageError, match="budget.ci.data"):
        load_task(_task_file(tmp_path, "[budget.ci.data]\nsource = \"digits\"\n"))


def test_vi_memory_estimate_counts_each_term():
    from bnnbench.methods.vi.common import vi_state_bytes

    p, f = 1_000, 10
    score = vi_state_bytes(p, f, train_samples=2, score_matching=True, control_variate=True)
    assert sum(score.values()) == 4 * ((p + f) + 2 * p + 2 * p + 4 * p + 2 * p + 2 * 2 * p + 3 * p + 2 * p)
    elbo = vi_state_bytes(p, f, train_samples=1, score_matching=False)
    assert sum(elbo.values()) == 4 * ((p + f) + 2 * p + 2 * p + 4 * p + 2 * p + 2 * p)


def test_score_vi_on_vit_large_states_its_memory_and_refuses_with_the_variant_that_fits(monkeypatch):
    from bnnbench.methods.vi import common
    from bnnbench.methods.vi.score import Hparams
    from bnnbench.models import create_model
    from bnnbench.tasks import load_task

    task = load_task("pets-vitl32")
    with torch.device("meta"):  # ViT-L/32's shapes, no weights: sizing it must not need the Hugging Face cache
        model = create_model({**task.model, "pretrained": False, "embed_dim": 1024, "depth": 24, "num_heads": 16,
                              "mlp_ratio": 4.0}, (3, 224, 224), 37)
    n = sum(parameter.numel() for parameter in model.parameters())
    assert 3.0e8 < n < 3.1e8
    terms = common.check_vi_memory(model, Hparams(), "score-vi", torch.device("cpu"))
    assert sum(terms.values()) == 4 * 16 * n  # S = 1, no control variate: (1 + 2 + 2 + 4 + 2 + 2 + 3) P
    monkeypatch.setattr(common, "device_memory_bytes", lambda device: 8 * 2**30)
    with pytest.raises(UsageError) as refused:
        common.check_vi_memory(model, Hparams(), "score-vi", torch.device("cpu"))
    message = str(refused.value)
    assert "\n" not in message
    assert f"{n:,} weights needs about {4 * 16 * n / 2**30:.3g} GiB" in message
    head = 1024 * 37 + 37
    assert f'variational_params = "head.*" (the last layer\'s {head:,} weights' in message
    fits = 4 * (n + 15 * head) / 2**30  # the network whole, q's terms over the head alone
    assert f"about {fits:.3g} GiB)" in message and fits < 8


def test_a_run_over_the_devices_memory_is_refused_at_the_door(cli, tmp_path, results_dir, monkeypatch):
    """Through `bnnbench run`: exit 2 and one line, before the data are read and with no result directory."""
    from bnnbench.methods.vi import common

    monkeypatch.setattr(common, "device_memory_bytes", lambda device: 2**20)  # 1 MiB: the ci ViT needs 3.2
    result = cli("run", "--task", "pets-vitl32", "--method", "score-vi", "--budget", "ci", "--data-dir",
                 str(tmp_path / "no-data-here"), "--results-dir", str(results_dir), "--device", "cpu")
    assert result.code == 2 and result.stderr.count("\n") == 1, result.stderr
    # the ci ViT's weights: patch embedding 3·32·32·16 + 16, class token and 50 positions 816, one block of width 16
    # (norms 64, qkv 816, projection 272, MLP 16-32-16 1,072), final norm 32, head 16·37 + 37
    n = 49_168 + 816 + 2_224 + 32 + 629
    assert f"over {n:,} weights needs about {16 * 4 * n / 2**30:.3g} GiB" in result.stderr
    assert 'use variational_params = "head.*"' in result.stderr
    assert not results_dir.exists()
