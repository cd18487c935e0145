"""`bnnbench doctor --gpu`: the GPU check, one prepared command for a short window on a CUDA machine.

It writes CIFAR-10 (50,000 + 10,000), the 15 official CIFAR-10-C files (15 x 5 x 10,000), CIFAR-100 and SVHN test
sets of random pixels into a temporary data root (removed afterwards), then runs its stages, most wanted first:
1. `bench` of map and score-vi on cifar10-vit: train and eval throughput against the bare timm step and forward;
2. one real epoch of cifar10-vit for map and score-vi, at the task's settings;
3. a full evaluation (clean test, 15 x 5 CIFAR-10-C, OOD) of those two posteriors with 8 samples;
3b. pets-vitl32 (fake Pets JPEGs, ViT-L/32 at 224 px with timm's initialisation): score-vi's memory estimate, stated
   before it runs (with the refusal a run would give when over the device's memory), then one epoch of map and of
   score-vi, bf16 autocast, each with its peak memory;
4. `bench` of the other methods on cifar10-vit, and of those and map and score-vi on cifar10-resnet18;
5. `bench --compile` of map and score-vi on cifar10-vit, set against their eager bench;
6. `bench` of score-vi and ensemble on cifar10-vit with posterior samples run the other way than the device's
   default (one batched pass or a loop: `params.batched_passes`);
7. `bench` of the post-hoc methods (Laplace) on both tasks, last: they take longest and train as map does.

GPU windows are short and a check that dies takes its figures with it, so every stage is isolated: it is timed
with its peak CUDA memory; one that raises is recorded as failed with its one-line reason and the check goes on;
one that would run past its cap or the check's time budget is interrupted (SIGALRM) and recorded as timed out,
keeping what it had measured; stages not begun within the budget are listed as skipped. The report
(`bnnbench.doctor_report`) is rewritten after every stage, so a window that closes mid-check leaves every figure
measured so far. `--tiny` runs the same stages on a few images and small networks, for CPU tests.
"""

from __future__ import annotations

import contextlib
import math
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bnnbench.doctor_plan import (
    EPOCH_TASK,
    FULL,
    N_SAMPLES,
    NO_CUDA,
    TINY,
    TRANSFER_TASK,
    CheckOptions,
    CheckReport,
    CheckSizes,
    Stage,
    bench_settings,
    plan_stages,
)
from bnnbench.errors import UsageError, error_line, unknown_choice

__all__ = ["CheckOptions", "CheckReport", "Stage", "check_device", "environment", "gpu_check"]

class StageTimeout(BaseException):
    """Raised by SIGALRM inside a stage past its time. A BaseException, so that a method's own `except
    Exception` (a fallback path) cannot swallow it and carry on past the limit."""


def check_device(name: str):
    """The torch device the check runs on; no visible CUDA device for `cuda` is a usage error (exit 2)."""
    import torch

    if name not in ("cuda", "cpu"):
        raise unknown_choice("device", name, ["cuda", "cpu"])
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError(NO_CUDA)
    return torch.device(name)


def nvidia_driver() -> str:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (done.stdout.strip().splitlines() or ["unknown"])[0]


def environment(device) -> dict[str, str]:
    """What the figures were measured on: GPU, driver, torch and CUDA versions, CPU, bnnbench's commit."""
    import platform

    import torch

    from bnnbench.results import git_state, machine_name
    from bnnbench.version import __version__

    sha, dirty = git_state()
    info = {}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info["GPU"] = f"{torch.cuda.get_device_name(device)} ({properties.total_memory / 2**30:.0f} GiB)"
    else:
        info["GPU"] = "none (CPU)"
    info |= {"driver": nvidia_driver(), "torch": torch.__version__,
             "CUDA (torch.version.cuda)": str(torch.version.cuda),
             "CUDA devices visible": str(torch.cuda.device_count()) if torch.cuda.is_available() else "0",
             "CPU": machine_name(), "torch threads": str(torch.get_num_threads()),
             "python": platform.python_version(), "bnnbench": f"{__version__} ({sha[:12]}{', dirty' if dirty else ''})"}
    return info


def gpu_check(options: CheckOptions, say: Callable[[str], None] = print) -> CheckReport:
    """Run the check and write its report to `options.out` after every stage; see the module docstring."""
    from bnnbench import atomic
    from bnnbench.doctor_report import render
    from bnnbench.methods import BUILT_IN, find_method
    from bnnbench.results import check_output_file

    device = check_device(options.device)
    built_in = tuple(name for name, _, _ in BUILT_IN)
    for method in options.methods:
        if method not in built_in:
            raise unknown_choice("method", method, built_in, "--method")
    if options.budget_seconds <= 0:
        raise UsageError(f"--budget-seconds must be positive, got {options.budget_seconds}")
    check_output_file(options.out)
    if options.data_parent is not None and not Path(options.data_parent).is_dir():
        raise UsageError(f"--data-root '{options.data_parent}' is not a directory")
    sizes = TINY if options.tiny else FULL
    methods = tuple(name for name in built_in if not options.methods or name in options.methods)
    post_hoc = frozenset(name for name in methods if find_method(name)[0].post_hoc)
    report = CheckReport(device=str(device), tiny=options.tiny, environment=environment(device),
                         command=shlex.join(["bnnbench", *sys.argv[1:]]),
                         started=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                         budget_seconds=options.budget_seconds, sizes=sizes, stages=plan_stages(methods, post_hoc))
    start = time.perf_counter()
    deadline = start + options.budget_seconds

    def publish() -> None:
        report.wall_seconds = time.perf_counter() - start
        atomic.write_text(options.out, render(report))

    publish()
    with tempfile.TemporaryDirectory(prefix="bnnbench-doctor-", dir=options.data_parent) as root:
        work = _Work(Path(root), device, sizes)
        for stage in report.stages:
            left = deadline - time.perf_counter()
            if left < 1.0:
                stage.status = "skipped"
                stage.reason = f"the check's time budget of {options.budget_seconds:.0f} s was spent"
            else:
                stage.status = "running"  # what a killed check was doing when it died
                publish()
                _run_stage(stage, work, min(left, sizes.stage_seconds[stage.kind]), device)
            say(_stage_line(stage))
            publish()
    publish()
    return report


def _stage_line(stage: Stage) -> str:
    took = f" ({stage.seconds:.1f} s)" if stage.seconds is not None else ""
    reason = f": {stage.reason}" if stage.reason else ""
    return f"{stage.status:9} {stage.name}{took}{reason}"


def _run_stage(stage: Stage, work: _Work, limit: float, device) -> None:
    import torch

    start = time.perf_counter()
    try:
        if device.type == "cuda":  # inside: a CUDA error left by the stage before is this stage's failure too
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        torch.manual_seed(0)
        with _time_limit(limit):
            getattr(work, stage.kind)(stage)
        stage.status = "ok"
    except StageTimeout:
        stage.status, stage.reason = "timed out", f"stopped after {limit:.0f} s (its cap, or the budget left)"
    except Exception as error:  # one stage's failure is its own: the check goes on to the next
        stage.status, stage.reason = "failed", error_line(error)
    stage.seconds = time.perf_counter() - start
    if device.type == "cuda":
        with contextlib.suppress(Exception):  # a broken CUDA context has no peak to give; the stage says why
            stage.peak_cuda_mb = torch.cuda.max_memory_allocated(device) / 2**20
            torch.cuda.empty_cache()  # a stage that failed out of memory must not leave the next one short


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise StageTimeout in this thread after `seconds`; only the main thread can take signals, so
    elsewhere the limit is not enforced (the budget is still checked between stages)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise StageTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _Work:
    """The stages' bodies and what they hand each other (the loaded data, the trained posteriors). Each writes its
    figures into `stage.figures` as it goes, so a stage that times out keeps what it had."""

    def __init__(self, root: Path, device, sizes: CheckSizes) -> None:
        self.root, self.device, self.sizes = root, device, sizes
        self.loaded: dict[str, Any] = {}  # task -> its loaded data
        self.predictives: dict[str, Any] = {}

    def data(self, stage: Stage) -> None:
        from bnnbench.data import load_data
        from bnnbench.data.synthetic_files import write_image_sets
        from bnnbench.tasks import load_task

        if stage.task == TRANSFER_TASK:
            self.transfer_data(stage)
            return
        start = time.perf_counter()
        write_image_sets(self.root / "data", self.sizes.images)
        stage.figures["write_seconds"] = time.perf_counter() - start
        stage.figures["written_gb"] = sum(path.stat().st_size for path in (self.root / "data").rglob("*")
                                          if path.is_file()) / 1e9
        task = load_task(EPOCH_TASK)
        start = time.perf_counter()
        loaded = self.loaded[EPOCH_TASK] = load_data(task.data, str(task.path), self.root / "data")
        stage.figures["load_seconds"] = time.perf_counter() - start
        official = loaded.official_corruptions
        stage.figures |= {"train": len(loaded.bundle.train), "val": len(loaded.bundle.val),
                          "test": len(loaded.test), "ood": {name: len(split) for name, split in loaded.ood.items()},
                          "cifar10c_files": len(official.names) if official else 0}

    def transfer_data(self, stage: Stage) -> None:
        """Fake Pets files in the publisher's format (random JPEGs, every breed), read as pets-vitl32 reads them."""
        from bnnbench.data import load_data
        from bnnbench.data.synthetic_files import write_fake_finegrained
        from bnnbench.tasks import load_task

        task = load_task(TRANSFER_TASK)
        start = time.perf_counter()
        write_fake_finegrained(self.root / "data", task.data["source"], self.sizes.transfer_per_class)
        stage.figures["write_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        loaded = self.loaded[TRANSFER_TASK] = load_data(task.data, str(task.path), self.root / "data")
        stage.figures |= {"load_seconds": time.perf_counter() - start, "train": len(loaded.bundle.train),
                          "val": len(loaded.bundle.val), "test": len(loaded.test),
                          "image_shape": list(loaded.bundle.input_shape)}

    def memory(self, stage: Stage) -> None:
        """score-vi's memory estimate on the transfer task's network, stated before its epoch stage runs it: each
        term, the device's memory, and the refusal (with the variant that fits) a run would give when over."""
        import torch

        from bnnbench.methods.vi.common import device_memory_bytes, memory_refusal, vi_memory_estimate
        from bnnbench.models import create_model
        from bnnbench.runner import bind_run

        # bound, not prepared: a run's door would refuse an estimate over the device's memory, which is a figure here
        task, _, method, _ = bind_run(stage.task, stage.method, self.sizes.settings.get(stage.task))
        bundle = self._loaded(stage.task).bundle
        with torch.device("meta"):
            model = create_model(task.model, bundle.input_shape, bundle.num_outputs, str(task.path))
        estimate = vi_memory_estimate(model, method.hparams, stage.method)
        available = device_memory_bytes(self.device)
        stage.figures |= {"weights": estimate.n_variational, "estimate_bytes": estimate.total,
                          "terms_bytes": estimate.terms, "device_bytes": available,
                          "fits": estimate.total <= available, "last_layer_bytes": estimate.last_layer_bytes}
        refusal = memory_refusal(estimate, stage.method, available, self.device.type)
        if refusal is not None:
            stage.figures["refusal"] = refusal

    def bench(self, stage: Stage, compile: bool = False) -> None:
        from bnnbench.bench import bench
        from bnnbench.methods import find_method

        sizes = self.sizes
        # a post-hoc method's training steps are timed by their own seconds (`bench`), not by differences of whole
        # fits, so one fit of each length will do: each fit also pays its curvature, selection or solves, and eleven
        # of them (the tiny check's) took laplace-all and laplace-subnet on the tiny ResNet past the stage's 300 s
        post_hoc = find_method(stage.method)[0].post_hoc
        result = bench(stage.task, stage.method, self.device.type, steps=sizes.bench_steps, warmup=sizes.bench_warmup,
                       fit_repeats=1 if post_hoc else sizes.bench_fit_repeats,
                       eval_repeats=sizes.eval_repeats, n_samples=N_SAMPLES, eval_batch=sizes.eval_batch,
                       overrides={**sizes.settings.get(stage.task, {}), **bench_settings(stage.method, sizes)},
                       synthetic=True, compile=compile)
        stage.figures |= {"train_batch": result.train_batch, "eval_batch": result.eval_batch,
                          "n_samples": result.n_samples, "method_train": result.method_train,
                          "bare_train": result.bare_train, "train_ratio": result.train_ratio,
                          "method_eval": result.method_eval, "bare_eval": result.bare_eval,
                          "eval_ratio": result.eval_ratio}
        if result.post_hoc_seconds is not None:
            stage.figures |= {"post_hoc_seconds": result.post_hoc_seconds,
                              "post_hoc_map_epochs": result.post_hoc_map_epochs}
        if result.compile_error is not None:
            stage.figures["compile_error"] = result.compile_error

    def compile(self, stage: Stage) -> None:
        self.bench(stage, compile=True)

    def passes(self, stage: Stage) -> None:
        """The bench with posterior samples run the other way than this device's default (`params.batched_passes`)."""
        import os

        from bnnbench.params import batched_passes

        other = "loop" if batched_passes(self.device) else "batched"
        stage.figures["passes"] = other
        before = os.environ.get("BNNBENCH_SAMPLE_PASSES")
        os.environ["BNNBENCH_SAMPLE_PASSES"] = other
        try:
            self.bench(stage)
        finally:
            if before is None:
                del os.environ["BNNBENCH_SAMPLE_PASSES"]
            else:
                os.environ["BNNBENCH_SAMPLE_PASSES"] = before

    def epoch(self, stage: Stage) -> None:
        """One epoch of map; for a VI method, the fewest epochs that give one warm-up epoch (when it has a
        warm-up) and then at least one VI epoch, whose seconds are what is timed."""
        from bnnbench.models import create_model
        from bnnbench.runner import prepare
        from bnnbench.train import split_budget
        from bnnbench.types import Budget, FitContext

        bundle = self._loaded(stage.task).bundle
        plan = prepare(stage.task, stage.method, overrides=self.sizes.settings.get(stage.task), device=self.device.type,
                       results_dir=self.root / "runs", show_progress=False, data_dir=self.root / "data", load=False)
        fraction = getattr(plan.method.hparams, "warmup_fraction", 0.0)
        epochs = 1
        while fraction > 0 and split_budget(Budget(max_epochs=epochs), fraction)[0] is None:
            epochs += 1  # the warm-up's share rounds to no epoch yet; the VI phase always gets the rest (>= 1)
        model = create_model(plan.task.model, bundle.input_shape, bundle.num_outputs, str(plan.task.path))
        batch = plan.method.hparams.batch_size
        stage.figures |= {"epochs": epochs, "batch": batch, "train_images": len(bundle.train),
                          "steps_per_epoch": math.ceil(len(bundle.train) / batch),
                          "augment": plan.method.hparams.augment}
        predictive, info = plan.method.fit(plan.task, model, bundle, Budget(max_epochs=epochs),
                                           FitContext(self.device, 0, False))
        if stage.task == EPOCH_TASK:  # what the evaluation stages score
            self.predictives[stage.method] = predictive
        extra = info.extra
        if "vi_seconds_per_epoch" in extra:
            warm_epochs = int(extra.get("warmup_epochs", 0))
            stage.figures |= {"timed": f"VI epoch (after {warm_epochs} MAP warm-up epoch{'s' * (warm_epochs != 1)})",
                              "epoch_seconds": extra["vi_seconds_per_epoch"], "vi_epochs": info.epochs - warm_epochs,
                              "warmup_epoch_seconds": extra.get("warmup_seconds", 0.0) / max(warm_epochs, 1)
                              if warm_epochs else None}
        else:
            stage.figures |= {"timed": f"{info.epochs} epoch{'s' * (info.epochs != 1)}, the whole fit",
                              "epoch_seconds": info.seconds / max(info.epochs, 1)}
        stage.figures["images_per_second"] = len(bundle.train) / stage.figures["epoch_seconds"]

    def evaluation(self, stage: Stage) -> None:
        """The evaluator's own pass over the clean test split, CIFAR-10-C and the OOD sets (the validation split
        left out: the issue's 770k images are those), with the trained posterior of the epoch stage."""
        from bnnbench.data.splits import eval_plan
        from bnnbench.evaluate import evaluate
        from bnnbench.likelihoods import get_likelihood
        from bnnbench.runner import metric_names
        from bnnbench.tasks import load_task

        if stage.method not in self.predictives:
            raise UsageError(f"no trained {stage.method} posterior: its epoch stage did not finish")
        task = load_task(stage.task)
        plan = eval_plan(task.eval, self._loaded(stage.task), str(task.path))
        stage.figures |= {"corruption_source": plan.corruption_source, "n_samples": N_SAMPLES}
        splits = _WithoutValidation(plan)
        counted = _CountedPredictive(self.predictives[stage.method], stage.figures)
        likelihood = get_likelihood(task.likelihood, task.likelihood_options, str(task.path))
        batch = self.sizes.eval_batch or int(task.eval.get("batch_size", 1024))
        evaluation = evaluate(counted, splits, metric_names(task), likelihood, N_SAMPLES, batch, self.device,
                              show_progress=False)
        stage.figures |= {"splits": splits.count, "eval_seconds": evaluation.seconds}

    def _loaded(self, task: str):
        if task not in self.loaded:
            raise UsageError(f"no data for {task}: its data stage did not finish")
        return self.loaded[task]


class _WithoutValidation:
    """An EvalPlan's splits less the validation split (what `evaluate` iterates); counts the splits it gives."""

    def __init__(self, plan) -> None:
        self.plan, self.count = plan, 0

    def __len__(self) -> int:
        return len(self.plan) - 1

    def __iter__(self):
        for split in self.plan:
            if split.split != "val":
                self.count += 1
                yield split


class _CountedPredictive:
    """A predictive that counts, into `figures`, the images it is asked about, the forward passes it returns (S
    per image) and the seconds since its first call, as it goes: a timed-out evaluation still has its rate."""

    def __init__(self, predictive, figures: dict[str, Any]) -> None:
        self.predictive, self.figures, self.start = predictive, figures, None
        figures |= {"images": 0, "forward_passes": 0}

    def predict(self, x, n_samples: int):
        if self.start is None:
            self.start = time.perf_counter()
        samples = self.predictive.predict(x, n_samples)
        self.figures["images"] += len(x)
        self.figures["forward_passes"] += len(x) * samples.shape[0]
        self.figures["eval_seconds"] = time.perf_counter() - self.start
        return samples
