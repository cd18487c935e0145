"""Method registry. Each family module defines `Hparams` (a frozen dataclass of documented defaults),
`build(**hparams) -> Method` and a public `fit(task, model, data, budget, context)`.

Hyper-parameters resolve in this order, later wins: the method's defaults, the task's [train] table
(keys the method has), the task's [methods.<name>] table, then `--set key=value`.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import fields
from typing import Any

from bnnbench.errors import UsageError, unknown_choice
from bnnbench.registry import Registry
from bnnbench.tasks import range_problem
from bnnbench.types import Method, TaskSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["METHODS", "build_method", "check_method_overrides", "hparam_names", "parse_assignments"]

METHODS: Registry[str] = Registry("method")  # name -> module path, imported on use
METHODS.register("map", "bnnbench.methods.map", "maximum a posteriori point estimate (AdamW = Gaussian prior)")
METHODS.register("score-vi", "bnnbench.methods.vi.score", "proximal score-matching VI, diagonal Gaussian (Kim 2026)")
METHODS.register("elbo-vi", "bnnbench.methods.vi.elbo", "mean-field Gaussian VI by the reparametrised ELBO (ADVI)")
METHODS.register("laplace-ll", "bnnbench.methods.laplace.last_layer", "last-layer Laplace (laplace-torch)")
METHODS.register("laplace-all", "bnnbench.methods.laplace.all_weights", "all-weights Laplace, diag/kron/full")
METHODS.register("laplace-subnet", "bnnbench.methods.laplace.subnetwork",
                 "subnetwork Laplace, full covariance over selected weights (Daxberger et al. 2021)")
METHODS.register("sampled-laplace", "bnnbench.methods.laplace.sampled",
                 "linearised Laplace samples by sample-then-optimise SGD, jvp/vjp only (Antoran et al. 2023)")
METHODS.register("ensemble", "bnnbench.methods.ensemble",
                 "deep ensemble, K independently initialised members trained in one vmapped pass")
METHODS.register("mc-dropout", "bnnbench.methods.mc_dropout", "Monte Carlo dropout, kept on at test time")
METHODS.register("swag", "bnnbench.methods.swag", "SWA-Gaussian, diagonal + rank-20 covariance from SGD iterates")
METHODS.register("rank1", "bnnbench.methods.rank1",
                 "rank-1 BNN, K-component mixture of rank-1 weight factors (Dusenberry et al. 2020)")


def _module(name: str):
    METHODS.check(name)
    return importlib.import_module(METHODS.get(name))


def _coerce(method: str, key: str, value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, tuple | list):
        ok = isinstance(value, list)
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise UsageError(f"{where}: hyper-parameter '{key}' of method '{method}' must be "
                         f"{type(default).__name__}, got {value!r}")
    problem = range_problem(value)
    if problem:
        raise UsageError(f"{where}: hyper-parameter '{key}' of method '{method}' must be {problem}, got {value!r}")
    return value


def hparam_names(name: str) -> list[str]:
    """The hyper-parameters of method `name`."""
    return [f.name for f in fields(_module(name).Hparams)]


def check_method_overrides(name: str, overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate and type-coerce hyper-parameter values for a method; returns the coerced values."""
    defaults = {f.name: f.default for f in fields(_module(name).Hparams)}
    coerced = {}
    for key, value in overrides.items():
        if key not in defaults:
            raise unknown_choice(f"hyper-parameter of method '{name}'", key, defaults, where)
        coerced[key] = _coerce(name, key, value, defaults[key], where)
    return coerced


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """`["lr=3e-4", "schedule=constant"]` -> {"lr": 0.0003, "schedule": "constant"} (TOML values, else text)."""
    parsed = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects key=value, got '{assignment}'")
        try:
            value = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            value = text
        # no key takes NaN, inf (1e400 parses as inf) or an integer past int32: refused before any work
        problem = range_problem(value)
        if problem:
            raise UsageError(f"--set {key.strip()}: value must be {problem}, got {text.strip()!r}")
        parsed[key.strip()] = value
    return parsed


def build_method(name: str, task: TaskSpec, overrides: dict[str, Any] | None = None) -> Method:
    """The method `name` with hyper-parameters resolved for `task` (see module docstring)."""
    module = _module(name)
    accepted = {f.name for f in fields(module.Hparams)}
    values = {key: value for key, value in task.train.items() if key in accepted}
    values |= check_method_overrides(name, task.methods.get(name, {}), str(task.path))
    values |= check_method_overrides(name, overrides or {}, "--set")
    return module.build(**values)
