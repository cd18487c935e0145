"""CIFAR tasks on tiny files in the real formats (written here): loading, official vs generated CIFAR-10-C,
OOD detection metrics, augmentation, the timm networks (pretrained weights from a fake local Hugging Face
cache) and whole runs of the cifar10 tasks on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import random_images, write_cifar10, write_cifar10c, write_cifar100, write_svhn_test

from bnnbench.data import load_data
from bnnbench.data.splits import eval_plan
from bnnbench.errors import UsageError
from bnnbench.package_files import builtin_tasks_dir
from bnnbench.runner import _load_cached

C_FILES = ["gaussian_noise", "fog"]  # the official files the fake CIFAR-10-C set has
CPU = ("--device", "cpu", "--quiet")


@pytest.fixture
def data_root(tmp_path) -> Path:
    """CIFAR-10 (2 training batches of 50, 12 test images), CIFAR-100, SVHN and a 2-corruption CIFAR-10-C."""
    root = tmp_path / "data"
    written = write_cifar10(root, batches=(1, 2), n=50, n_test=12)
    write_cifar100(root, random_images(20, 5), list(range(20)), random_images(9, 6), list(range(9)))
    write_svhn_test(root, random_images(7, 7), [10, 1, 2, 3, 4, 5, 6])
    write_cifar10c(root, C_FILES, n=12, labels=written["test_labels"])
    return root


def small_task(tmp_path: Path, name: str, eval_lines: str = "", include: str = "cifar10-vit.toml") -> str:
    """A task file that includes a built-in CIFAR task with a tiny ViT (fast on a CPU)."""
    path = tmp_path / f"{name}.toml"
    path.write_text(f'include = "{builtin_tasks_dir() / include}"\nname = "{name}"\nversion = 1\n'
                    '[model]\nname = "vit"\npatch_size = 8\nembed_dim = 16\ndepth = 1\nnum_heads = 2\n'
                    f"[eval]\n{eval_lines}\n")
    return str(path)


def test_loader_splits_the_official_training_set_and_keeps_the_test_order(data_root):
    loaded = load_data({"source": "cifar10", "val_fraction": 0.1}, root=data_root)
    written_test = random_images(12, 99)  # what write_cifar10 put in test_batch
    bundle = loaded.bundle
    assert (len(bundle.train), len(bundle.val), len(loaded.test)) == (90, 10, 12)
    assert bundle.input_shape == (3, 32, 32) and bundle.num_outputs == 10
    torch.testing.assert_close(loaded.test.x, torch.from_numpy(written_test).permute(0, 3, 1, 2).float() / 255)
    # stratified: the 100 training labels are 10 of each class, so the 10 validation images hold one of each
    assert sorted(bundle.val.y.tolist()) == list(range(10))
    assert sorted(loaded.ood) == ["cifar100", "svhn"] and len(loaded.ood["svhn"]) == 7
    assert (loaded.ood["cifar100"].y == -1).all()
    assert loaded.official_corruptions.names == tuple(C_FILES)


def test_missing_ood_sets_are_listed_and_required_ones_are_errors(data_root):
    (data_root / "svhn" / "test_32x32.mat").unlink()
    loaded = load_data({"source": "cifar10"}, root=data_root)
    assert sorted(loaded.ood) == ["cifar100"] and loaded.info["ood_missing"] == ["svhn"]
    with pytest.raises(UsageError, match="bnnbench data download svhn"):
        load_data({"source": "cifar10", "ood": ["svhn"]}, root=data_root)


def test_official_files_are_used_when_every_corruption_asked_for_is_there(data_root):
    loaded = load_data({"source": "cifar10", "val_fraction": 0.1}, root=data_root)
    plan = eval_plan({"corruptions": C_FILES, "severities": [2, 5]}, loaded)
    assert plan.corruption_source == "official" and plan.variant == "cifar10c-official"
    corrupted = [split for split in plan if split.split == "test" and split.corruption != "none"]
    for split in corrupted:  # write_cifar10c filled severity s of file k with 10 s + k
        expected = (10 * split.severity + C_FILES.index(split.corruption)) / 255
        assert torch.allclose(split.data.x, torch.full_like(split.data.x, expected))
        assert torch.equal(split.data.y, loaded.test.y)
    assert [(s.split, s.corruption) for s in plan][-2:] == [("ood", "cifar100"), ("ood", "svhn")]


def test_generated_corruptions_when_files_are_missing_or_asked_for(data_root):
    loaded = load_data({"source": "cifar10", "val_fraction": 0.1}, root=data_root)
    auto = eval_plan({"corruptions": ["gaussian_noise", "snow"], "severities": [1]}, loaded)
    assert auto.corruption_source == "generated" and auto.variant == "cifar10c-generated"
    asked = eval_plan({"corruptions": C_FILES, "corruption_source": "generated", "severities": [3]}, loaded)
    generated = next(split for split in asked if split.corruption == "gaussian_noise")
    official = next(split for split in eval_plan({"corruptions": C_FILES, "severities": [3]}, loaded)
                    if split.corruption == "gaussian_noise")
    assert not torch.equal(generated.data.x, official.data.x)
    with pytest.raises(UsageError, match="missing for snow.*bnnbench data download cifar10c"):
        eval_plan({"corruptions": ["gaussian_noise", "snow"], "corruption_source": "official"}, loaded)
    assert eval_plan({"corruptions": "none"}, loaded).variant == "standard"


def test_cifar10c_labels_must_follow_the_test_set(data_root):
    np.save(data_root / "CIFAR-10-C" / "labels.npy", np.zeros(60, np.uint8))
    with pytest.raises(UsageError, match="does not match the CIFAR-10 test labels"):
        load_data({"source": "cifar10"}, root=data_root)


def test_ood_metrics_equal_sklearn_with_ties():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from bnnbench.metrics import aupr, auroc

    rng = np.random.default_rng(0)
    for _ in range(20):
        inside = rng.integers(0, 6, size=rng.integers(2, 40)).astype(float)  # many ties
        outside = rng.integers(2, 8, size=rng.integers(2, 40)).astype(float)
        labels = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
        scores = np.r_[inside, outside]
        assert auroc(inside, outside) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert aupr(inside, outside) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_entropy_and_mutual_information_of_a_two_sample_predictive():
    from bnnbench.likelihoods import Categorical

    probs = torch.tensor([[[0.9, 0.1], [0.5, 0.5]], [[0.1, 0.9], [0.5, 0.5]]], dtype=torch.float64)  # (S, B, C)
    likelihood = Categorical()
    samples = probs.log()
    scores = likelihood.uncertainty(samples, likelihood.mixture(samples))
    h = lambda p: -(p * np.log(p)).sum()  # noqa: E731
    # example 0: the samples disagree (mixture 0.5/0.5): all of its entropy beyond h(0.9, 0.1) is epistemic
    assert scores["entropy"].tolist() == pytest.approx([np.log(2), np.log(2)])
    assert scores["mi"].tolist() == pytest.approx([np.log(2) - h(np.array([0.9, 0.1])), 0.0])
    assert "mi" not in likelihood.uncertainty(samples[:1], likelihood.mixture(samples[:1]))


def test_crop_flip_takes_padded_windows_and_flips_about_half():
    from bnnbench.train import CROP_PADDING, augment_images

    x = torch.rand(64, 3, 6, 5)
    out = augment_images(x, "crop-flip", torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (CROP_PADDING,) * 4)
    flips = 0
    for image, result in zip(padded, out, strict=True):
        matches = [(dy, dx, flip) for dy in range(2 * CROP_PADDING + 1) for dx in range(2 * CROP_PADDING + 1)
                   for flip in (False, True)
                   if torch.equal(result, (lambda w: w.flip(2) if flip else w)(image[:, dy:dy + 6, dx:dx + 5]))]
        assert len(matches) == 1
        flips += matches[0][2]
    assert 20 <= flips <= 44  # Binomial(64, 1/2): outside this range with probability below 0.2%
    assert torch.equal(augment_images(x, "none", torch.Generator()), x)


def test_resnet_has_the_cifar_stem_and_channels_last_weights():
    from bnnbench.models import create_model, last_layer_name

    model = create_model({"name": "resnet", "architecture": "resnet18"}, (3, 32, 32), 10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity) and last_layer_name(model) == "fc"
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    features = {}
    model.layer1.register_forward_hook(lambda module, args, output: features.setdefault("layer1", output))
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert features["layer1"].shape[-2:] == (32, 32)  # the stem keeps the full resolution


PRETRAINED = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"


def test_pretrained_weights_come_from_the_local_cache_and_are_resampled(tmp_path, monkeypatch):
    import huggingface_hub.constants
    import timm
    from safetensors.torch import save_file

    from bnnbench.models import create_model

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    options = {"name": "vit", "patch_size": 4, "pretrained": True}
    with pytest.raises(UsageError, match=f"'{PRETRAINED}' are not in the local Hugging Face cache"):
        create_model(options, (3, 32, 32), 10)
    # the cache layout huggingface_hub writes: refs/main names the snapshot that holds the file
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", num_classes=1000)
    repo = tmp_path / "hub" / f"models--timm--{PRETRAINED}"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()},
              str(repo / "snapshots" / "abc123" / "model.safetensors"))
    model = create_model(options, (3, 32, 32), 10)
    net = model.net
    assert torch.equal(net.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight)
    assert net.patch_embed.proj.weight.shape == (192, 3, 4, 4) and net.pos_embed.shape == (1, 65, 192)
    assert net.head.out_features == 10 and model.bnnbench_last_layer == "net.head"
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))  # this checkpoint's normalisation


def test_bare_set_key_goes_to_the_model_when_the_method_lacks_it():
    from bnnbench.methods import find_method
    from bnnbench.runner import split_overrides
    from bnnbench.tasks import load_task

    task = load_task("cifar10-vit")
    map_spec = find_method("map")[0]
    assert split_overrides(task, map_spec, {"pretrained": True, "lr": 0.1}) == ({"lr": 0.1}, {"pretrained": True}, {})
    assert split_overrides(task, map_spec, {"model.depth": 2}) == ({}, {"depth": 2}, {})
    assert split_overrides(task, map_spec, {"data.val_fraction": 0.2}) == ({}, {}, {"val_fraction": 0.2})
    with pytest.raises(UsageError, match="unknown option of model 'vit' 'model.widht'"):
        split_overrides(task, map_spec, {"model.widht": 2})


def test_cifar10_vit_ci_run_on_fake_data(cli, data_root, results_dir):
    """The real task file, one epoch: clean, generated CIFAR-10-C (15 x 5: only 2 official files here), OOD."""
    result = cli("run", "--task", "cifar10-vit", "--method", "map", "--budget", "ci", "--data-dir", str(data_root),
                 "--results-dir", str(results_dir), *CPU)
    assert result.code == 0, result.stderr
    [run_json] = results_dir.glob("*/*/*/run.json")
    record = json.loads(run_json.read_text())
    assert record["fit_epochs"] == 1 and record["corruption_source"] == "generated"
    assert record["data_variant"] == "cifar10c-generated" and record["data_info"]["n_train_batches"] == 2
    import pandas as pd

    rows = pd.read_csv(run_json.with_name("metrics.csv"))
    corrupted = rows[(rows["split"] == "test") & ~rows["corruption"].isin(["none", "mean"])]
    assert len(corrupted) == 15 * 5 * 4  # corruptions x severities x metrics
    ood = rows[rows["split"] == "ood"].set_index(["corruption", "metric"])["value"]
    assert set(ood.index) == {(name, metric) for name in ("cifar100", "svhn", "mean")
                              for metric in ("auroc_entropy", "aupr_entropy")}  # map: no samples, no MI
    assert ood[("mean", "auroc_entropy")] == pytest.approx((ood[("cifar100", "auroc_entropy")]
                                                             + ood[("svhn", "auroc_entropy")]) / 2)


def test_official_and_generated_runs_never_share_a_leaderboard(cli, data_root, tmp_path, results_dir):
    task = small_task(tmp_path, "cifar10-tiny", 'corruptions = ["gaussian_noise", "fog"]\nseverities = [1, 5]')
    common = ("--method", "mc-dropout", "--budget", "ci", "--data-dir", str(data_root), "--results-dir",
              str(results_dir), *CPU)
    assert cli("run", "--task", task, *common).code == 0
    (data_root / "CIFAR-10-C" / "fog.npy").unlink()  # now generated
    # in this process the data (and their file list) are cached: the run fails, and says why
    failed = cli("run", "--task", task, "--seed", "2", *common)
    assert failed.code == 1 and "fog.npy not found" in failed.stderr
    _load_cached.cache_clear()  # a new process would load them afresh
    assert cli("run", "--task", task, "--seed", "1", *common).code == 0
    records = [json.loads(p.read_text()) for p in results_dir.glob("*/*/*/run.json")]
    ok = [record for record in records if record["status"] == "ok"]
    assert sorted(r["data_variant"] for r in ok) == ["cifar10c-generated", "cifar10c-official"]
    assert ok[0]["config_hash"] != ok[1]["config_hash"]
    board = cli("compare", "--results-dir", str(results_dir), "--format", "markdown")
    assert "cifar10-tiny v1 (cifar10c-generated)" in board.stdout
    assert "cifar10-tiny v1 (cifar10c-official)" in board.stdout
    assert "auroc_mi ood" in board.stdout  # mc-dropout has samples: mutual information is scored


def test_resnet_task_fine_tunes_from_pretrained_only_with_cached_weights(cli, data_root, tmp_path, results_dir):
    result = cli("run", "--task", "cifar10-resnet18", "--method", "map", "--budget", "ci", "--set", "pretrained=true",
                 "--data-dir", str(data_root), "--results-dir", str(results_dir), *CPU)
    assert result.code == 2 and "not in the local Hugging Face cache" in result.stderr
    assert not results_dir.exists() or not any(results_dir.rglob("run.json"))


def test_missing_data_is_a_one_line_error_and_writes_nothing(cli, tmp_path, results_dir):
    result = cli("run", "--task", "cifar10-vit", "--method", "map", "--data-dir", str(tmp_path / "none"),
                 "--results-dir", str(results_dir), *CPU)
    assert result.code == 2 and "bnnbench data download cifar10" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and not results_dir.exists()


def test_generated_corruptions_are_the_official_fifteen():
    from bnnbench.data.cifar_c import CIFAR10C_CORRUPTIONS
    from bnnbench.data.corruptions import CORRUPTIONS

    assert CORRUPTIONS == CIFAR10C_CORRUPTIONS  # same names, same order: official and generated rows line up


def _flip_one_pixel(path: Path) -> None:
    import pickle

    content = pickle.loads(path.read_bytes(), encoding="bytes")  # the test's own file: trusted
    content[b"data"][0, 0] ^= 1
    path.write_bytes(pickle.dumps(content))


def test_the_data_files_fingerprint_is_in_run_json_and_the_run_id(data_root, tmp_path):
    """One flipped pixel in a training batch, or in a CIFAR-10-C file, is another experiment: another run id."""
    from bnnbench.runner import prepare

    task = small_task(tmp_path, "cifar10-tiny", 'corruptions = ["gaussian_noise", "fog"]\nseverities = [1]')

    def plan_now():
        _load_cached.cache_clear()  # as a new process would
        return prepare(task, "map", data_dir=data_root, results_dir=tmp_path / "runs", show_progress=False)

    first = plan_now()
    fingerprint = _load_cached(str(first.task.path), json.dumps(first.task.data, sort_keys=True),
                               str(data_root)).info["data_fingerprint"]
    # meta, 2 training batches, test; cifar-100's meta and test, svhn; CIFAR-10-C's labels and 2 corruptions
    assert fingerprint["files"] == 4 + 2 + 1 + 3
    assert plan_now().config_hash == first.config_hash  # deterministic
    _flip_one_pixel(data_root / "cifar-10-batches-py" / "data_batch_1")
    second = plan_now()
    assert second.config_hash != first.config_hash
    fog = data_root / "CIFAR-10-C" / "fog.npy"
    images = np.load(fog)
    images[0, 0, 0, 0] ^= 1
    np.save(fog, images)
    assert plan_now().config_hash not in (first.config_hash, second.config_hash)


def test_a_failed_rerun_on_changed_data_leaves_the_ok_run(cli, data_root, tmp_path, results_dir, monkeypatch):
    task = small_task(tmp_path, "cifar10-tiny", 'corruptions = ["gaussian_noise", "fog"]\nseverities = [1]')
    common = ("--task", task, "--method", "map", "--budget", "ci", "--data-dir", str(data_root), "--results-dir",
              str(results_dir), *CPU)
    assert cli("run", *common).code == 0
    [ok_run] = results_dir.glob("*/*/*/run.json")
    written = ok_run.read_text()
    _flip_one_pixel(data_root / "cifar-10-batches-py" / "data_batch_2")
    _load_cached.cache_clear()

    def broken(*args, **kwargs):
        raise TypeError("a bug in the new run")

    monkeypatch.setattr("bnnbench.models.create_model", broken)
    assert cli("run", *common).code == 1
    assert ok_run.read_text() == written
    statuses = sorted(json.loads(p.read_text())["status"] for p in results_dir.glob("*/*/*/run.json"))
    assert statuses == ["failed", "ok"]


def test_too_few_training_images_to_hold_out_each_class_is_one_line(cli, tmp_path, results_dir):
    write_cifar10(tmp_path / "small", batches=(1,), n=20, n_test=10)
    result = cli("run", "--task", "cifar10-vit", "--method", "map", "--budget", "ci", "--data-dir",
                 str(tmp_path / "small"), "--results-dir", str(results_dir), *CPU)
    assert result.code == 2 and "cannot hold out each of the 10 classes" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not results_dir.exists()
