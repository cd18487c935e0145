"""Run one (task, method, seed): load data, build the model, fit, evaluate, write results.

`prepare` validates everything a run depends on before anything is written, so bad input fails fast
with a UsageError and leaves no result directory; `run` then does the work for one seed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import resource
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

from bnnbench.errors import BnnbenchError, RunPruned, UsageError, unknown_choice
from bnnbench.results import (
    IDENTITY,
    SCHEMA_VERSION,
    check_writable,
    config_hash,
    git_state,
    machine_name,
    make_run_id,
    run_directory,
    run_ended_ok,
    write_run,
)
from bnnbench.types import Budget, Method, MethodSpec, TaskSpec
from bnnbench.version import __version__

__all__ = ["RunOutcome", "RunPlan", "bind_run", "finished_run", "prepare", "resolve_budget", "run", "run_id_of",
           "select_device"]


@dataclass(frozen=True)
class RunPlan:
    """A validated run configuration, shared by all seeds."""

    task: TaskSpec
    method: Method
    budget: Budget
    budget_name: str
    device_name: str
    results_dir: Path
    config_hash: str
    save_predictions: bool = False
    show_progress: bool = True
    data_root: Path | None = None
    data_variant: str = "standard"  # see EvalPlan.variant
    predictive_reference: Any = None  # a fidelity task's HMC reference (bnnbench.reference.PredictiveReference)
    validation_only: bool = False  # evaluate the validation split alone (`bnnbench tune`'s trials)
    tuning: dict[str, Any] | None = None  # the tuned file the settings came from (`run --tuned`), for run.json
    # torch.compile the network (`--compile`). Like the device, it is where and how the run executes, not what it
    # measures, so it stays out of the config hash; run.json records it (and a fallback to eager).
    compile: bool = False
    identity: dict[str, Any] = dataclasses.field(default_factory=dict)  # what config_hash hashes, for run.json
    # Neither changes what a run computes (the store's loads are bit-equal to training; a trial's monitor only
    # stops a run), so both stay out of the config hash. `map_store`: the MAP checkpoint store's directory;
    # `trial`: the tuning trial this run belongs to (`pruning.TrialLink`, keyed by seed: which seed reports).
    map_store: Path | None = None
    trial: Any = None


@dataclass(frozen=True)
class RunOutcome:
    """Where a run was written and how it ended."""

    run_id: str
    directory: Path
    status: str
    error: str
    record: dict[str, Any]
    clean_test: dict[str, float]  # metric -> value on the clean test split (empty for a failed run)


def resolve_budget(task: TaskSpec, budget_name: str | None, epochs: int | None) -> tuple[Budget, str]:
    """The task's default or named budget, with `--epochs` applied on top."""
    if budget_name in (None, "default"):
        budget, name = task.budget, "default"
    elif budget_name in task.budgets:
        budget, name = task.budgets[budget_name], budget_name
    else:
        raise unknown_choice(f"budget of task '{task.name}'", budget_name, ["default", *task.budgets])
    if epochs is not None:
        if epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {epochs}")
        budget, name = dataclasses.replace(budget, max_epochs=epochs, max_steps=None), f"{name}+epochs={epochs}"
    return budget, name


def select_device(name: str):
    """`auto` takes CUDA when present; asking for CUDA without it is a usage error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise unknown_choice("device", name, ["auto", "cpu", "cuda"])
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but torch sees no CUDA device; valid choices here: auto, cpu")
    return torch.device(name)


def prepare(task: str | Path | TaskSpec, method_name: str, *, overrides: dict[str, Any] | None = None,
            budget_name: str | None = None, epochs: int | None = None, device: str = "auto",
            results_dir: Path = Path("results/runs"), save_predictions: bool = False,
            show_progress: bool = True, data_dir: Path | None = None, task_dirs: Sequence[str | Path] = (),
            load: bool = True, validation_only: bool = False, tuned: Path | None = None,
            compile: bool = False, map_store: Path | None = None, trial: Any = None) -> RunPlan:
    """Validate a run request; raises UsageError (and writes nothing) on any bad input, missing data
    files included (the data are loaded here, once, and shared by the seeds; `load=False` skips them, for
    benchmarks on synthetic inputs). `task` is a name (looked up in `task_dirs` too, `--tasks-dir`), a .toml path,
    or a `TaskSpec` already loaded (a sweep or a study loads its task once); `method_name` is a registered name or
    "package.module:attr". `validation_only` runs score the validation split alone and never touch the test split
    (tuning); they are another configuration (run id) than full runs. `tuned` is a `bnnbench tune` file whose
    settings for the method apply under `overrides` (run.json records which file). `compile` runs the network
    through torch.compile (`bnnbench.compiler`). `map_store` is the MAP checkpoint store's directory
    (`bnnbench.map_store`); `trial` a tuning trial's `pruning.TrialLink` (validation-only runs alone)."""
    from bnnbench.data import declared_shapes
    from bnnbench.data.files import data_root
    from bnnbench.models import check_pretrained_weights
    from bnnbench.tasks import check_network

    task, spec, method, tuning = bind_run(task, method_name, overrides, budget_name, task_dirs, tuned)
    check_pretrained_weights(task.model, str(task.path))
    budget, budget_label = resolve_budget(task, budget_name, epochs)
    device_name = str(select_device(device))
    sample_passes(device_name)  # a bad BNNBENCH_SAMPLE_PASSES is a usage error, before any work
    check_writable(results_dir, task.name, method.name)
    root = data_root(data_dir)
    declared = declared_shapes(task.data, str(task.path))
    if declared is not None:
        _check_memory(task, spec, method, declared, device_name)
    loaded = _load(task, root) if load else None
    if loaded is not None and declared is None:  # only the data give the shapes
        shapes = loaded.bundle.input_shape, loaded.bundle.num_outputs
        check_network(task, shapes)
        _check_memory(task, spec, method, shapes, device_name)
    _check_validation_split(task, spec, method, loaded, validation_only)
    if trial is not None and not validation_only:
        raise UsageError("a tuning trial's runs score the validation split only (validation_only)")
    identity = _identity(task, method, budget, loaded, validation_only, tuning)
    return RunPlan(task, method, budget, budget_label, device_name, Path(results_dir), config_hash(identity.config),
                   save_predictions, show_progress, root, identity.variant, identity.hmc_reference, validation_only,
                   tuning, compile, identity.config, Path(map_store) if map_store is not None else None, trial)


def bind_run(task: str | Path | TaskSpec, method_name: str, overrides: dict[str, Any] | None = None,
             budget_name: str | None = None, task_dirs: Sequence[str | Path] = (),
             tuned: Path | None = None) -> tuple[TaskSpec, MethodSpec, Method, dict[str, Any] | None]:
    """(task, method spec, bound method, tuning record) of a run request, before any device, data or result directory
    is looked at: the task as the named budget sees it, with `--set` (method, model and data keys, over a tuned file's
    settings) applied and checked, its network sized again when they change it."""
    from bnnbench.methods import bind_for_task, find_method
    from bnnbench.tasks import check_network, load_task, task_at_budget

    spec, origin = find_method(method_name)
    if not isinstance(task, TaskSpec):
        task = load_task(task, task_dirs, (spec,))
    tuning = None
    if tuned is not None:
        from bnnbench.tuned import tuned_overrides

        settings, tuning = tuned_overrides(Path(tuned), task, spec.name)
        overrides = {**settings, **(overrides or {})}
    task = task_at_budget(task, budget_name)  # before `--set model.KEY`, which has the last word
    method_overrides, model_overrides, data_overrides = split_overrides(task, spec, overrides or {})
    if model_overrides or data_overrides:  # another network or data than load_task sized: sized again, before any
        task = dataclasses.replace(task, model={**task.model, **model_overrides},  # data are read
                                   data={**task.data, **data_overrides})
        check_network(task)
    return task, spec, bind_for_task(spec, task, method_overrides, origin), tuning


def _check_validation_split(task: TaskSpec, spec: MethodSpec, method: Method, loaded: Any,
                            validation_only: bool) -> None:
    """Refuse, before any work, a run that would score a validation split the task does not have."""
    from bnnbench.metrics import METRICS

    if loaded is None or len(loaded.bundle.val) > 0:
        return
    if validation_only:
        raise UsageError(f"task '{task.name}' has no validation split, which tuning scores; set data.val_fraction")
    scaled = [name for name in task.eval.get("metrics", []) if METRICS.get(name).temperature_scaled]
    if scaled:
        raise UsageError(f"task '{task.name}' has no validation split, on which {', '.join(scaled)} fit their "
                         "temperature; set data.val_fraction or leave them out of eval.metrics")
    if spec.needs_validation is not None and spec.needs_validation(method.hparams):
        raise UsageError(f"method '{spec.name}' with these settings scores a validation split (tune=val) and task "
                         f"'{task.name}' has none; set data.val_fraction, or tune=marglik or tune=none")


def _check_memory(task: TaskSpec, spec: MethodSpec, method: Method, shapes: tuple[tuple[int, ...], int],
                  device_name: str) -> None:
    """Refuse, before any work, a fit its method says would not fit in the device's memory (`check_memory`), sized on
    the task's network for `shapes` (input shape, outputs) built on the meta device (no memory, no weights read)."""
    if spec.check_memory is None:
        return
    import torch

    from bnnbench.models import create_model

    with torch.device("meta"):
        network = create_model(task.model, *shapes, str(task.path))
    spec.check_memory(network, method.hparams, torch.device(device_name))


@dataclass(frozen=True)
class _Identity:
    config: dict[str, Any]  # what the config hash covers
    variant: str
    hmc_reference: Any


def _identity(task: TaskSpec, method: Method, budget: Budget, loaded: Any,
              validation_only: bool, tuning: dict[str, Any] | None) -> _Identity:
    """What makes two runs of one task and method the same experiment: the configuration the config hash covers,
    the data variant and a fidelity task's HMC reference."""
    from bnnbench.data.splits import eval_plan

    variant = eval_plan(task.eval, loaded, str(task.path)).variant if loaded else "standard"
    # Every table that changes the numbers, as loaded and overridden (an edited copy of a task file is another
    # experiment under the same name), and the code's version; not `[resources]` (where a run executes) nor
    # `[methods]`/`[tune]`, which act through the hyper-parameters.
    config = {"hparams": dataclasses.asdict(method.hparams), "budget": dataclasses.asdict(budget),
              "task": {"likelihood": task.likelihood, "likelihood_options": task.likelihood_options,
                       "data": task.data, "model": task.model, "train": task.train, "eval": task.eval,
                       "posterior": task.posterior},
              "bnnbench": __version__}
    if loaded and "data_fingerprint" in loaded.info:  # other files, other experiment: never the same run id
        config["data_fingerprint"] = loaded.info["data_fingerprint"]["sha256"]
    if variant != "standard":  # official and generated CIFAR-10-C runs must not share a run id
        config["data_variant"] = variant
    if method.origin is not None:  # another plugin release is other code: never the same run id (built-ins: no key)
        config["method_origin"] = {"distribution": method.origin.distribution, "version": method.origin.version}
    if validation_only:
        config["validation_only"] = True
    if tuning is not None:  # settings from a tune file are that study's result, even where a hand value equals them
        config["tuned"] = tuning["sha256"]
    hmc_reference = None
    if task.posterior:  # the scores depend on the reference: another reference, another run id
        from bnnbench.reference import find_predictive_reference

        hmc_reference = find_predictive_reference(task)
        config["hmc_reference"] = hmc_reference.sha256
    return _Identity(config, variant, hmc_reference)


def sample_passes(device_name: str) -> str:
    """How this run's posterior samples go through the network on its device (`params.batched_passes`)."""
    import torch

    from bnnbench.params import batched_passes

    return "batched" if batched_passes(torch.device(device_name)) else "loop"


def split_overrides(task: TaskSpec, spec: MethodSpec, overrides: dict[str, Any]) -> tuple[dict, dict, dict]:
    """(method hyper-parameters, model options, data options) from `--set` pairs: `model.KEY` is a model option,
    `data.KEY` a key of the task's [data] table (a forecasting task's horizon: `data.prediction_length`); a bare key is
    the method's hyper-parameter when it has one by that name, else the task model's option. Model and data options
    are checked here against their own rules; the method's are checked where they are bound."""
    from bnnbench.data import check_data_config
    from bnnbench.models import check_model_config, model_options

    hparams = {item.name for item in dataclasses.fields(spec.hparams_class)}
    options = model_options(task.model["name"], str(task.path))
    method, model, data = {}, {}, {}
    for key, value in overrides.items():
        bare = key.removeprefix("model.")
        if key.startswith("data."):
            data[key.removeprefix("data.")] = value
        elif key.startswith("model.") or (key not in hparams and key in options):
            if bare not in options:
                raise unknown_choice(f"option of model '{task.model['name']}'", key,
                                     [f"model.{option}" for option in options], "--set")
            model[bare] = value
        else:
            method[key] = value  # bind_for_task names the valid hyper-parameters if the key is not one
    if model:
        check_model_config({"name": task.model["name"], **model}, "--set")
    if data:
        if "source" in data:
            raise UsageError("--set data.source: another data source is another task; write a task file for it")
        check_data_config({**task.data, **data}, "--set")
    return method, model, data


def _load(task: TaskSpec, root: Path | None):
    return _load_cached(str(task.path), json.dumps(task.data, sort_keys=True), str(root) if root else None)


@cache
def _load_cached(where: str, data_json: str, root: str | None):  # seeds of one task share the data, loaded once
    from bnnbench.data import load_data

    return load_data(json.loads(data_json), where, root)


def run_id_of(plan: RunPlan, seed: int) -> str:
    return make_run_id(plan.task.name, plan.task.version, plan.method.name, plan.config_hash, seed)


def finished_run(plan: RunPlan, seed: int) -> Path | None:
    """The directory of this seed's run when it already ended ok (`bnnbench run` and the API skip it), else None."""
    directory = run_directory(plan.results_dir, plan.task.name, plan.method.name, run_id_of(plan, seed))
    return directory if run_ended_ok(directory) else None


def run(plan: RunPlan, seed: int) -> RunOutcome:
    """Fit and evaluate one seed and write its results. Any exception during fitting or evaluation is a failed
    run (status "failed", the error in run.json, the traceback in traceback.txt beside it), not raised: the
    same for `bnnbench run` and for each run of a sweep. Only an interrupt (Ctrl-C) unwinds, writing nothing."""
    import torch

    from bnnbench.compiler import ModelCompiler

    device = torch.device(plan.device_name)
    run_id = run_id_of(plan, seed)
    record = _base_record(plan, run_id, seed)
    rows: list[dict[str, Any]] = []
    predictions, pointwise, extra_files = None, None, {}
    compiler = ModelCompiler(plan.compile)
    start = time.perf_counter()
    _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        rows, predictions, pointwise = _fit_and_evaluate(plan, seed, device, compiler, record)
    except RunPruned as error:  # a tuning trial's pruner stopped it: an outcome, not a failure
        record.update(status="pruned", error=str(error), pruned_epoch=error.epoch)
        rows, predictions, pointwise = [], None, None
    except Exception as error:  # a method's bug is this run's failure, recorded whole, not a traceback
        record.update(status="failed", error=f"{type(error).__name__}: {error}")
        if not isinstance(error, BnnbenchError):  # ours carry their own explanation; anything else needs the trace
            extra_files["traceback.txt"] = traceback.format_exc()
        rows, predictions, pointwise = [], None, None
    if compiler.error is not None:  # compiling fell back to eager during the run: the timings are eager ones
        record["compile_error"] = compiler.error
    record["duration_s"] = time.perf_counter() - start
    record["peak_rss_mb"] = _peak_rss_mb()
    if device.type == "cuda":
        record["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    directory = run_directory(plan.results_dir, plan.task.name, plan.method.name, run_id)
    write_run(directory, record, rows, predictions, extra_files, pointwise)
    clean_test = {row["metric"]: row["value"] for row in rows
                  if (row["split"], row["corruption"]) == ("test", "none")}
    return RunOutcome(run_id, directory, record["status"], record["error"], record, clean_test)


def _fit_and_evaluate(plan: RunPlan, seed: int, device, compiler, record: dict[str, Any]) -> tuple[list, Any, Any]:
    """The run's work: (its metric rows, its saved test predictions or None, its metrics' per-example terms or
    None); `record` gains what run.json says of the fit and the evaluation. Raises on any failure, which `run`
    records."""
    import numpy as np
    import torch

    from bnnbench.data.splits import eval_plan
    from bnnbench.evaluate import evaluate
    from bnnbench.likelihoods import get_likelihood
    from bnnbench.models import create_model
    from bnnbench.reference import reference_posterior
    from bnnbench.types import FitContext

    task = plan.task
    torch.manual_seed(seed)
    loaded = _load(task, plan.data_root)
    plan_splits = eval_plan(task.eval, loaded, str(task.path), plan.validation_only)
    record.update(corruption_source=plan_splits.corruption_source, data_info=loaded.info)
    model = compiler(create_model(task.model, loaded.bundle.input_shape, loaded.bundle.num_outputs, str(task.path)))
    record["n_params"] = sum(p.numel() for p in model.parameters())
    context = FitContext(device=device, seed=seed, show_progress=plan.show_progress,
                         map_store=_map_store(plan), monitor=_monitor(plan, seed, loaded.bundle, device))
    try:
        predictive, info = plan.method.fit(task, model, loaded.bundle, plan.budget, context)
    finally:  # what the store and the monitor saw, whether the fit ended, failed or was pruned
        if context.map_store is not None:
            record["map_store"] = {"directory": str(plan.map_store), "lookups": context.map_store.events}
        if context.monitor is not None:
            record["trial"] = {"study": plan.trial[seed].study, "number": plan.trial[seed].number,
                               "epochs": context.monitor.epoch, "val_nll": context.monitor.values}
    record.update(fit_seconds=info.seconds, fit_steps=info.steps, fit_epochs=info.epochs, fit_extra=info.extra)
    torch.manual_seed(seed)  # sampling predictives draw from the global generator: same seed, same draws
    likelihood = get_likelihood(task.likelihood, task.likelihood_options, str(task.path))
    reference = (reference_posterior(task.eval["reference"], loaded.bundle.train, likelihood, str(task.path))
                 if "reference" in task.eval else None)
    evaluation = evaluate(predictive, plan_splits, metric_names(task),
                          likelihood, plan.budget.n_eval_samples, int(task.eval.get("batch_size", 1024)),
                          device, reference, plan.show_progress, plan.predictive_reference,
                          pointwise=plan.save_predictions)
    record["eval_seconds"] = evaluation.seconds
    if evaluation.temperature is not None:  # fitted on the validation split for the temperature-scaled metrics
        record["temperature_scaling"] = {"temperature": evaluation.temperature, "fitted_on": "val"}
    keys = {"run_id": record["run_id"], "task": task.name, "task_version": task.version,
            "method": plan.method.name, "seed": seed}
    rows = [keys | row for row in evaluation.rows]
    if not all(np.isfinite(row["value"]) for row in rows):
        raise BnnbenchError("a metric is not finite (the predictive produced NaN or inf)")
    if not plan.save_predictions:
        return rows, None, None
    return rows, evaluation.test_predictions, evaluation.pointwise


def _map_store(plan: RunPlan):
    """The run's MAP store (None without one). Its scope is what the task contributes to a MAP's key: every table
    of the task but not the method's settings (the MAP's own settings enter the key where `train_map` runs)."""
    if plan.map_store is None:
        return None
    import torch

    from bnnbench.map_store import MapStore

    scope = {"task": plan.task.name, "task_version": plan.task.version, "tables": plan.identity.get("task"),
             "data_fingerprint": plan.identity.get("data_fingerprint"), "data_variant": plan.data_variant,
             "bnnbench": __version__, "torch": torch.__version__, "compile": plan.compile,
             "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    return MapStore(plan.map_store, scope)


def _monitor(plan: RunPlan, seed: int, bundle: Any, device):
    """A tuning trial's epoch monitor for this seed's run (None outside a trial)."""
    if plan.trial is None:
        return None
    from bnnbench.likelihoods import get_likelihood
    from bnnbench.pruning import EpochMonitor

    likelihood = get_likelihood(plan.task.likelihood, plan.task.likelihood_options, str(plan.task.path))
    return EpochMonitor(plan.trial[seed], bundle.val, likelihood, int(plan.task.eval.get("batch_size", 1024)),
                        device)


def _reset_peak_rss() -> None:
    """Start this process's resident-memory high-water mark afresh (Linux: `clear_refs` 5), so a sweep worker
    that runs many runs records each run's own peak, not the largest of every run before it."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mb() -> float:
    """Peak resident memory since `_reset_peak_rss` (VmHWM), else over the process's life (ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def metric_names(task: TaskSpec) -> list[str]:
    """The metrics a task's [eval] table names, else every metric its likelihood (and reference) defines."""
    from bnnbench.metrics import metrics_for
    from bnnbench.tasks import is_forecasting

    return task.eval.get("metrics") or metrics_for(task.likelihood, with_reference="reference" in task.eval,
                                                   forecasting=is_forecasting(task), with_hmc=bool(task.posterior))


def _base_record(plan: RunPlan, run_id: str, seed: int) -> dict[str, Any]:
    import numpy
    import torch

    sha, dirty = git_state()
    record = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "task": plan.task.name,
        "task_version": plan.task.version,
        "data_variant": plan.data_variant,
        "method": plan.method.name,
        "seed": seed,
        "hparams": dataclasses.asdict(plan.method.hparams),
        "budget": dataclasses.asdict(plan.budget),
        "budget_name": plan.budget_name,
        "config_hash": plan.config_hash,
        "identity": IDENTITY,
        "identity_config": plan.identity,  # config_hash is its sha256 (results.config_hash)
        "evaluated": "val" if plan.validation_only else "all",
        "status": "ok",
        "error": "",
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": plan.device_name,
        "compile": plan.compile,
        "sample_passes": sample_passes(plan.device_name),
        "threads": torch.get_num_threads(),
        "machine": machine_name(),
        "git_sha": sha,
        "git_dirty": dirty,
        "versions": {"bnnbench": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
                     "python": platform.python_version()},
        "argv": sys.argv,
    }
    if plan.tuning is not None:  # which study chose these settings, and with what budget
        record["tuned"] = plan.tuning
    if plan.method.origin is not None:  # a plugin's distribution and version, or the module it was loaded from
        record["method_origin"] = dataclasses.asdict(plan.method.origin)
    if plan.predictive_reference is not None:  # what agreement/tv were scored against, and how converged it was
        meta = plan.predictive_reference.meta
        record["hmc_reference"] = {"path": str(plan.predictive_reference.path),
                                   "sha256": plan.predictive_reference.sha256,
                                   **{key: meta.get(key) for key in ("chains", "samples", "warmup", "rhat_max",
                                                                     "rhat_p99", "ess_bulk_min", "wall_seconds",
                                                                     "resolution")}}
    return record
