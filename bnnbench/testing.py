"""A conformance kit for method authors: `check_method(SPEC)` fits a method on small slices of the embedded digits
tasks and checks the contract bnnbench relies on, raising AssertionError that names the method, the task and the
property that failed.

What is checked, per task (an MLP, a CNN and a timm ViT by default):
- fit returns a `Predictive` and a `FitInfo` (steps and epochs non-negative integers, seconds non-negative, extra a
  dict that run.json can hold: JSON after `results.json_safe`);
- `predict(x, n_samples)` returns (S, B, C) finite log-probabilities that normalise over the classes;
- two fits under one seed predict identically (with the global generator reset before predicting, as `runner.run`
  does, so sampling predictives draw the same samples);
- a fit whose loss becomes NaN (NaN training inputs) raises bnnbench's failure error, not a NaN predictive;
- a predictive that declares `ParameterPosterior` states moments keyed by the network's parameter names, of their
  shapes, finite, with variances >= 0;
and once: an unknown hyper-parameter, and a value of the wrong type for each one, are a `UsageError` when bound.

A check that cannot apply to a method is skipped, with its reason, in the returned report, rather than passed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from bnnbench.errors import BnnbenchError, UsageError
from bnnbench.methods import bind_for_task, check_spec_overrides, find_method
from bnnbench.results import json_safe
from bnnbench.types import (
    Budget,
    DataBundle,
    FitContext,
    FitInfo,
    Method,
    MethodSpec,
    ParameterPosterior,
    Split,
    TaskSpec,
)

__all__ = ["DIGITS_TASKS", "ONE_EPOCH", "ConformanceReport", "check_method"]

DIGITS_TASKS = ("digits-mlp", "digits-cnn", "digits-vit")
ONE_EPOCH = Budget(max_epochs=1)
PREDICT_ROWS = 7  # odd on purpose: a predictive that assumes the training batch size shows it


@dataclass
class ConformanceReport:
    """What `check_method` did: seconds per task, and the checks it skipped with why ("task: check" -> reason)."""

    method: str
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


class _Failure:
    """Assertion messages of one method on one task: "method 'x' on task 'y': <property>: <detail>"."""

    def __init__(self, method: str, task: str) -> None:
        self.prefix = f"method '{method}' on task '{task}'"

    def check(self, holds: bool, prop: str, detail: str) -> None:
        if not holds:
            raise AssertionError(f"{self.prefix}: {prop}: {detail}")


def check_method(method: MethodSpec | str, tasks: Sequence[str] = DIGITS_TASKS,
                 budget: Budget = ONE_EPOCH, overrides: dict[str, Any] | None = None,
                 train_rows: int = 64, val_rows: int = 64, n_samples: int = 4, seed: int = 0,
                 device: str = "cpu") -> ConformanceReport:
    """Run the method contract on each task (names or paths of task files); see the module docstring.

    `method` is a `MethodSpec`, a registered name or "package.module:attr". `overrides` are hyper-parameters as
    `--set` gives them. Training uses the first `train_rows` training rows (and `val_rows` validation rows), so
    a check takes seconds. Returns a report; raises AssertionError on the first property that does not hold.
    """
    from bnnbench.tasks import load_task

    spec, origin = (method, None) if isinstance(method, MethodSpec) else find_method(method)
    report = ConformanceReport(spec.name)
    _check_hyper_parameters(spec)
    for task_name in tasks:
        start = time.perf_counter()
        task = load_task(task_name)
        try:
            bound = bind_for_task(spec, task, overrides, origin)
        except UsageError as error:
            if spec.likelihoods is not None and task.likelihood not in spec.likelihoods:
                report.skipped[f"{task.name}: all"] = str(error)
                continue
            raise AssertionError(f"method '{spec.name}' on task '{task.name}': binding its hyper-parameters: "
                                 f"{error}") from error
        bundle = _small_bundle(task, train_rows, val_rows)
        _check_task(bound, task, bundle, budget, FitContext(torch.device(device), seed, False), n_samples, report)
        report.seconds[task.name] = time.perf_counter() - start
    return report


def _small_bundle(task: TaskSpec, train_rows: int, val_rows: int) -> DataBundle:
    from bnnbench.data import load_data

    bundle = load_data(task.data, str(task.path)).bundle
    return dataclasses.replace(bundle, train=Split(bundle.train.x[:train_rows], bundle.train.y[:train_rows]),
                               val=Split(bundle.val.x[:val_rows], bundle.val.y[:val_rows]))


def _fit(method: Method, task: TaskSpec, bundle: DataBundle, budget: Budget, context: FitContext):
    from bnnbench.models import create_model

    torch.manual_seed(context.seed)  # as runner.run: the seed decides the initial weights and the fit's draws
    model = create_model(task.model, bundle.input_shape, bundle.num_outputs, str(task.path))
    return method.fit(task, model, bundle, budget, context)


def _predict(predictive: Any, x: torch.Tensor, n_samples: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)  # as runner.run: sampling predictives draw from the global generator
    return predictive.predict(x, n_samples)


def _check_task(method: Method, task: TaskSpec, bundle: DataBundle, budget: Budget, context: FitContext,
                n_samples: int, report: ConformanceReport) -> None:
    failure = _Failure(method.name, task.name)
    x = bundle.val.x[:PREDICT_ROWS].to(context.device)

    try:
        result = _fit(method, task, bundle, budget, context)
    except Exception as error:  # the message must say which method and network broke, whatever was raised
        raise AssertionError(f"{failure.prefix}: fit raised {type(error).__name__}: {error}") from error
    failure.check(isinstance(result, tuple) and len(result) == 2, "fit", f"must return (Predictive, FitInfo), "
                  f"got {type(result).__name__}")
    predictive, info = result
    _check_fit_info(info, failure)
    failure.check(callable(getattr(predictive, "predict", None)), "predictive",
                  f"{type(predictive).__name__} has no predict(x, n_samples)")
    log_probs = _predict(predictive, x, n_samples, context.seed)
    _check_log_probs(log_probs, len(x), bundle.num_outputs, failure)
    if isinstance(predictive, ParameterPosterior):
        _check_moments(predictive, task, bundle, failure)

    again, _ = _fit(method, task, bundle, budget, context)
    repeated = _predict(again, x, n_samples, context.seed)
    failure.check(repeated.shape == log_probs.shape and torch.equal(repeated, log_probs), "determinism",
                  "two fits under the same seed predict differently (max abs difference "
                  f"{(repeated - log_probs).abs().max().item() if repeated.shape == log_probs.shape else 'n/a'}); "
                  "draw randomness from the global torch generator or one seeded from context.seed")

    _check_nan_guard(method, task, bundle, budget, context, n_samples, failure, report)


def _check_fit_info(info: Any, failure: _Failure) -> None:
    failure.check(isinstance(info, FitInfo), "FitInfo", f"fit's second value must be a FitInfo, got "
                  f"{type(info).__name__}")
    for name in ("steps", "epochs"):
        value = getattr(info, name)
        failure.check(isinstance(value, int) and not isinstance(value, bool) and value >= 0, f"FitInfo.{name}",
                      f"must be a non-negative int, got {value!r}")
    failure.check(isinstance(info.seconds, int | float) and info.seconds >= 0, "FitInfo.seconds",
                  f"must be a non-negative number, got {info.seconds!r}")
    failure.check(isinstance(info.extra, dict), "FitInfo.extra", f"must be a dict, got {type(info.extra).__name__}")
    try:  # what run.json will hold: tensors and numpy arrays are not JSON, a NaN becomes null
        json.dumps(json_safe(info.extra), allow_nan=False)
    except (TypeError, ValueError) as error:
        failure.check(False, "FitInfo.extra", f"is not JSON-serialisable after bnnbench.results.json_safe: {error}")


def _check_moments(predictive: ParameterPosterior, task: TaskSpec, bundle: DataBundle, failure: _Failure) -> None:
    from bnnbench.models import create_model

    shapes = {name: value.shape for name, value in
              create_model(task.model, bundle.input_shape, bundle.num_outputs, str(task.path)).named_parameters()}
    means, variances = predictive.parameter_moments()
    failure.check(set(means) == set(variances) and set(means) <= set(shapes), "parameter_moments",
                  "means and variances must have the same keys, each a parameter name of the network; got "
                  f"{sorted(set(means) ^ set(variances)) or sorted(set(means) - set(shapes))} unmatched")
    for name, mean in means.items():
        variance = variances[name]
        failure.check(mean.shape == variance.shape == shapes[name], "parameter_moments",
                      f"'{name}': mean {tuple(mean.shape)} and variance {tuple(variance.shape)} must have the "
                      f"parameter's shape {tuple(shapes[name])}")
        failure.check(bool(torch.isfinite(mean).all() and torch.isfinite(variance).all() and (variance >= 0).all()),
                      "parameter_moments", f"'{name}': moments must be finite, with variances >= 0")


def _check_log_probs(log_probs: Any, rows: int, classes: int, failure: _Failure) -> None:
    failure.check(isinstance(log_probs, torch.Tensor), "predict", f"must return a Tensor, got "
                  f"{type(log_probs).__name__}")
    failure.check(log_probs.ndim == 3 and log_probs.shape[0] >= 1 and tuple(log_probs.shape[1:]) == (rows, classes),
                  "predict shape", f"expected (S, {rows}, {classes}) with S >= 1, got {tuple(log_probs.shape)}")
    failure.check(log_probs.is_floating_point() and bool(torch.isfinite(log_probs).all()), "predict finite",
                  "log-probabilities must be finite floats")
    totals = log_probs.double().exp().sum(-1)
    failure.check(torch.allclose(totals, torch.ones_like(totals), rtol=0.0, atol=1e-5), "predict normalised",
                  f"exp(log-probabilities) must sum to 1 over classes; off by up to {(totals - 1).abs().max():.2e}")


def _check_nan_guard(method: Method, task: TaskSpec, bundle: DataBundle, budget: Budget, context: FitContext,
                     n_samples: int, failure: _Failure, report: ConformanceReport) -> None:
    # NaN inputs make every method's loss NaN from its first step, whatever its learning-rate settings are called
    poisoned = dataclasses.replace(bundle, train=Split(torch.full_like(bundle.train.x, float("nan")), bundle.train.y))
    try:
        predictive, _ = _fit(method, task, poisoned, budget, context)
    except BnnbenchError:
        return
    except Exception as error:
        failure.check(False, "NaN guard", f"a NaN loss raised {type(error).__name__}: {error}; raise "
                      "bnnbench.errors.DivergenceError (bnnbench.train.train_loop does) so the run is recorded "
                      "as failed")
    log_probs = _predict(predictive, bundle.val.x[:PREDICT_ROWS].to(context.device), n_samples, context.seed)
    failure.check(bool(torch.isfinite(log_probs).all()), "NaN guard", "a fit on NaN inputs returned a predictive "
                  "with non-finite outputs; raise bnnbench.errors.DivergenceError when the loss is not finite")
    report.skipped[f"{task.name}: NaN guard"] = "NaN training inputs did not make the fit diverge (its predictions " \
                                                "stayed finite), so the guard could not be exercised"


def _check_hyper_parameters(spec: MethodSpec) -> None:
    prefix = f"method '{spec.name}': hyper-parameters"
    where = "conformance kit"
    try:
        check_spec_overrides(spec, {"no_such_hyper_parameter": 1}, where)
    except UsageError:
        pass
    else:
        raise AssertionError(f"{prefix}: an unknown key was accepted")
    for item in dataclasses.fields(spec.hparams_class):
        wrong = 1 if isinstance(item.default, str) else "not-a-valid-value"
        try:
            check_spec_overrides(spec, {item.name: wrong}, where)
        except UsageError:
            continue
        raise AssertionError(f"{prefix}: '{item.name}' (default {item.default!r}) accepted {wrong!r}, a value of "
                             "the wrong type")
