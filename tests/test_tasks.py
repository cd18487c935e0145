"""Task files: every shipped task validates; malformed files fail with the file and key named."""

from __future__ import annotations

import os
import re

import pytest

from bnnbench.errors import UsageError
from bnnbench.tasks import list_tasks, load_task, resources_for
from bnnbench.types import Resources

GOOD = """
name = "{name}"
version = 1
description = "test task"
likelihood = "categorical"
[data]
source = "digits"
[model]
name = "mlp"
[budget]
max_epochs = 2
[budget.ci]
max_epochs = 1
"""


@pytest.mark.parametrize("name", list_tasks())
def test_shipped_tasks_validate(name):
    task = load_task(name)
    assert task.name == name
    assert "ci" in task.budgets
    assert task.budgets["ci"].max_epochs <= task.budget.max_epochs  # sanity tasks run in seconds either way


def test_embedded_digits_tasks_exist():
    assert {"digits-mlp", "digits-cnn", "digits-vit"} <= set(list_tasks())


def test_include_inherits_and_overrides():
    mlp, vit = load_task("digits-mlp"), load_task("digits-vit")
    assert vit.data == mlp.data and vit.eval == mlp.eval
    assert vit.model["name"] == "vit"
    assert vit.train["weight_decay"] != mlp.train["weight_decay"]
    assert vit.train["batch_size"] == mlp.train["batch_size"]


def test_resources_per_budget_inherit_and_default(tmp_path):
    assert resources_for(load_task("digits-mlp"), "ci") == Resources(cpus=1, gpus=0)
    assert resources_for(load_task("cifar100-vit"), None) == Resources(cpus=2, gpus=1)  # from cifar10-vit
    electricity = load_task("electricity-patchtst")  # ettm1-patchtst's: a GPU, but not for the CI budget
    assert resources_for(electricity, "default") == Resources(cpus=2, gpus=1)
    assert resources_for(electricity, "ci") == Resources(cpus=1, gpus=0)
    task = load_task(write(tmp_path, GOOD.format(name="bad") + "[resources]\ngpus = 0.5\n[resources.ci]\ncpus = 4\n"))
    assert resources_for(task, None) == Resources(cpus=1, gpus=0.5)
    assert resources_for(task, "ci") == Resources(cpus=4, gpus=0.5)


def write(tmp_path, text, name="bad"):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: "bogus = 1\n" + t, "unknown key 'bogus'"),
        (lambda t: t.replace('name = "bad"', 'name = "other"'), "must equal the file stem"),
        (lambda t: t.replace("version = 1", "version = 0"), "'version' must be a positive integer"),
        (lambda t: t.replace('likelihood = "categorical"', 'likelihood = "poisson"'), "unknown likelihood 'poisson'"),
        (lambda t: t.replace("max_epochs = 2", "max_epoch = 2"), "unknown key 'budget.max_epoch'"),
        (lambda t: t.replace("max_epochs = 1", "max_epochs = -1"), "'budget.ci.max_epochs' must be a positive"),
        (lambda t: t.replace('[model]\nname = "mlp"', "[model]"), "missing required key 'model.name'"),
        (lambda t: t.replace('description = "test task"', ""), "missing required key 'description'"),
        (lambda t: t.replace("[data]", "[data\n"), "malformed TOML"),
        (lambda t: t + "[resources]\ngpu = 1\n", "unknown key 'resources.gpu'.*resources.gpus"),
        (lambda t: t + "[resources]\ncpus = 0\n", "'resources.cpus' must be a positive number, got 0"),
        (lambda t: t + "[resources.ci]\ngpus = -1\n", "'resources.ci.gpus' must be a non-negative number"),
        (lambda t: t + "[resources.big]\ngpus = 1\n", "unknown budget in \\[resources\\] 'big'.*choices: ci"),
    ],
)
def test_malformed_task_names_file_and_key(tmp_path, edit, expected):
    path = write(tmp_path, edit(GOOD.format(name="bad")))
    with pytest.raises(UsageError, match=expected) as error:
        load_task(path)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value).strip()


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ('[model]\nname = "mlp"\nhiden = [3]', "unknown option of model 'mlp' 'model.hiden'"),
        ('[model]\nname = "resnet9000"', "unknown model 'resnet9000'"),
        ('[train]\nlearning_rate = 1.0', "unknown key 'train.learning_rate'"),
        ('[eval]\nmetrics = ["nlll"]', "unknown metric in eval.metrics 'nlll' \\(did you mean 'nll'\\?\\)"),
        ('[eval]\ncorruptions = ["fogg"]', "unknown corruption in eval.corruptions 'fogg'"),
        ('[methods.map]\nlrr = 1.0', "unknown hyper-parameter of method 'map' 'lrr' \\(did you mean 'lr'\\?\\)"),
        ('[methods.mapp]\nlr = 1.0', "unknown method 'mapp'"),
        ('[methods.map]\nlr = "fast"', "hyper-parameter 'lr' of method 'map' must be a finite number, got 'fast'"),
    ],
)
def test_validate_rejects_unknown_names(tmp_path, section, expected):
    text = GOOD.format(name="bad").replace('[model]\nname = "mlp"', "")
    text += "\n" + section + ("\n" if "[model]" in section else '\n[model]\nname = "mlp"\n')
    with pytest.raises(UsageError, match=expected):
        load_task(write(tmp_path, text))


def test_unknown_task_suggests_close_name():
    with pytest.raises(UsageError, match="unknown task 'digits-mpl' \\(did you mean 'digits-mlp'\\?\\); valid choices"):
        load_task("digits-mpl")


def test_include_loop_is_reported(tmp_path):
    write(tmp_path, 'include = "b.toml"\n' + GOOD.format(name="a"), name="a")
    write(tmp_path, 'include = "a.toml"\n' + GOOD.format(name="b"), name="b")
    with pytest.raises(UsageError, match="loops back"):
        load_task(tmp_path / "a.toml")


def test_task_search_path_env_variables_and_tasks_dir(tmp_path, monkeypatch, cli):
    """Both variable names are read, then --tasks-dir; on a clash of names the later directory wins."""
    old, new, given = tmp_path / "old", tmp_path / "new", tmp_path / "given"
    for directory, names in ((old, ("from-old", "shared")), (new, ("from-new",)), (given, ("from-given", "shared"))):
        directory.mkdir()
        for name in names:
            text = GOOD.format(name=name).replace('"test task"', f'"{name} in {directory.name}"')
            (directory / f"{name}.toml").write_text(text)
    monkeypatch.setenv("BNNBENCH_TASK_PATH", str(old))
    monkeypatch.setenv("BNNBENCH_TASKS_PATH", os.pathsep.join([str(tmp_path / "missing"), str(new)]))
    assert {"from-old", "from-new", "shared", "digits-mlp"} <= set(list_tasks()) and "from-given" not in list_tasks()
    assert load_task("shared").description == "shared in old"
    assert load_task("shared", [given]).description == "shared in given"
    assert {"from-old", "from-new", "from-given"} <= set(list_tasks([given]))

    listed = cli("list", "tasks", "--tasks-dir", str(given))
    assert listed.code == 0 and "from-given" in listed.stdout and "shared in given" in listed.stdout
    validated = cli("validate", "from-given", "shared", "--tasks-dir", str(given))
    assert validated.code == 0 and f"ok shared v1 ({given / 'shared.toml'})" in validated.stdout
    missing = cli("validate", "--tasks-dir", str(tmp_path / "nowhere"))
    assert missing.code == 2 and "--tasks-dir" in missing.stderr and "is not a directory" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("prior_std = 1", {"prior_std": 1.0, "temperature": 1.0}),
        ("prior_std = 0.5\ntemperature = 2.0", {"prior_std": 0.5, "temperature": 2.0}),
        ("prior_std = -1", "key 'posterior.prior_std' must be positive, got -1.0"),
        ("temperature = 1.0", "missing required key 'posterior.prior_std'"),
        ("prior_std = 'wide'", "key 'posterior.prior_std' must be a finite number, got 'wide'"),
        ("prior_sd = 1", "unknown key 'posterior.prior_sd' (did you mean 'posterior.prior_std'?)"),
    ],
)
def test_posterior_table_is_parsed_or_refused_by_name(tmp_path, table, expected):
    path = write(tmp_path, GOOD.format(name="bad") + f"[posterior]\n{table}\n")
    if isinstance(expected, dict):
        assert load_task(path).posterior == expected
    else:
        with pytest.raises(UsageError, match=re.escape(expected)):
            load_task(path)
    assert load_task("digits-mlp").posterior == {}
