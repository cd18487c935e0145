"""The digits source's `train_fraction` (issue 21): a stratified part of the training split, fixed by `split_seed`
alone, with val and test left as the full task's so small-data tasks are scored on the same images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnnbench.data import load_data

FULL = {"source": "digits", "split_seed": 0, "val_fraction": 0.1, "test_fraction": 0.2}


def rows(split) -> set[bytes]:
    """Each image with its label as bytes: digits has no row ids, and no two of its images are equal."""
    return {x.numpy().tobytes() + bytes([int(y)]) for x, y in zip(split.x, split.y, strict=True)}


def test_train_fraction_keeps_a_stratified_subset_and_leaves_val_and_test_alone():
    full = load_data(FULL)
    part = load_data({**FULL, "train_fraction": 0.15})
    assert rows(part.bundle.train) < rows(full.bundle.train)
    assert len(part.bundle.train) == round(0.15 * len(full.bundle.train)) == 189
    full_counts = np.bincount(full.bundle.train.y.numpy(), minlength=10)
    part_counts = np.bincount(part.bundle.train.y.numpy(), minlength=10)
    assert np.all(np.abs(part_counts - 0.15 * full_counts) <= 1), (part_counts, full_counts)
    for kept, whole in ((part.bundle.val, full.bundle.val), (part.test, full.test)):
        assert torch.equal(kept.x, whole.x) and torch.equal(kept.y, whole.y)
    assert part.info["n_rows"] == {"train": 189, "val": 180, "test": 360}
    assert full.info["n_rows"] == {"train": 1257, "val": 180, "test": 360}


def test_train_fraction_depends_on_split_seed_only():
    torch.manual_seed(1)
    np.random.seed(1)
    first = load_data({**FULL, "train_fraction": 0.15})
    torch.manual_seed(2)  # a run seed seeds these; the subset must not follow it
    np.random.seed(2)
    again = load_data({**FULL, "train_fraction": 0.15})
    assert torch.equal(first.bundle.train.x, again.bundle.train.x)
    assert torch.equal(first.bundle.train.y, again.bundle.train.y)
    other_seed = load_data({**FULL, "split_seed": 1, "train_fraction": 0.15})
    assert rows(other_seed.bundle.train) != rows(first.bundle.train)


def test_train_fraction_one_is_the_full_training_split():
    full, one = load_data(FULL), load_data({**FULL, "train_fraction": 1})
    assert torch.equal(full.bundle.train.x, one.bundle.train.x) and torch.equal(full.bundle.train.y, one.bundle.train.y)


TASK = """name = "tiny"
version = 1
description = "digits with a kept fraction of the training split"
likelihood = "categorical"
[data]
source = "digits"
train_fraction = {value}
[model]
name = "mlp"
hidden = [16]
[budget]
max_epochs = 1
[eval]
metrics = ["acc", "nll"]
corruptions = "none"
"""


@pytest.mark.parametrize(("value", "fragments"), [
    ("0", ["data.train_fraction = 0", "must be in (0, 1]"]),
    ("-0.5", ["data.train_fraction = -0.5", "must be in (0, 1]"]),
    ("1.5", ["data.train_fraction = 1.5", "must be in (0, 1]"]),
    ('"half"', ["'data.train_fraction'", "'half'", "a finite number"]),
])
def test_a_bad_train_fraction_is_refused_in_one_line(cli, tmp_path, value, fragments):
    path = tmp_path / "tiny.toml"
    path.write_text(TASK.format(value=value))
    result = cli("validate", str(path))
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1, result
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_a_train_fraction_that_leaves_a_class_out_is_refused_before_a_run(cli, tmp_path, results_dir):
    path = tmp_path / "tiny.toml"
    path.write_text(TASK.format(value="0.005"))  # 6 of 1,257 images: fewer than the 10 classes
    result = cli("run", "--task", str(path), "--method", "map", "--device", "cpu", "--quiet",
                 "--results-dir", str(results_dir))
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1, result
    assert "data.train_fraction = 0.005 keeps 6 of 1257" in result.stderr
    assert not results_dir.exists()


def test_digits_overconfident_validates_and_is_scored_as_digits_mlp(cli):
    from bnnbench.tasks import load_task

    assert cli("validate", "digits-overconfident").code == 0
    task, mlp = load_task("digits-overconfident"), load_task("digits-mlp")
    assert task.eval == mlp.eval
    assert {k: v for k, v in task.data.items() if k != "train_fraction"} == mlp.data  # same val and test images
    assert task.train["weight_decay"] == 0
