"""What the GPU check (`bnnbench doctor --gpu`) runs and records: its sizes, options, stages in order and the report
they fill. The check (`bnnbench.doctor`) runs the plan; its page (`bnnbench.doctor_report`) renders the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnnbench.data.synthetic_files import REAL_SIZES, TINY_SIZES, ImageSetSizes

__all__ = ["BENCH_TASKS", "EPOCH_TASK", "FULL", "N_SAMPLES", "TINY", "TRANSFER_TASK", "CheckOptions", "CheckReport",
           "CheckSizes", "Stage", "bench_settings", "plan_stages"]

EPOCH_TASK = "cifar10-vit"  # the task the targets are about
BENCH_TASKS = (EPOCH_TASK, "cifar10-resnet18")
KEY_METHODS = ("map", "score-vi")  # trained for an epoch, evaluated in full, compiled
# The score-VI paper's transfer benchmark at its real size: a pretrained ViT-L/32 (306 M weights) fine-tuned at 224 px
TRANSFER_TASK = "pets-vitl32"
N_SAMPLES = 8  # posterior samples of every evaluation here
NO_CUDA = ("no CUDA device is visible (torch.cuda.is_available() is False); run on a GPU machine or pass "
           "--device cpu --tiny")


@dataclass(frozen=True)
class CheckSizes:
    """How big one check is: its data sets, bench steps, evaluation batch, caps per stage kind, and `--set`
    values per task (tiny: small networks and batches, so a CPU runs every stage in seconds)."""

    images: ImageSetSizes
    bench_steps: int
    bench_warmup: int
    bench_fit_repeats: int  # fits of each length, the fastest kept (see `bnnbench.bench`)
    eval_repeats: int
    eval_batch: int | None  # None: the task's [eval] batch_size
    stage_seconds: dict[str, float]
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    transfer_per_class: int = 20  # fake Pets images per breed and split (trainval, test) for the transfer stages


STAGE_CAPS = {"data": 180.0, "bench": 60.0, "epoch": 120.0, "evaluation": 150.0, "compile": 180.0, "passes": 60.0,
              "memory": 60.0}
# The GPU machine has no Hugging Face cache: the transfer stages build ViT-L/32 (timm's vit_large_patch32_224: width
# 1024, 24 blocks, 16 heads, MLP ratio 4) with timm's initialisation, the same shapes, memory and time as the
# pretrained weights.
_TRANSFER_SETTINGS = {"model.pretrained": False}
_VIT_LARGE = {"model.embed_dim": 1024, "model.depth": 24, "model.num_heads": 16, "model.mlp_ratio": 4.0}
# Benched again with posterior samples run the other way (one batched vmap pass, or a loop of passes): which is
# faster decides `params.batched_passes`' default per device, measured on a CPU only so far.
PASSES_METHODS = ("score-vi", "ensemble")
FULL = CheckSizes(REAL_SIZES, bench_steps=50, bench_warmup=10, bench_fit_repeats=2, eval_repeats=5, eval_batch=None,
                  stage_seconds=STAGE_CAPS, settings={TRANSFER_TASK: {**_TRANSFER_SETTINGS, **_VIT_LARGE}})
# Tiny: a one-block ViT of width 16, and timm's own test ResNet (same ResNet class, BatchNorm, 0.4 M weights; its
# stem is a Sequential, which the CIFAR stem would replace, so the stem stays). Three warm-up steps: swag's shortest
# fit must have two SGD steps, each a snapshot (see `bench_settings`). 40 timed steps, each fit length fitted five
# times, so that the steps' time stands out of a busy machine's: a tiny ViT step takes ~3 ms, shorter than one time
# slice, and with 8 timed steps the fastest of three 3-step fits (0.111 s) was once slower than the fastest of three
# 11-step fits (0.078 s) beside the other tests. Three eval calls (one compiled call of 16 images once took 0.19 s
# beside a CPU-bound process). Stages get longer caps: a CPU's seconds.
TINY = CheckSizes(TINY_SIZES, bench_steps=40, bench_warmup=3, bench_fit_repeats=5, eval_repeats=3, eval_batch=16,
                  stage_seconds=dict.fromkeys(STAGE_CAPS, 300.0),
                  settings={"cifar10-vit": {"batch_size": 8, "model.patch_size": 8, "model.embed_dim": 16,
                                            "model.depth": 1, "model.num_heads": 2},
                            "cifar10-resnet18": {"batch_size": 8, "model.architecture": "test_resnet",
                                                 "model.cifar_stem": False},
                            TRANSFER_TASK: {**_TRANSFER_SETTINGS, "batch_size": 4, "model.embed_dim": 16,
                                            "model.depth": 1, "model.num_heads": 2}},
                  transfer_per_class=1)


def bench_settings(method: str, sizes: CheckSizes) -> dict[str, Any]:
    """Method settings for its bench only. `bench` times a method's training steps and its predictive, and fits 1 +
    2 x `bench_fit_repeats` times (a post-hoc method three times; its post-hoc part is not in the ratio), so
    post-hoc work that would take minutes on its synthetic set is bounded: sampled-laplace keeps its prior fixed
    and stops its solves early (its predictive's cost does not depend on them). swag snapshots every step: its
    shortest fit has a few SGD steps, short of the epoch its default snapshot needs."""
    if method == "sampled-laplace":
        return {"em_steps": 0, "sample_max_iter": 3}
    if method == "swag":
        return {"snapshots_per_epoch": float(sizes.bench_warmup + sizes.bench_steps)}  # a bench epoch's batches
    return {}


@dataclass(frozen=True)
class CheckOptions:
    """What `bnnbench doctor --gpu` was asked for."""

    device: str = "cuda"
    tiny: bool = False
    out: Path = Path("docs/gpu.md")
    data_parent: Path | None = None  # where the temporary data root is made (default: the system's temp folder)
    budget_seconds: float = 420.0
    methods: tuple[str, ...] = ()  # methods to bench; empty: every built-in one


@dataclass
class Stage:
    """One isolated step of the check and what it measured."""

    kind: str  # data, bench, epoch, evaluation, compile
    task: str = ""
    method: str = ""
    status: str = "pending"  # pending, running, ok, failed, timed out, skipped
    seconds: float | None = None
    peak_cuda_mb: float | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def name(self) -> str:
        return " ".join(part for part in (self.kind, self.task, self.method) if part)


@dataclass
class CheckReport:
    """Everything `docs/gpu.md` shows: where and how the check ran, and its stages so far."""

    device: str
    tiny: bool
    environment: dict[str, str]
    command: str
    started: str
    budget_seconds: float
    sizes: CheckSizes
    stages: list[Stage]
    wall_seconds: float = 0.0

    def stage(self, kind: str, task: str = "", method: str = "") -> Stage | None:
        return next((s for s in self.stages if (s.kind, s.task, s.method) == (kind, task, method)), None)

    @property
    def failed(self) -> list[Stage]:
        return [stage for stage in self.stages if stage.status == "failed"]


def plan_stages(methods: tuple[str, ...], post_hoc_methods: frozenset[str]) -> list[Stage]:
    """The stages in the order they run: what the issue's targets need first, the post-hoc methods' bench last
    (`post_hoc_methods`: those whose MethodSpec declares the trait). Each of their three bench fits (one of each
    length after the untimed one) pays post-hoc curvature, selection or solves (up to the stage cap), and their
    training steps are map's, so in a short window the other methods' figures come first."""
    key = [method for method in KEY_METHODS if method in methods]
    others = [method for method in methods if method not in key and method not in post_hoc_methods]
    post_hoc = [method for method in methods if method in post_hoc_methods]
    stages = [Stage("data")]
    stages += [Stage("bench", EPOCH_TASK, method) for method in key]
    stages += [Stage("epoch", EPOCH_TASK, method) for method in KEY_METHODS]
    stages += [Stage("evaluation", EPOCH_TASK, method) for method in KEY_METHODS]
    stages += [Stage("data", TRANSFER_TASK), Stage("memory", TRANSFER_TASK, "score-vi")]
    stages += [Stage("epoch", TRANSFER_TASK, method) for method in KEY_METHODS]
    stages += [Stage("bench", EPOCH_TASK, method) for method in others]
    stages += [Stage("bench", BENCH_TASKS[1], method) for method in key + others]
    stages += [Stage("compile", EPOCH_TASK, method) for method in key]
    stages += [Stage("passes", EPOCH_TASK, method) for method in PASSES_METHODS if method in methods]
    stages += [Stage("bench", task, method) for task in BENCH_TASKS for method in post_hoc]
    return stages
