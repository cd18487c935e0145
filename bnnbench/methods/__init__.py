"""Method registry and the one `build`. Each method module declares its method once, as `SPEC =
MethodSpec(name, Hparams, fit, summary)` (`bnnbench.types.MethodSpec`): `Hparams` a frozen dataclass of documented
defaults, `fit(task, model, data, budget, context, hparams)` public. `build_method` binds the hyper-parameters for
a task and returns the `Method` the runner calls.

Methods come from three places, all as the same `MethodSpec`:
- bnnbench's own, registered below as lazy "module:SPEC" references (listing them imports no torch);
- installed plugins: entry points in group `bnnbench.methods` whose value is "module:attr" of a MethodSpec, found
  the first time the registry is consulted. A plugin that clashes with a name already taken is refused, and one
  that cannot be loaded is one warning line when listed (an error only when it is asked for);
- `--method package.module:attr`: a MethodSpec in any importable module, installed or not.

Hyper-parameters resolve in this order, later wins: the method's defaults, the task's [train] table
(keys the method has), the task's [methods.<name>] table, then `--set key=value`.
"""

from __future__ import annotations

import functools
import sys
import typing
from dataclasses import fields
from typing import Any

from bnnbench.errors import UsageError, error_line, unknown_choice
from bnnbench.registry import Registry, import_reference
from bnnbench.schema import conform, value_problem
from bnnbench.tomlfile import parse_value
from bnnbench.types import METHOD_NAME, Method, MethodOrigin, MethodSpec, TaskSpec

__all__ = ["BUILT_IN", "METHODS", "PLUGIN_GROUP", "bind", "bind_for_task", "build_method", "check_likelihood",
           "check_spec_overrides", "find_method", "method_registry",
           "origin_label", "parse_assignments", "warn"]

PLUGIN_GROUP = "bnnbench.methods"


def warn(line: str) -> None:
    """One line on stderr: a plugin problem must not stop a command that does not need the plugin."""
    sys.stderr.write(f"warning: {line}\n")


def _entry_point_origin(entry_point) -> MethodOrigin:
    distribution = getattr(entry_point, "dist", None)
    if distribution is None:  # entry points always come from a distribution's metadata; be safe all the same
        return MethodOrigin(None, None, entry_point.value)
    return MethodOrigin(distribution.name, distribution.version, entry_point.value)


def _discover_plugins(registry: Registry[MethodSpec]) -> None:
    """Register the installed plugins (entry points of group `bnnbench.methods`) without importing them."""
    from importlib.metadata import entry_points

    try:
        found = entry_points(group=PLUGIN_GROUP)
    except Exception as error:  # one distribution's malformed metadata must not take the built-ins down
        warn(f"method plugins could not be listed: {error_line(error)}")
        return
    for entry_point in sorted(found, key=lambda point: (point.name, _entry_point_origin(point).label)):
        origin = _entry_point_origin(entry_point)
        name = entry_point.name
        if name in registry:
            taken = registry.origin(name)
            by = "a built-in method" if taken is None else f"the plugin from {taken.label}"
            warn(f"method plugin '{name}' from {origin.label} is ignored: the name is taken by {by}")
        elif not METHOD_NAME.fullmatch(name):
            warn(f"method plugin '{name}' from {origin.label} is ignored: a method name must match "
                 f"{METHOD_NAME.pattern}")
        else:
            registry.register(name, entry_point.value, origin=origin)


# name, "module:SPEC", summary. The summary is the SPEC's, repeated so that listing imports no torch (a test keeps
# the two equal).
BUILT_IN = (
    ("map", "bnnbench.methods.map:SPEC",
     "maximum a posteriori point estimate (AdamW = Gaussian prior)"),
    ("score-vi", "bnnbench.methods.vi.score:SPEC",
     "proximal score-matching VI, diagonal Gaussian (Kim 2026)"),
    ("elbo-vi", "bnnbench.methods.vi.elbo:SPEC",
     "mean-field Gaussian VI by the reparametrised ELBO (ADVI)"),
    ("gsm", "bnnbench.methods.vi.gsm_bam:GSM_SPEC",
     "Gaussian score matching, full covariance (Modi et al. 2023)"),
    ("bam", "bnnbench.methods.vi.gsm_bam:BAM_SPEC",
     "batch-and-match VI, full covariance (Cai et al. 2024)"),
    ("laplace-ll", "bnnbench.methods.laplace.last_layer:SPEC",
     "last-layer Laplace (laplace-torch)"),
    ("laplace-all", "bnnbench.methods.laplace.all_weights:SPEC",
     "all-weights Laplace, diag/kron/full"),
    ("laplace-subnet", "bnnbench.methods.laplace.subnetwork:SPEC",
     "subnetwork Laplace, full covariance over selected weights (Daxberger et al. 2021)"),
    ("sampled-laplace", "bnnbench.methods.laplace.sampled:SPEC",
     "linearised Laplace samples by sample-then-optimise, jvp/vjp only (Antoran et al. 2023)"),
    ("ensemble", "bnnbench.methods.ensemble:SPEC",
     "deep ensemble, K independently initialised members trained in one vmapped pass"),
    ("mc-dropout", "bnnbench.methods.mc_dropout:SPEC",
     "Monte Carlo dropout, kept on at test time"),
    ("swag", "bnnbench.methods.swag:SPEC",
     "SWA-Gaussian, diagonal + rank-20 covariance from SGD iterates"),
    ("rank1", "bnnbench.methods.rank1:SPEC",
     "rank-1 BNN, K-component mixture of rank-1 weight factors (Dusenberry et al. 2020)"),
)


def method_registry() -> Registry[MethodSpec]:
    """A registry of bnnbench's methods (name -> "module:SPEC"); installed plugins join it on its first lookup."""
    registry: Registry[MethodSpec] = Registry("method", discover=_discover_plugins)
    for name, reference, summary in BUILT_IN:
        registry.register(name, reference, summary)
    return registry


METHODS = method_registry()


def origin_label(origin: MethodOrigin | None) -> str:
    """Where a method comes from, for `bnnbench list methods`: "built-in", or a plugin's "dist version"."""
    return "built-in" if origin is None else origin.label


def find_method(name: str, where: str = "") -> tuple[MethodSpec, MethodOrigin | None]:
    """The spec of method `name` (a registered name, or "package.module:attr") and where it comes from (None
    for bnnbench's own). Raises UsageError, one line, for an unknown name or a plugin that cannot be loaded."""
    if ":" in name:
        return _spec_from_reference(name)
    METHODS.check(name, where)
    origin = METHODS.origin(name)
    if origin is None:  # bnnbench's own: a failure to import is a bug to see whole, not a usage error
        return METHODS.get(name), None
    try:
        spec = METHODS.get(name)
    except Exception as error:
        raise UsageError(f"method plugin '{name}' from {origin.label} cannot be loaded from '{origin.reference}': "
                         f"{error_line(error)}") from None
    if not isinstance(spec, MethodSpec):
        raise UsageError(f"method plugin '{name}' from {origin.label}: '{origin.reference}' is a "
                         f"{type(spec).__name__}, not a bnnbench.types.MethodSpec")
    if spec.name != name:
        raise UsageError(f"method plugin '{name}' from {origin.label}: its MethodSpec is named '{spec.name}'; "
                         "the entry point's name and the spec's name must be the same")
    return spec, origin


def _spec_from_reference(reference: str) -> tuple[MethodSpec, MethodOrigin | None]:
    """`--method package.module:attr`: a spec from any importable module, not registered."""
    module, _, attribute = reference.partition(":")
    if not module or not attribute or ":" in attribute:
        raise UsageError(f"method '{reference}': expected a method name or package.module:attr")
    try:
        spec = import_reference(reference)
    except Exception as error:
        raise UsageError(f"method '{reference}' cannot be loaded: {error_line(error)}") from None
    if not isinstance(spec, MethodSpec):
        raise UsageError(f"method '{reference}' is a {type(spec).__name__}, not a bnnbench.types.MethodSpec")
    if spec.name in METHODS:  # results are filed by method name: two different methods must not share one
        registered, origin = find_method(spec.name)
        if registered is spec:  # the installed plugin itself, named by its module
            return spec, origin
        taken = "a built-in method" if origin is None else f"the plugin from {origin.label}"
        raise UsageError(f"method '{reference}' is named '{spec.name}', which is taken by {taken}; rename it")
    return spec, _module_origin(reference)


def _module_origin(reference: str) -> MethodOrigin:
    """The distribution that installs the reference's top-level package, if any; else the package's
    `__version__`, if it has one."""
    from importlib import metadata

    package = reference.partition(":")[0].partition(".")[0]
    for distribution in metadata.packages_distributions().get(package, []):
        try:
            return MethodOrigin(distribution, metadata.version(distribution), reference)
        except metadata.PackageNotFoundError:
            continue
    version = getattr(sys.modules.get(package), "__version__", None)
    return MethodOrigin(None, None if version is None else str(version), reference)


def check_spec_overrides(spec: MethodSpec, overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """`check_method_overrides` for a method given by its spec: each value against its field's annotation in the
    method's `Hparams` (`bnnbench.schema`), returned in the form the field holds (a float, a tuple)."""
    hints = typing.get_type_hints(spec.hparams_class)
    coerced = {}
    for key, value in overrides.items():
        if key not in hints:
            raise unknown_choice(f"hyper-parameter of method '{spec.name}'", key, hints, where)
        problem = value_problem(value, hints[key])
        if problem:
            raise UsageError(f"{where}: hyper-parameter '{key}' of method '{spec.name}' must be {problem}, "
                             f"got {value!r}")
        coerced[key] = conform(value, hints[key])
    return coerced


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """`["lr=3e-4", "schedule=constant"]` -> {"lr": 0.0003, "schedule": "constant"} (TOML values, else text). Only
    the syntax is checked here: each value meets its rule where its key is known (a method's hyper-parameter, a
    model's option), as a task table's value does."""
    parsed = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects key=value, got '{assignment}'")
        parsed[key.strip()] = parse_value(text)
    return parsed


def bind(spec: MethodSpec, origin: MethodOrigin | None = None, **hparams: Any) -> Method:
    """The one `build` of every method: its hyper-parameters bound into its fit. Unknown names raise TypeError
    (`build_method` checks them first, with a did-you-mean message)."""
    bound = spec.hparams_class(**hparams)
    return Method(name=spec.name, hparams=bound, fit=functools.partial(spec.fit, hparams=bound), origin=origin,
                  post_hoc=spec.post_hoc)


def check_likelihood(spec: MethodSpec, task: TaskSpec) -> None:
    """Refuse, before anything runs, a task whose likelihood the method does not fit."""
    if spec.likelihoods is not None and task.likelihood not in spec.likelihoods:
        raise UsageError(f"{task.path}: method '{spec.name}' fits only {', '.join(spec.likelihoods)} likelihoods, "
                         f"not '{task.likelihood}'")


def build_method(name: str, task: TaskSpec, overrides: dict[str, Any] | None = None) -> Method:
    """The method `name` (or "package.module:attr") with hyper-parameters resolved for `task` (see module
    docstring)."""
    spec, origin = find_method(name)
    return bind_for_task(spec, task, overrides, origin)


def bind_for_task(spec: MethodSpec, task: TaskSpec, overrides: dict[str, Any] | None = None,
                  origin: MethodOrigin | None = None) -> Method:
    """`build_method` for a method given by its spec. The task's tables were checked when it was loaded; the
    overrides (`--set`) are checked here, the one place they meet the method's fields."""
    check_likelihood(spec, task)
    accepted = {f.name for f in fields(spec.hparams_class)}
    values = {key: value for key, value in task.train.items() if key in accepted}
    chosen = {**task.methods.get(spec.name, {}), **check_spec_overrides(spec, overrides or {}, "--set")}
    values |= chosen
    if task.posterior and spec.posterior_settings is not None:
        values |= _posterior_values(spec, task, chosen)
    return bind(spec, origin, **values)


def _posterior_values(spec: MethodSpec, task: TaskSpec, chosen: dict[str, Any]) -> dict[str, Any]:
    """The method's settings for the task's [posterior] table; a task table or --set that contradicts one is an
    error rather than silently overruled: on a fidelity task every method targets that one posterior."""
    forced = spec.posterior_settings(task.posterior)
    for key, value in forced.items():
        if key in chosen and chosen[key] != value:
            raise UsageError(f"{task.path}: method '{spec.name}' setting {key} = {chosen[key]!r} contradicts the "
                             f"task's [posterior] table, which fixes it to {value!r}")
    return forced
