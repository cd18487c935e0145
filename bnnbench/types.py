"""The contracts between tasks, methods, the evaluator and results; nothing else lives here."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:  # torch is heavy: `bnnbench list` must not import it
    import torch
    from torch import Tensor, nn

__all__ = [
    "Budget",
    "DataBundle",
    "Dimension",
    "EvalSplit",
    "FitContext",
    "FitInfo",
    "Method",
    "MethodOrigin",
    "MethodSpec",
    "ParameterPosterior",
    "Predictive",
    "Split",
    "TaskSpec",
    "Windows",
]


@dataclass(frozen=True)
class Budget:
    """How much compute a fit may use; the first limit reached stops training."""

    max_epochs: int | None = None
    max_steps: int | None = None
    max_seconds: float | None = None
    n_eval_samples: int = 32  # posterior samples the evaluator asks each Predictive for


@dataclass(frozen=True)
class Resources:
    """What one run asks a cluster scheduler (Ray) for. Not part of a run's configuration: it does not change
    the numbers, only where a run may execute."""

    cpus: float = 1.0
    gpus: float = 0.0


@dataclass(frozen=True)
class TaskSpec:
    """A parsed, structurally valid task file. Sections are plain dicts, checked by their consumers."""

    name: str
    version: int
    description: str
    likelihood: str
    likelihood_options: dict[str, Any]  # e.g. {"noise_std": 0.7} for a gaussian with fixed noise
    data: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any]  # task defaults for the shared training loop (lr, batch_size, ...)
    budget: Budget
    budgets: dict[str, Budget]  # named alternatives, e.g. "ci"
    eval: dict[str, Any]
    methods: dict[str, dict[str, Any]]  # per-method hyper-parameter overrides
    path: Path
    resources: dict[str, Resources] = field(default_factory=lambda: {"default": Resources()})  # per budget name
    # [posterior]: the one posterior every method targets on a fidelity task (empty: each method's own prior)
    posterior: dict[str, Any] = field(default_factory=dict)
    # [tune.<method>]: search-space dimensions replacing a method's own for `bnnbench tune` (name -> Dimension)
    tune: dict[str, dict[str, Dimension]] = field(default_factory=dict)
    # [budget.<name>.model]: [model] keys a named budget replaces (a network a CPU smoke run can afford), per budget
    budget_models: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Windows:
    """Per-example facts of forecasting windows that the evaluator needs, each (N,): the normalisation the
    data applied to each window (`y = (series - shift) / scale`), which it undoes before scoring, the
    seasonal naive error of the history before the window (MASE's scale), in series units, and the standard
    deviation of the training part of the window's series (the scale of the long-term forecasting literature's
    z-scored MSE and MAE; None where the data do not say)."""

    shift: Tensor
    scale: Tensor
    seasonal_error: Tensor
    train_std: Tensor | None = None


@dataclass(frozen=True)
class Split:
    """Inputs and targets held in memory as tensors (small tasks; large ones index lazily later).
    Forecasting splits hold normalised windows and say how to map them back (`windows`)."""

    x: Tensor
    y: Tensor
    windows: Windows | None = None

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class DataBundle:
    """What a method may see: train and validation data, never test."""

    train: Split
    val: Split
    num_outputs: int  # the model's output width: classes, or the target's width for regression
    input_shape: tuple[int, ...]


@dataclass(frozen=True)
class EvalSplit:
    """One evaluation set, owned by the evaluator. Clean data has corruption 'none' and severity 0."""

    split: str  # "val" or "test"
    corruption: str
    severity: int
    data: Split


@dataclass(frozen=True)
class FitContext:
    """Where and how a fit runs; identical for every method."""

    device: torch.device
    seed: int
    show_progress: bool = True
    # `map_store.MapStore`: where `train_map` looks for, and keeps, a MAP already trained (None: no store)
    map_store: Any = None
    # `pruning.EpochMonitor`: told the validation NLL after each training epoch of a tuning trial (None: no trial)
    monitor: Any = None


@dataclass
class FitInfo:
    """What a fit actually used, plus method diagnostics (recorded in run.json)."""

    steps: int
    epochs: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


class Predictive(Protocol):
    """A fitted posterior approximation's predictive.

    `predict(x, n_samples)` returns per-sample outputs of shape (S, B, ...): log-probabilities for
    classification. Deterministic predictives return S = 1. The evaluator mixes the S samples.
    """

    def predict(self, x: Tensor, n_samples: int) -> Tensor: ...


@runtime_checkable
class ParameterPosterior(Protocol):
    """A predictive that states its posterior's mean and variance per model parameter, keyed by the model's
    parameter names: what the sanity tasks score against the exact posterior (`w2_mean_err`, `var_ratio`).
    Optional: a predictive declares it by subclassing, and the evaluator asks with `isinstance`."""

    def parameter_moments(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]: ...


FitFn = Callable[["TaskSpec", "nn.Module", DataBundle, Budget, FitContext], tuple[Predictive, FitInfo]]


DISTRIBUTIONS = ("log-uniform", "uniform", "categorical")


@dataclass(frozen=True)
class Dimension:
    """One axis of a method's hyper-parameter search space (`bnnbench tune`): `name` is a field of the method's
    Hparams; "log-uniform" and "uniform" draw from [low, high] (integers for an int field), "categorical" one of
    `choices`. Declared beside the Hparams in the method's module; a task's `[tune.<method>]` table overrides it."""

    name: str
    distribution: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()

    def problem(self) -> str:
        """What is wrong with this dimension, or "" (the one-line reason for a UsageError)."""
        if self.distribution not in DISTRIBUTIONS:
            return f"unknown distribution '{self.distribution}'; valid choices: {', '.join(DISTRIBUTIONS)}"
        if self.distribution == "categorical":
            return "" if self.choices and self.low is None and self.high is None else \
                "a categorical dimension takes a non-empty `choices` list and no low/high"
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (self.low, self.high))
        if not numbers or self.choices or not self.low < self.high:
            return f"a {self.distribution} dimension takes numbers low < high and no choices"
        if self.distribution == "log-uniform" and self.low <= 0:
            return "a log-uniform dimension needs low > 0"
        return ""

    def as_table(self) -> dict[str, Any]:
        """The dimension as a task file writes it in `[tune.<method>]`."""
        if self.distribution == "categorical":
            return {"distribution": self.distribution, "choices": list(self.choices)}
        return {"distribution": self.distribution, "low": self.low, "high": self.high}


# Method names are directory names and a dot-separated part of run ids: lower case, digits, '-' and '_'.
METHOD_NAME = re.compile(r"[a-z][a-z0-9_-]*")


@dataclass(frozen=True)
class MethodSpec:
    """Everything bnnbench needs to know about a method, declared once in the method's module (`SPEC`).

    `hparams_class` is a frozen dataclass whose fields all have defaults (the documented settings); `fit(task,
    model, data, budget, context, hparams=...)` trains and returns `(Predictive, FitInfo)`; `summary` is the line
    `bnnbench list methods` shows for a plugin (bnnbench's own methods have theirs in the method registry, so that
    listing imports no torch). `likelihoods` names the task likelihoods the method can fit (None: any); a
    task with another is refused before anything runs. `posterior_settings`, given a task's `[posterior]` table
    ({"prior_std", "temperature"}), returns the hyper-parameter values that make the method target exactly that
    posterior (or raises UsageError if it cannot); a method without it reads `task.posterior` in `fit`, or has no
    prior of its own. Built-in methods and plugins declare the same object.

    Traits, declared rather than guessed from a name: `post_hoc` (the fit trains a MAP network with the shared loop,
    then builds its posterior around it; `FitInfo.extra["map_seconds"]` holds that training's seconds) and
    `needs_validation(hparams)` (whether the fit, with these settings, scores the validation split: a task without
    one is then refused before anything runs) and `check_memory(network, hparams, device)` (given the task's network
    built on the meta device, raise UsageError, naming the variant that fits, when the fit would not fit in the
    device's memory: a run is then refused at the door, before its data are read).
    """

    name: str
    hparams_class: type
    fit: Callable[..., tuple[Predictive, FitInfo]]
    summary: str = ""
    likelihoods: tuple[str, ...] | None = None
    posterior_settings: Callable[[dict[str, float]], dict[str, Any]] | None = None
    search_space: tuple[Dimension, ...] = ()
    post_hoc: bool = False
    needs_validation: Callable[[Any], bool] | None = None
    check_memory: Callable[[Any, Any, Any], None] | None = None

    def __post_init__(self) -> None:
        # checked here, at the plugin's import, so that a mistake names the method instead of failing mid-run
        if not isinstance(self.name, str) or not METHOD_NAME.fullmatch(self.name):
            raise ValueError(f"method name {self.name!r} must match {METHOD_NAME.pattern} (it names directories "
                             "and is part of run ids)")
        hparams = self.hparams_class
        if not (isinstance(hparams, type) and dataclasses.is_dataclass(hparams)
                and hparams.__dataclass_params__.frozen):
            raise TypeError(f"method '{self.name}': hparams_class must be a frozen dataclass, got {hparams!r}")
        without_default = [f.name for f in dataclasses.fields(hparams) if f.default is dataclasses.MISSING]
        if without_default:
            raise TypeError(f"method '{self.name}': every hyper-parameter needs a plain default (it is what a task "
                            f"may override and what --set is checked against); missing: {', '.join(without_default)}")
        if not callable(self.fit) or "hparams" not in inspect.signature(self.fit).parameters:
            raise TypeError(f"method '{self.name}': fit must be a function taking (task, model, data, budget, "
                            "context, hparams)")
        if not isinstance(self.summary, str):
            raise TypeError(f"method '{self.name}': summary must be a string")
        names = {f.name for f in dataclasses.fields(hparams)}
        for dimension in self.search_space:
            if not isinstance(dimension, Dimension):
                reason = "not a Dimension"
            else:
                reason = dimension.problem() or ("" if dimension.name in names else "not one of its hyper-parameters")
            if reason:
                raise TypeError(f"method '{self.name}': search_space entry {dimension!r}: {reason}")
        if self.likelihoods is not None and not (isinstance(self.likelihoods, tuple)
                                                 and all(isinstance(name, str) for name in self.likelihoods)):
            raise TypeError(f"method '{self.name}': likelihoods must be a tuple of likelihood names or None")


@dataclass(frozen=True)
class MethodOrigin:
    """Where a method from outside bnnbench comes from: the distribution that installs it (None when its module
    was only found on the import path) and that distribution's version (else the module's `__version__`, if
    any), and the "module:attr" reference it was loaded from. Built-in methods have no origin."""

    distribution: str | None
    version: str | None
    reference: str

    @property
    def label(self) -> str:
        """"dist 1.2.0" for a plugin; the reference for a module found on the import path."""
        if self.distribution is None:
            return self.reference + (f" {self.version}" if self.version else "")
        return f"{self.distribution} {self.version}"


class Method(NamedTuple):
    """A method with its hyper-parameters bound: `fit(task, model, data, budget, context)`."""

    name: str
    hparams: Any  # the method's frozen hyper-parameter dataclass
    fit: FitFn
    origin: MethodOrigin | None = None  # None for bnnbench's own methods
    post_hoc: bool = False  # the spec's trait (MethodSpec.post_hoc)
