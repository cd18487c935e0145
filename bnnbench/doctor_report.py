"""The GPU check's report (`docs/gpu.md`): the issue's targets judged met or missed, then a Markdown table per
stage kind and the environment the figures come from. It renders whatever the check has so far, so the file
written after each stage is a whole report of the stages done."""

from __future__ import annotations

from collections.abc import Callable

from bnnbench.doctor_plan import BENCH_TASKS, EPOCH_TASK, N_SAMPLES, TRANSFER_TASK, CheckReport, Stage, bench_settings

__all__ = ["render"]

EVAL_RATIO = 0.9  # evaluation >= 90% of the bare forward's throughput
STEP_RATIO, STEP_RATIO_AFTER = 1.5, 1.3  # score-vi step <= 1.5x map (1.3x after the score-vi speed-up)
EVAL_IMAGES, EVAL_SECONDS = 770_000, 60.0  # clean + CIFAR-10-C 15x5 + OOD, 8 samples, within 60 s
MAP_EPOCHS, MAP_SECONDS = 100, 600.0  # MAP 100 epochs within 10 minutes


def render(report: CheckReport) -> str:
    parts = [_header(report), _targets(report), _bench(report), _epochs(report), _evaluations(report),
             _transfer(report), _compiled(report), _passes(report), _stages(report)]
    return "\n\n".join(part for part in parts if part) + "\n"


def _table(columns: list[str], rows: list[list[str]], align: str) -> str:
    """A Markdown table; `align` has one letter per column: l (text) or r (numbers)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _number(value: float | None, digits: int = 0) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _header(report: CheckReport) -> str:
    sizes = report.sizes.images
    kind = "tiny sets" if report.tiny else "the real sizes"
    lines = ["# GPU check", "",
             f"Written by `{report.command}` on {report.started}; {report.wall_seconds:.0f} s of a "
             f"{report.budget_seconds:.0f} s budget. Regenerate it with `make gpu-check` on a CUDA machine; do not "
             "edit the figures by hand.", ""]
    if report.device != "cuda" or report.tiny:
        lines += [f"**These are {'CPU' if report.device == 'cpu' else 'tiny'} figures** (`--device {report.device}`"
                  f"{', --tiny' if report.tiny else ''}): the GPU targets are not judged.", ""]
    if report.device != "cuda":
        lines += ["**The GPU figures are pending**: no CUDA device was at hand when this file was written. "
                  "`make gpu-check` on a CUDA machine (one H100/H200, about 8 minutes) replaces it with them.", ""]
    lines += [_table(["", ""], [[key, value] for key, value in report.environment.items()], "ll"), "",
              f"Data: random pixels in the publishers' formats, {kind}: CIFAR-10 {sizes.cifar10_batches} x "
              f"{sizes.cifar10_per_batch:,} training + {sizes.cifar10_test:,} test images, CIFAR-10-C "
              f"{sizes.cifar10c:,} images (15 official .npy files x 5 severities), CIFAR-100 test "
              f"{sizes.cifar100_test:,}, SVHN test {sizes.svhn_test:,}. `bench` stages use random inputs of the "
              "task's shape (throughput does not depend on pixels)."]
    if report.sizes.settings:
        settings = "; ".join(f"{task}: " + ", ".join(f"{key}={value}" for key, value in values.items())
                             for task, values in report.sizes.settings.items())
        lines += ["", f"Settings changed from the tasks' for this size: {settings}."]
    return "\n".join(lines)


def _ok(report: CheckReport, kind: str, task: str, method: str) -> Stage | None:
    stage = report.stage(kind, task, method)
    return stage if stage is not None and stage.status == "ok" else None


def _verdict(report: CheckReport, value: float | None, holds: Callable[[float], bool], why_missing: str) -> str:
    if value is None:
        return f"not measured ({why_missing})"
    if report.device != "cuda" or report.tiny:
        return "not judged (not a full GPU check)"
    return "**met**" if holds(value) else "**missed**"


def _missing(report: CheckReport, *keys: tuple[str, str, str]) -> str:
    for key in keys:
        stage = report.stage(*key)
        if stage is None:
            return f"{' '.join(part for part in key if part)} not run"
        if stage.status != "ok":
            return f"{stage.name}: {stage.status}"
    return ""


def _targets(report: CheckReport) -> str:
    rows = []
    bench_key = [("bench", EPOCH_TASK, method) for method in ("map", "score-vi")]
    bench_map, bench_vi = (_ok(report, *key) for key in bench_key)
    eval_ratio = bench_vi.figures["eval_ratio"] if bench_vi else None
    rows.append([f"score-vi evaluation ≥ {EVAL_RATIO:.0%} of the bare forward's throughput ({EPOCH_TASK})",
                 _number(eval_ratio, 3), _verdict(report, eval_ratio, lambda r: r >= EVAL_RATIO,
                                                  _missing(report, bench_key[1]))])
    benched = [stage for stage in report.stages if stage.kind == "bench" and stage.status == "ok"]
    below = [f"{stage.method} on {stage.task} {stage.figures['eval_ratio']:.2f}" for stage in benched
             if stage.figures["eval_ratio"] < EVAL_RATIO]
    unmeasured = sum(stage.kind == "bench" and stage.status != "ok" for stage in report.stages)
    note = f"{len(benched) - len(below)} of {len(benched)} measured at or above" + (
        f"; below: {', '.join(below)}" if below else "") + (f"; {unmeasured} not measured" if unmeasured else "")
    rows.append([f"every method's evaluation ≥ {EVAL_RATIO:.0%} of the bare forward ({', '.join(BENCH_TASKS)})",
                 note if benched else "", _verdict(report, len(below) if benched else None, lambda n: n == 0,
                                                    "no bench stage finished")])
    step = bench_map.figures["method_train"] / bench_vi.figures["method_train"] if bench_map and bench_vi else None
    for limit, label in ((STEP_RATIO, ""), (STEP_RATIO_AFTER, ", after the score-vi speed-up")):
        rows.append([f"score-vi step ≤ {limit}x map's ({EPOCH_TASK}, bench{label})",
                     _number(step, 2) + "x" * bool(step),
                     _verdict(report, step, lambda r, limit=limit: r <= limit, _missing(report, *bench_key))])
    epoch_key = [("epoch", EPOCH_TASK, method) for method in ("map", "score-vi")]
    epoch_map, epoch_vi = (_ok(report, *key) for key in epoch_key)
    epoch_ratio = (epoch_vi.figures["epoch_seconds"] / epoch_map.figures["epoch_seconds"]
                   if epoch_map and epoch_vi else None)
    rows.append([f"score-vi epoch ≤ {STEP_RATIO}x map's ({EPOCH_TASK}, one real epoch)",
                 _number(epoch_ratio, 2) + "x" * bool(epoch_ratio),
                 _verdict(report, epoch_ratio, lambda r: r <= STEP_RATIO, _missing(report, *epoch_key))])
    for method in ("map", "score-vi"):
        stage = _ok(report, "evaluation", EPOCH_TASK, method)
        projected = _projected(stage.figures) if stage else None
        rows.append([f"{method}: clean + CIFAR-10-C 15 x 5 + OOD ({EVAL_IMAGES:,} images) x {N_SAMPLES} samples "
                     f"≤ {EVAL_SECONDS:.0f} s", f"{projected:.1f} s (projected)" if projected is not None else "",
                     _verdict(report, projected, lambda s: s <= EVAL_SECONDS,
                              _missing(report, ("evaluation", EPOCH_TASK, method)))])
    total = MAP_EPOCHS * epoch_map.figures["epoch_seconds"] if epoch_map else None
    rows.append([f"MAP {MAP_EPOCHS} epochs ≤ {MAP_SECONDS / 60:.0f} min ({EPOCH_TASK})",
                 f"{total:.0f} s ({MAP_EPOCHS} x one epoch)" if total is not None else "",
                 _verdict(report, total, lambda s: s <= MAP_SECONDS, _missing(report, epoch_key[0]))])
    return "## Targets\n\n" + _table(["target", "measured", "verdict"], rows, "lll")


def _projected(figures: dict) -> float | None:
    """Seconds for the issue's 770k images at the rate measured (8 samples each, as measured)."""
    if not figures.get("images") or not figures.get("eval_seconds"):
        return None
    return figures["eval_seconds"] * EVAL_IMAGES / figures["images"]


def _status(stage: Stage) -> str:
    return stage.status if not stage.reason else f"{stage.status}: {stage.reason}"


def _method_order() -> dict[str, int]:
    from bnnbench.methods import BUILT_IN

    return {name: index for index, (name, _, _) in enumerate(BUILT_IN)}


_METHOD_ORDER = _method_order()  # the bench table lists methods as `bnnbench list methods` does, not in run order


def _bench(report: CheckReport) -> str:
    stages = [stage for stage in report.stages if stage.kind == "bench"]
    if not stages:
        return ""
    rows = []
    for task in BENCH_TASKS:
        map_stage = _ok(report, "bench", task, "map")
        for stage in sorted((s for s in stages if s.task == task), key=lambda s: _METHOD_ORDER.get(s.method, 99)):
            f = stage.figures
            versus_map = (map_stage.figures["method_train"] / f["method_train"]
                          if map_stage and "method_train" in f else None)
            rows.append([task, stage.method, str(f.get("train_batch", "")), _number(f.get("method_train")),
                         _number(f.get("bare_train")), _number(f.get("train_ratio"), 3),
                         _number(versus_map, 2), str(f.get("n_samples", "")), _number(f.get("method_eval")),
                         _number(f.get("bare_eval")), _number(f.get("eval_ratio"), 3),
                         _number(f.get("post_hoc_seconds"), 2), _number(f.get("post_hoc_map_epochs"), 2),
                         _number(stage.peak_cuda_mb), _number(stage.seconds, 1), _status(stage)])
    changed = {stage.method: bench_settings(stage.method, report.sizes) for stage in stages}
    changed_text = "; ".join(f"{method} " + ", ".join(f"{key}={value}" for key, value in values.items())
                             for method, values in changed.items() if values)
    return ("## Throughput against the bare timm network (`bnnbench bench`)\n\n"
            "Train: images/s of the method's steps and of the bare network's forward-backward-AdamW step at the same "
            "batch; step x map: the method's step time over map's. Eval: forward passes/s (images x samples) of the "
            f"method's predictive with {N_SAMPLES} samples and of the bare forward, at the eval batch. A ratio below 1 "
            f"is the method's overhead. {report.sizes.bench_steps} timed steps after {report.sizes.bench_warmup}, each "
            f"fit length the fastest of {report.sizes.bench_fit_repeats} (one fit for the post-hoc methods, whose "
            "steps are timed by their own seconds). Post-hoc: a post-hoc method's work after its "
            "training steps (curvature, prior tuning, sampling) in seconds and in epochs of its own MAP steps over the "
            "same synthetic training set."
            + (f" Settings for the bench only (bounding post-hoc work; `doctor.bench_settings`): {changed_text}."
               if changed_text else "") + "\n\n"
            + _table(["task", "method", "batch", "train img/s", "bare train img/s", "train ratio", "step x map",
                      "samples", "eval passes/s", "bare eval passes/s", "eval ratio", "post-hoc s",
                      "post-hoc MAP epochs", "peak CUDA MB", "s", "status"], rows, "llrrrrrrrrrrrrrl"))


def _epochs(report: CheckReport) -> str:
    rows = []
    for stage in (s for s in report.stages if s.kind == "epoch" and s.task == EPOCH_TASK):
        f = stage.figures
        rows.append([stage.method, str(f.get("timed", "")), str(f.get("epochs", "")),
                     f"{f['steps_per_epoch']} x {f['batch']}" if "batch" in f else "", str(f.get("augment", "")),
                     _number(f.get("epoch_seconds"), 2), _number(f.get("images_per_second")),
                     _number(f.get("warmup_epoch_seconds"), 2), _number(stage.peak_cuda_mb), _status(stage)])
    return (f"## One epoch of {EPOCH_TASK} at the task's settings\n\n"
            "score-vi's budget is split into a MAP warm-up and the VI phase, so it runs the fewest epochs that give "
            "both one epoch; the VI epoch is what is timed, and its warm-up epoch is a second MAP epoch.\n\n"
            + _table(["method", "timed", "epochs run", "steps x batch", "augment", "s per epoch", "images/s",
                      "warm-up epoch s", "peak CUDA MB", "status"], rows, "llrrlrrrrl"))


def _transfer(report: CheckReport) -> str:
    """The transfer task's stages: score-vi's memory estimate on ViT-L/32, then an epoch of map and of score-vi."""
    memory = report.stage("memory", TRANSFER_TASK, "score-vi")
    data = report.stage("data", TRANSFER_TASK)
    if memory is None:
        return ""
    f = memory.figures
    lines = [f"## {TRANSFER_TASK}: score-vi's memory on its ViT-L/32, and one epoch", ""]
    if "estimate_bytes" in f:
        terms = " + ".join(f"{term} {_size(value)}" for term, value in f["terms_bytes"].items())
        verdict = ("fits" if f["fits"] else f"refused: {f.get('refusal', '')}")
        lines += [f"Estimated before running (`vi_memory_estimate`): a diagonal Gaussian over {f['weights']:,} weights "
                  f"needs about {_size(f['estimate_bytes'])} ({terms}; activations not counted) of the device's "
                  f"{_size(f['device_bytes'])}: {verdict}. Over the last layer alone: {_size(f['last_layer_bytes'])}. "
                  "The score-vi epoch below measures its peak.", ""]
    else:
        lines += [f"Memory estimate: {_status(memory)}", ""]
    if data is not None and data.status == "ok":
        d = data.figures
        lines += [f"Data: fake Pets JPEGs in the publisher's layout, read at {' x '.join(map(str, d['image_shape']))}: "
                  f"{d['train']:,} train / {d['val']:,} validation / {d['test']:,} test images, written in "
                  f"{d['write_seconds']:.1f} s, loaded in {d['load_seconds']:.1f} s.", ""]
    rows = []
    for stage in (s for s in report.stages if s.kind == "epoch" and s.task == TRANSFER_TASK):
        e = stage.figures
        rows.append([stage.method, str(e.get("timed", "")),
                     f"{e['steps_per_epoch']} x {e['batch']}" if "batch" in e else "", str(e.get("augment", "")),
                     _number(e.get("epoch_seconds"), 2), _number(e.get("images_per_second"), 1),
                     _number(stage.peak_cuda_mb), _status(stage)])
    return "\n".join(lines) + "\n" + _table(["method", "timed", "steps x batch", "augment", "s per epoch", "images/s",
                                      "peak CUDA MB", "status"], rows, "llrlrrrl")


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.2f} MiB"


def _evaluations(report: CheckReport) -> str:
    rows = []
    for stage in (s for s in report.stages if s.kind == "evaluation"):
        f = stage.figures
        projected = _projected(f)
        rows.append([stage.method, str(f.get("corruption_source", "")), str(f.get("splits", "")),
                     _number(f.get("images")), _number(f.get("forward_passes")), _number(f.get("eval_seconds"), 1),
                     _number(f["images"] / f["eval_seconds"]) if f.get("images") and f.get("eval_seconds") else "",
                     _number(projected, 1), _number(stage.peak_cuda_mb), _status(stage)])
    return (f"## Full evaluation of {EPOCH_TASK} ({N_SAMPLES} samples)\n\n"
            "The evaluator's pass over the clean test set, CIFAR-10-C (15 corruptions x 5 severities) and the OOD "
            f"sets with the posteriors trained above; projected: the seconds for {EVAL_IMAGES:,} images at the rate "
            "measured (a timed-out evaluation is projected from the part it did).\n\n"
            + _table(["method", "CIFAR-10-C", "splits", "images", "forward passes", "s", "images/s",
                      f"projected s for {EVAL_IMAGES // 1000}k", "peak CUDA MB", "status"], rows, "llrrrrrrrl"))


def _compiled(report: CheckReport) -> str:
    rows = []
    for stage in (s for s in report.stages if s.kind == "compile"):
        eager = _ok(report, "bench", stage.task, stage.method)
        f, e = stage.figures, eager.figures if eager else {}

        def gain(key: str, f=f, e=e) -> str:
            return f"{f[key] / e[key]:.2f}x" if key in f and key in e else ""

        rows.append([stage.method, _number(e.get("method_train")), _number(f.get("method_train")), gain("method_train"),
                     _number(e.get("method_eval")), _number(f.get("method_eval")), gain("method_eval"),
                     f.get("compile_error", "no" if stage.status == "ok" else ""), _number(stage.seconds, 1),
                     _status(stage)])
    return (f"## torch.compile (`bench --compile`, {EPOCH_TASK})\n\n"
            "The same bench with the method's and the bare network compiled (`nn.Module.compile`, inductor); eager: "
            "the bench stage above. The stage's seconds include compiling. Copies of the network run eager "
            "(torch drops the compiled call on `copy.deepcopy`), so a predictive that runs a copy (`StackedWeights`) "
            "is not compiled.\n\n"
            + _table(["method", "eager train img/s", "compiled train img/s", "train speed-up", "eager eval passes/s",
                      "compiled eval passes/s", "eval speed-up", "fell back to eager", "s", "status"], rows,
                     "lrrrrrrlrl"))


def _passes(report: CheckReport) -> str:
    rows = []
    for stage in (s for s in report.stages if s.kind == "passes"):
        default = _ok(report, "bench", stage.task, stage.method)
        other = stage.figures.get("passes", "")
        usual = {"loop": "batched", "batched": "loop"}.get(other, "")
        ratios = [default.figures["eval_ratio"] if default else None, stage.figures.get("eval_ratio")]
        faster = (usual if ratios[0] >= ratios[1] else other) if None not in ratios else ""
        rows.append([stage.method, usual, _number(ratios[0], 3), other, _number(ratios[1], 3), faster,
                     _number(stage.seconds, 1), _status(stage)])
    if not rows:
        return ""
    return (f"## Posterior samples: one batched pass or a loop ({EPOCH_TASK}, {N_SAMPLES} samples)\n\n"
            "Evaluation throughput against the bare forward with the samples run as this device does by default "
            "(`params.batched_passes`: a loop on a CPU, one vmapped pass on CUDA; the bench stage above) and the "
            "other way (`BNNBENCH_SAMPLE_PASSES`). The two give the same predictive to 1e-5; a default that "
            "loses here should change.\n\n"
            + _table(["method", "default", "eval ratio", "other", "eval ratio (other)", "faster", "s", "status"],
                     rows, "llrlrlrl"))


def _stages(report: CheckReport) -> str:
    rows = [[stage.name, stage.status, _number(stage.seconds, 1), _number(stage.peak_cuda_mb), stage.reason]
            for stage in report.stages]
    data = report.stage("data")
    note = ""
    if data is not None and data.status == "ok":
        f = data.figures
        note = (f"\n\nData: {f['written_gb']:.2f} GB written in {f['write_seconds']:.1f} s and loaded in "
                f"{f['load_seconds']:.1f} s: {f['train']:,} train / {f['val']:,} validation / {f['test']:,} test "
                f"images, {f['cifar10c_files']} CIFAR-10-C files, OOD "
                + ", ".join(f"{name} {count:,}" for name, count in f["ood"].items()) + ".")
    return "## Stages\n\n" + _table(["stage", "status", "s", "peak CUDA MB", "reason"], rows, "llrrl") + note
