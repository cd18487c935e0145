"""Throughput of a method on a task against the bare network: images/s for training steps and evaluation.

Overhead is reported as a ratio, so a method's cost is separated from the network's:
- train: the method's training steps (its whole fit, setup excluded: the time of a fit of `warmup + steps`
  mini-batches minus that of a fit of `warmup` mini-batches, both after an untimed fit that pays the
  process's first-call costs; the two lengths are fitted `fit_repeats` times in alternation and each keeps its
  fastest fit, timeit's rule, as for eval below) against plain forward, backward and AdamW steps
  of the bare network at the same batch size, under the same autocast, `steps` of them the fastest of
  `fit_repeats` runs. A method that reports its training
  steps' own seconds (the Laplace methods' `map_seconds`) is timed by those: its post-hoc work, seconds that
  do not depend on the step count, would otherwise swamp the difference with its jitter. That post-hoc work is
  reported on its own (`post_hoc_seconds`, the fastest long fit's whole seconds less its steps'), and in epochs of
  the method's own MAP steps over the same training set (`post_hoc_map_epochs`).
- eval: the method's predictive on evaluation batches with `n_samples` posterior samples, counted in
  network forward passes (images x samples) per second, against the bare network's forward pass at the
  same batch size and precision, the two timed call by call in alternation, each at its fastest call.

`synthetic` uses random images of the task's shape: throughput does not depend on pixel values, and it lets
a GPU machine without the data sets measure the same code. Its validation split is one training batch, so the
methods that tune on validation data (Laplace's `tune = "val"`) run as they would on the task.

`compile` compiles every network built here, the method's and the bare one (`bnnbench.compiler`), so the ratios
stay method against network on equal terms and the images/s against an eager bench say what compiling buys.
The untimed first fit pays the compilation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bnnbench.errors import BnnbenchError, UsageError
from bnnbench.types import Budget, DataBundle, FitContext, Split

__all__ = ["BenchResult", "bench"]


@dataclass(frozen=True)
class BenchResult:
    """Images per second (eval: forward passes per second) of the method and of the bare network."""

    device: str
    train_batch: int
    eval_batch: int
    n_samples: int  # posterior samples per evaluation call (1 for a point estimate)
    method_train: float
    bare_train: float
    method_eval: float
    bare_eval: float
    peak_cuda_mb: float | None
    compile: bool = False  # asked for with --compile
    compile_error: str | None = None  # why compiling fell back to eager, if it did
    post_hoc_seconds: float | None = None  # a post-hoc method's work after its training steps (fastest fit)
    train_images: int = 0  # the fit's training set

    @property
    def post_hoc_map_epochs(self) -> float | None:
        """A post-hoc method's work after training (curvature, tuning, sampling) in epochs of its own MAP training
        steps over the same training set: what its fit costs on top of MAP, whatever the device."""
        if self.post_hoc_seconds is None:
            return None
        return self.post_hoc_seconds / (self.train_images / self.method_train)

    @property
    def train_ratio(self) -> float:
        """Method train throughput / bare; below 1 is overhead."""
        return self.method_train / self.bare_train

    @property
    def eval_ratio(self) -> float:
        """Method forward passes/s (images x samples) / bare; below 1 is overhead per pass."""
        return self.method_eval / self.bare_eval

    @property
    def eval_image_ratio(self) -> float:
        """Method images/s / bare: what a test image costs against one bare forward, whatever the samples."""
        return self.eval_ratio / max(self.n_samples, 1)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _synthetic(bundle_shape: tuple[int, ...], n_classes: int, n: int, seed: int = 0) -> Split:
    generator = torch.Generator().manual_seed(seed)
    return Split(torch.rand(n, *bundle_shape, generator=generator),
                 torch.randint(0, n_classes, (n,), generator=generator))


STEP_SECONDS = "map_seconds"  # FitInfo.extra key of a post-hoc method's training-loop seconds


def _timed_fit(task, method, data: DataBundle, steps: int, device: torch.device, build_model):
    """(predictive, seconds of the fit's training steps: its whole fit, or, for a post-hoc method, its training
    loop's own, which it reports; and the whole fit's seconds)."""
    model = build_model()
    _synchronize(device)
    start = time.perf_counter()
    predictive, info = method.fit(task, model, data, Budget(max_steps=steps), FitContext(device, 0, False))
    _synchronize(device)
    seconds = time.perf_counter() - start
    return predictive, info.extra[STEP_SECONDS] if method.post_hoc else seconds, seconds


def _bare_train(model: torch.nn.Module, likelihood, x: torch.Tensor, y: torch.Tensor, steps: int,
                warmup: int, repeats: int) -> float:
    """Images/s of `steps` AdamW steps after `warmup` untimed ones, the fastest of `repeats` runs of them."""
    from bnnbench.train import TrainConfig, adamw, autocast

    optimizer = adamw([{"params": list(model.parameters())}], TrainConfig())
    device = x.device

    def run(n: int) -> float:
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(n):
            with autocast(device):
                loss = -likelihood.log_likelihood(model(x), y).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _synchronize(device)
        return time.perf_counter() - start

    run(warmup)
    return steps * len(x) / min(run(steps) for _ in range(repeats))


@torch.no_grad()
def _paired_forward_rates(method_forward, bare_forward, x: torch.Tensor,
                          repeats: int) -> tuple[float, float, int]:
    """(method passes/s, bare passes/s, method passes per call) over `x`; a call's passes are the samples S of
    the (S, B, ...) it returns. The two are timed call by call in alternation and each keeps its fastest call
    (timeit's rule): load from other processes only ever slows a call down, so the minimum is the least noisy
    estimate, and alternating exposes both to the same load."""
    per_call = method_forward(x).shape[0]
    bare_forward(x)
    best_method = best_bare = float("inf")
    for _ in range(repeats):
        best_method = min(best_method, _seconds(method_forward, x))
        best_bare = min(best_bare, _seconds(bare_forward, x))
    return len(x) * per_call / best_method, len(x) / best_bare, per_call


def _seconds(forward, x: torch.Tensor) -> float:
    _synchronize(x.device)
    start = time.perf_counter()
    forward(x)
    _synchronize(x.device)
    return time.perf_counter() - start


def bench(task_name: str, method_name: str, device: str = "auto", *, steps: int = 50, warmup: int = 10,
          eval_repeats: int = 5, n_samples: int | None = None, eval_batch: int | None = None,
          overrides: dict[str, Any] | None = None, synthetic: bool = False,
          data_dir: Path | None = None, compile: bool = False, fit_repeats: int = 3) -> BenchResult:
    """Measure `method_name` on `task_name` against its bare network (see the module docstring)."""
    from bnnbench.compiler import ModelCompiler
    from bnnbench.data import load_data
    from bnnbench.likelihoods import get_likelihood
    from bnnbench.models import create_model
    from bnnbench.runner import prepare
    from bnnbench.train import TrainConfig, autocast

    plan = prepare(task_name, method_name, overrides=overrides, device=device, show_progress=False,
                   data_dir=data_dir, results_dir=Path("."), load=not synthetic)
    task, method, torch_device = plan.task, plan.method, torch.device(plan.device_name)
    train_batch = getattr(method.hparams, "batch_size", TrainConfig().batch_size)
    eval_batch = eval_batch or int(task.eval.get("batch_size", 1024))
    n_samples = plan.budget.n_eval_samples if n_samples is None else n_samples
    if synthetic:
        shape, classes = _synthetic_shapes(task)
        train = _synthetic(shape, classes, train_batch * (warmup + steps))
        data = DataBundle(train=train, val=_synthetic(shape, classes, train_batch, seed=1), num_outputs=classes,
                          input_shape=shape)
    else:
        data = load_data(task.data, str(task.path), plan.data_root).bundle
    likelihood = get_likelihood(task.likelihood, task.likelihood_options, str(task.path))
    compiler = ModelCompiler(compile)

    def build_model() -> torch.nn.Module:
        torch.manual_seed(0)
        return compiler(create_model(task.model, data.input_shape, data.num_outputs, str(task.path)))

    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    _timed_fit(task, method, data, warmup, torch_device, build_model)  # first calls: kernels, allocator, caches
    # One pair of fits was not enough beside other processes: a fit of 3 steps once took 0.353 s and the fit of 11
    # after it 0.079 s. Load only ever slows a fit down, so each length keeps its fastest of `fit_repeats`.
    warm_seconds = total_seconds = post_hoc_seconds = float("inf")
    for _ in range(fit_repeats):
        warm_seconds = min(warm_seconds, _timed_fit(task, method, data, warmup, torch_device, build_model)[1])
        predictive, seconds, whole = _timed_fit(task, method, data, warmup + steps, torch_device, build_model)
        total_seconds, post_hoc_seconds = min(total_seconds, seconds), min(post_hoc_seconds, whole - seconds)
    if total_seconds <= warm_seconds:
        raise BnnbenchError(f"a fit of {warmup + steps} steps took no longer than one of {warmup} "
                            f"({total_seconds:.3f} s vs {warm_seconds:.3f} s, the fastest of {fit_repeats} each): "
                            "too few steps to time, raise --steps")
    method_train = steps * train_batch / (total_seconds - warm_seconds)
    eval_x = _synthetic(data.input_shape, data.num_outputs, eval_batch).x.to(torch_device)
    bare = build_model().to(torch_device)
    x, y = data.train.x[:train_batch].to(torch_device), data.train.y[:train_batch].to(torch_device)
    bare_train = _bare_train(bare.train(), likelihood, x, y, steps, warmup, fit_repeats)

    def bare_forward(x: torch.Tensor) -> torch.Tensor:
        with autocast(torch_device):
            return likelihood.log_predictive(bare(x))

    bare.eval()
    method_eval, bare_eval, n_samples = _paired_forward_rates(lambda x: predictive.predict(x, n_samples),
                                                              bare_forward, eval_x, eval_repeats)
    peak = torch.cuda.max_memory_allocated(torch_device) / 2**20 if torch_device.type == "cuda" else None
    return BenchResult(plan.device_name, train_batch, eval_batch, n_samples, method_train, bare_train,
                       method_eval, bare_eval, peak, compile, compiler.error,
                       post_hoc_seconds if method.post_hoc else None, len(data.train))


def _synthetic_shapes(task) -> tuple[tuple[int, ...], int]:
    from bnnbench.data import declared_shapes

    shapes = declared_shapes(task.data, str(task.path))
    if shapes is None:
        raise UsageError(f"{task.path}: data source '{task.data['source']}' declares no shapes, so --synthetic "
                         "cannot make its inputs; bench it on its data")
    return shapes
