"""Find task files (TOML data in `bnnbench/task_files`, and folders of the user's) and load them into a `TaskSpec`.

`load_task` is the door: it parses a file (structure, with the standard library only) and then checks every name
and value the task refers to against its consumer's rule (data source, model, likelihood, training keys, metrics,
per-method tables, search spaces), so a `TaskSpec` that exists is valid, and nothing below re-checks it. Listing
tasks reads their descriptions alone (`task_description`), which imports no torch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Sequence
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import Any

from bnnbench import tomlfile
from bnnbench.errors import UsageError, unknown_choice
from bnnbench.package_files import builtin_tasks_dir
from bnnbench.schema import check_types
from bnnbench.types import Budget, Dimension, MethodSpec, Resources, TaskSpec

__all__ = ["check_network", "is_forecasting", "list_tasks", "load_task", "resources_for", "task_at_budget",
           "task_description", "task_paths", "task_search_path"]

# Extra directories of task files, separated by os.pathsep. BNNBENCH_TASKS_PATH is the documented name (plural,
# like --tasks-dir); BNNBENCH_TASK_PATH, the first one, is still read, before it.
TASKS_PATH_ENVS = ("BNNBENCH_TASK_PATH", "BNNBENCH_TASKS_PATH")
_TOP_LEVEL = {"name", "version", "description", "likelihood", "include", "data", "model", "train", "budget",
              "eval", "methods", "resources", "posterior", "tune"}
_REQUIRED = ("name", "version", "description", "likelihood", "data", "model", "budget")
# An including file's [model] and [data] replace the included ones: options only make sense with their name. So does
# a named budget's [budget.<name>.model].
_REPLACED_WHOLE = frozenset({"model", "data"})
_BUDGET_KEYS = {f.name for f in fields(Budget)}
_RESOURCE_KEYS = {f.name for f in fields(Resources)}
# key -> the type its consumer reads (bnnbench.data.splits, runner, evaluate, reference), which check the values.
_EVAL_TYPES = {"metrics": list[str], "corruptions": str | list[str], "severities": list[int], "batch_size": int,
               "corruption_seed": int, "corruption_source": str, "reference": dict}
# [posterior]: a Gaussian prior N(0, prior_std² I) on every weight and the likelihood's temperature; HMC's target.
_POSTERIOR_TYPES = {"prior_std": float, "temperature": float}


def task_search_path(task_dirs: Sequence[str | Path] = ()) -> list[Path]:
    """The directories tasks are looked up in, later ones overriding earlier ones on a name: the built-in tasks,
    $BNNBENCH_TASK_PATH, $BNNBENCH_TASKS_PATH, then `task_dirs` (`--tasks-dir`). A directory named in a variable
    but missing is skipped, as on $PATH; one named by `task_dirs` must exist."""
    from_env = [Path(part) for variable in TASKS_PATH_ENVS
                for part in os.environ.get(variable, "").split(os.pathsep) if part]
    for directory in task_dirs:
        if not Path(directory).is_dir():
            raise UsageError(f"--tasks-dir '{directory}' is not a directory")
    return [builtin_tasks_dir(), *from_env, *(Path(directory) for directory in task_dirs)]


def task_paths(task_dirs: Sequence[str | Path] = ()) -> dict[str, Path]:
    """Task name -> file, from `task_search_path(task_dirs)`."""
    return _scan(tuple(task_search_path(task_dirs)))


@cache
def _scan(directories: tuple[Path, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for directory in directories:
        for path in sorted(directory.glob("*.toml")):
            if not path.name.startswith("_"):
                found[path.stem] = path
    return found


def list_tasks(task_dirs: Sequence[str | Path] = ()) -> list[str]:
    """Names of every task that can be run."""
    return sorted(task_paths(task_dirs))


def _task_file(name_or_path: str | Path, task_dirs: Sequence[str | Path]) -> Path:
    path = Path(name_or_path)
    if path.suffix != ".toml":
        paths = task_paths(task_dirs)
        if str(name_or_path) not in paths:
            raise unknown_choice("task", name_or_path, paths)
        path = paths[str(name_or_path)]
    return path


def load_task(name_or_path: str | Path, task_dirs: Sequence[str | Path] = (),
              methods: Sequence[MethodSpec] = ()) -> TaskSpec:
    """The task named (looked up in `task_search_path(task_dirs)`) or at a path to a .toml file, parsed and
    checked whole: UsageError, one line, for the first bad key or value. `methods` are known besides the
    registered ones (a `--method package.module:attr`), so their [methods.X] tables are checked too."""
    path = _task_file(name_or_path, task_dirs)
    return _validated(_parse(_read_with_includes(path, seen=()), path), methods)


def task_description(name_or_path: str | Path, task_dirs: Sequence[str | Path] = ()) -> str:
    """A task's one-line description, for listings: its file's structure is checked, not what it refers to."""
    path = _task_file(name_or_path, task_dirs)
    return _parse(_read_with_includes(path, seen=()), path).description


def _read_with_includes(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path in seen:
        raise UsageError(f"{path}: 'include' loops back to itself")
    try:
        raw = tomlfile.loads(_task_text(path))
    except tomlfile.TOMLDecodeError as error:
        raise UsageError(f"{path}: malformed TOML: {error}") from None
    include = raw.pop("include", None)
    if include is None:
        return raw
    if not isinstance(include, str):
        raise UsageError(f"{path}: key 'include' must be a file name, got {include!r}")
    base = _read_with_includes(path.parent / include, seen + (path,))
    for name, table in raw.get("budget", {}).items():  # a budget's [model] keys replace the included ones whole too
        if isinstance(table, dict) and "model" in table and isinstance(base.get("budget", {}).get(name), dict):
            base["budget"][name] = {key: value for key, value in base["budget"][name].items() if key != "model"}
    return _merge(base, raw, replace=_REPLACED_WHOLE)


def _task_text(path: Path) -> str:
    """The file's text, or UsageError naming the file and why it cannot be read. TOML is UTF-8 whatever the locale
    says, so the bytes are decoded as UTF-8 here rather than by `read_text`."""
    if not path.exists():
        raise UsageError(f"task file {path} does not exist")
    if not path.is_file():  # a directory named x.toml, or a pipe, which reading would block on
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise UsageError(f"task file {path} is {kind}; give the path of a .toml file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UsageError(f"task file {path} cannot be read: {error.strerror or error}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise UsageError(f"task file {path} is not UTF-8 text: line {line} holds the byte "
                         f"0x{data[error.start]:02x}; save it as UTF-8, as TOML requires") from None


def _merge(base: dict[str, Any], override: dict[str, Any], replace: frozenset[str] = frozenset()) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in replace:
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _parse(raw: dict[str, Any], path: Path) -> TaskSpec:
    where = str(path)
    for key in raw:
        if key not in _TOP_LEVEL:
            raise unknown_choice("key", key, _TOP_LEVEL, where)
    for key in _REQUIRED:
        if key not in raw:
            raise UsageError(f"{where}: missing required key '{key}'")
    if raw["name"] != path.stem:
        raise UsageError(f"{where}: key 'name' is '{raw['name']}' but must equal the file stem '{path.stem}'")
    if not isinstance(raw["version"], int) or isinstance(raw["version"], bool) or raw["version"] < 1:
        raise UsageError(f"{where}: key 'version' must be a positive integer, got {raw['version']!r}")
    likelihood, likelihood_options = _likelihood(raw["likelihood"], where)
    for section in ("data", "model", "train", "budget", "eval", "methods", "resources", "posterior", "tune"):
        if not isinstance(raw.get(section, {}), dict):
            raise UsageError(f"{where}: key '{section}' must be a table")
    for section, key in (("data", "source"), ("model", "name")):
        if not isinstance(raw[section].get(key), str):
            raise UsageError(f"{where}: missing required key '{section}.{key}'")
    budget_raw = dict(raw["budget"])
    named = {name: value for name, value in budget_raw.items() if isinstance(value, dict)}
    budget_models = {name: model for name, value in named.items()
                     if (model := _budget_model(value, where, f"budget.{name}"))}
    budget = _budget(budget_raw, Budget(), where, "budget")
    eval_section = raw.get("eval", {})
    for key in eval_section:
        if key not in _EVAL_TYPES:
            raise unknown_choice("key", f"eval.{key}", [f"eval.{k}" for k in _EVAL_TYPES], where)
    check_types(eval_section, _EVAL_TYPES, "eval", where)
    if eval_section.get("batch_size", 1) < 1:
        raise UsageError(f"{where}: key 'eval.batch_size' must be at least 1, got {eval_section['batch_size']}")
    posterior = _posterior(raw.get("posterior", {}), where)
    return TaskSpec(
        name=raw["name"],
        version=raw["version"],
        description=raw["description"],
        likelihood=likelihood,
        likelihood_options=likelihood_options,
        data=dict(raw["data"]),
        model=dict(raw["model"]),
        train=dict(raw.get("train", {})),
        budget=budget,
        budgets={name: _budget(value, budget, where, f"budget.{name}") for name, value in named.items()},
        eval=dict(eval_section),
        methods={name: dict(value) for name, value in raw.get("methods", {}).items()},
        path=path,
        resources=_resources(raw.get("resources", {}), list(named), where),
        posterior=posterior,
        tune=_tune(raw.get("tune", {}), where),
        budget_models=budget_models,
    )


def _budget_model(table: dict[str, Any], where: str, prefix: str) -> dict[str, Any]:
    """`[<prefix>.model]`, the [model] keys a named budget replaces ({} when none); the only table a budget may
    hold."""
    for key, value in table.items():
        if isinstance(value, dict) and key != "model":
            raise unknown_choice("table", f"{prefix}.{key}", [f"{prefix}.model"], where)
    return dict(table.get("model", {}))


def task_at_budget(task: TaskSpec, budget_name: str | None) -> TaskSpec:
    """`task` as a run under the named budget sees it: its [model] with the budget's model keys put in, or replaced
    whole when they name another model (checked when the task was loaded). A ci budget may so swap a pretrained
    ViT-L for a small network that a CPU runs in seconds; the run's identity holds the network it trained."""
    replaced = task.budget_models.get(budget_name or "default")
    if not replaced:
        return task
    return dataclasses.replace(task, model=dict(replaced) if "name" in replaced else {**task.model, **replaced})


def _tune(table: dict[str, Any], where: str) -> dict[str, dict[str, Dimension]]:
    """`[tune.<method>]`: per method, hyper-parameter -> {distribution, low, high} or {distribution =
    "categorical", choices}, a search-space dimension that replaces the method's own (`bnnbench tune`). Whether the
    method has that hyper-parameter is checked where the method is known (`_checked_method_tables`)."""
    spaces: dict[str, dict[str, Dimension]] = {}
    for method, entries in table.items():
        if not isinstance(entries, dict):
            raise UsageError(f"{where}: key 'tune.{method}' must be a table of hyper-parameter = {{distribution, "
                             "low, high}} or {distribution = \"categorical\", choices}")
        spaces[method] = {}
        for name, entry in entries.items():
            key = f"tune.{method}.{name}"
            if not isinstance(entry, dict) or set(entry) - {"distribution", "low", "high", "choices"}:
                raise UsageError(f"{where}: key '{key}' must be a table with keys distribution and low/high or "
                                 "choices")
            dimension = Dimension(name, entry.get("distribution", "categorical" if "choices" in entry else ""),
                                  entry.get("low"), entry.get("high"), tuple(entry.get("choices", ())))
            if dimension.problem():
                raise UsageError(f"{where}: key '{key}': {dimension.problem()}")
            spaces[method][name] = dimension
    return spaces


def _posterior(table: dict[str, Any], where: str) -> dict[str, Any]:
    """`[posterior]` with `prior_std` (required) and `temperature` (default 1), both positive; {} when absent."""
    if not table:
        return {}
    for key in table:
        if key not in _POSTERIOR_TYPES:
            raise unknown_choice("key", f"posterior.{key}", [f"posterior.{k}" for k in _POSTERIOR_TYPES], where)
    check_types(table, _POSTERIOR_TYPES, "posterior", where)
    if "prior_std" not in table:
        raise UsageError(f"{where}: missing required key 'posterior.prior_std'")
    posterior = {"prior_std": float(table["prior_std"]), "temperature": float(table.get("temperature", 1.0))}
    for key, value in posterior.items():
        if value <= 0:
            raise UsageError(f"{where}: key 'posterior.{key}' must be positive, got {value!r}")
    return posterior


def _resources(table: dict[str, Any], budgets: list[str], where: str) -> dict[str, Resources]:
    """`[resources]` (cpus, gpus per run) and `[resources.<budget>]` overrides, keyed by budget name."""
    def parse(values: dict[str, Any], base: Resources, prefix: str) -> Resources:
        for key, value in values.items():
            if key not in _RESOURCE_KEYS:
                raise unknown_choice("key", f"{prefix}.{key}", [f"{prefix}.{k}" for k in _RESOURCE_KEYS], where)
            number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            if not number or value < 0 or (key == "cpus" and value == 0):
                wanted = "positive" if key == "cpus" else "non-negative"
                raise UsageError(f"{where}: key '{prefix}.{key}' must be a {wanted} number, got {value!r}")
        return Resources(**{name: values.get(name, getattr(base, name)) for name in _RESOURCE_KEYS})

    default = parse({k: v for k, v in table.items() if not isinstance(v, dict)}, Resources(), "resources")
    resources = {"default": default}
    for name, values in table.items():
        if isinstance(values, dict):
            if name not in budgets:
                raise unknown_choice("budget in [resources]", name, budgets, where)
            resources[name] = parse(values, default, f"resources.{name}")
    return resources


def resources_for(task: TaskSpec, budget_name: str | None) -> Resources:
    """What one run of `task` under the named budget asks a scheduler for."""
    return task.resources.get(budget_name or "default", task.resources["default"])


def _likelihood(value: Any, where: str) -> tuple[str, dict[str, Any]]:
    """`likelihood = "name"` or `likelihood = { name = "gaussian", noise_std = 0.7 }`."""
    options = dict(value) if isinstance(value, dict) else {}
    name = options.pop("name", None) if isinstance(value, dict) else value
    if not isinstance(name, str):
        raise UsageError(f"{where}: key 'likelihood' must be a name or a table with key 'name', got {value!r}")
    return name, options


def _budget(table: dict[str, Any], base: Budget, where: str, prefix: str) -> Budget:
    values = {key: value for key, value in table.items() if not isinstance(value, dict)}
    for key, value in values.items():
        if key not in _BUDGET_KEYS:
            raise unknown_choice("key", f"{prefix}.{key}", [f"{prefix}.{k}" for k in _BUDGET_KEYS], where)
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise UsageError(f"{where}: key '{prefix}.{key}' must be a positive number, got {value!r}")
    check_types(values, typing.get_type_hints(Budget), prefix, where)
    merged = {f.name: getattr(base, f.name) for f in fields(Budget)} | values
    if merged["max_epochs"] is None and merged["max_steps"] is None:
        raise UsageError(f"{where}: '{prefix}' needs max_epochs or max_steps")
    return Budget(**merged)


def is_forecasting(task: TaskSpec) -> bool:
    """Whether the task's data are forecasting windows (its metrics may then read them)."""
    return task.data.get("source") == "timeseries"


def _validated(task: TaskSpec, methods: Sequence[MethodSpec]) -> TaskSpec:
    """`task` with every name and value it refers to checked (imports the data, model and method modules), and
    its [methods.X] tables in the form the method's fields hold."""
    from bnnbench.data import check_data_config
    from bnnbench.data.splits import check_eval_config
    from bnnbench.likelihoods import get_likelihood
    from bnnbench.models import check_model_config
    from bnnbench.reference import check_reference_config

    where = str(task.path)
    likelihood = get_likelihood(task.likelihood, task.likelihood_options, where)
    if "reference" in task.eval:
        check_reference_config(task.eval["reference"], likelihood, where)
    check_data_config(task.data, where)
    check_model_config(task.model, where)
    _check_train(task.train, where)
    _check_metrics(task, where)
    check_eval_config(task.eval, where)
    check_network(task)
    for name in task.budget_models:  # each budget's network, as a run at that budget builds it
        at_budget = task_at_budget(task, name)
        check_model_config(at_budget.model, f"{where} [budget.{name}.model]")
        check_network(at_budget)
    return dataclasses.replace(task, methods=_checked_method_tables(task, methods))


def check_network(task: TaskSpec, shapes: tuple[tuple[int, ...], int] | None = None) -> int | None:
    """The parameter count of the task's network for `shapes` (input shape, outputs), by default the shapes its
    data source declares; UsageError, one line, when it cannot be built or is too big (`models.check_buildable`).
    None, unchecked, for a source that declares no shapes: its network is sized once its data are loaded."""
    from bnnbench.data import declared_shapes
    from bnnbench.models import check_buildable

    shapes = shapes or declared_shapes(task.data, str(task.path))
    return None if shapes is None else check_buildable(task.model, *shapes, str(task.path))


def _check_train(train: dict[str, Any], where: str) -> None:
    """[train]: the shared loop's keys (`TrainConfig`), each of its type, then the loop's own ranges."""
    from bnnbench.train import TrainConfig

    train_types = typing.get_type_hints(TrainConfig)
    for key in train:
        if key not in train_types:
            raise unknown_choice("key", f"train.{key}", [f"train.{k}" for k in train_types], where)
    check_types(train, train_types, "train", where)
    try:
        TrainConfig(**train)
    except UsageError as error:
        raise UsageError(f"{where}: [train] {error}") from None


def _check_metrics(task: TaskSpec, where: str) -> None:
    from bnnbench.metrics import metrics_for

    valid_metrics = metrics_for(task.likelihood, with_reference="reference" in task.eval,
                                forecasting=is_forecasting(task), with_hmc=bool(task.posterior))
    for name in task.eval.get("metrics", []):
        if name not in valid_metrics:
            raise unknown_choice("metric in eval.metrics", name, valid_metrics, where)


def _checked_method_tables(task: TaskSpec, methods: Sequence[MethodSpec]) -> dict[str, dict[str, Any]]:
    """[methods.X] and [tune.X]: X a known method, each key one of its hyper-parameters and each value of its
    field's type (returned in that form)."""
    from bnnbench.methods import check_spec_overrides, find_method

    where = str(task.path)
    given = {spec.name: spec for spec in methods}
    tables = {}
    for method, overrides in task.methods.items():
        spec = given.get(method) or find_method(method, where)[0]
        tables[method] = check_spec_overrides(spec, overrides, where)
    for method, dimensions in task.tune.items():
        spec = given.get(method) or find_method(method, where)[0]
        names = [item.name for item in fields(spec.hparams_class)]
        for name in dimensions:
            if name not in names:
                raise unknown_choice(f"hyper-parameter of method '{method}' in tune.{method}", name, names, where)
    return tables
