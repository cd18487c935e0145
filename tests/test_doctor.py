"""`bnnbench doctor --gpu`, the GPU check: its CPU run at tiny size (what a GPU window runs, every day on a CPU),
the one-line refusal without CUDA, and its stage isolation (a failed, timed-out or skipped stage never costs the
figures of the others, and the report is rewritten after every stage)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest

from bnnbench import doctor, doctor_plan
from bnnbench.data.synthetic_files import TINY_SIZES
from bnnbench.methods import BUILT_IN, find_method

ALL_METHODS = [name for name, _, _ in BUILT_IN]
FAST_METHODS = ["map", "score-vi"]  # mc-dropout went to the slow test's all-methods run (issue 35: make test's time)
# The evaluation stage's images: the clean test set, its 15 x 5 CIFAR-10-C copies, CIFAR-100 and SVHN (no validation).
TINY_EVAL_IMAGES = 76 * TINY_SIZES.cifar10_test + TINY_SIZES.cifar100_test + TINY_SIZES.svhn_test


def table(report: str, heading: str) -> list[dict[str, str]]:
    """The rows of the Markdown table under `## heading...` as dicts keyed by its column names."""
    section = report[report.index(f"## {heading}"):]
    lines = [line for line in section.split("\n## ")[0].splitlines() if line.startswith("|")]
    columns = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(columns, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
            for line in lines[2:]]


def number(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("x"))


def run_tiny_check(cli, tmp_path, methods: list[str], *extra: str):
    out = tmp_path / "docs" / "gpu.md"
    args = ["doctor", "--gpu", "--device", "cpu", "--tiny", "--out", str(out), "--data-root", str(tmp_path)]
    for method in methods:
        args += ["--method", method]
    return cli(*args, *extra), out


def assert_complete_tiny_report(report: str, methods: list[str]) -> None:
    assert "These are CPU figures" in report and "not judged" in report and "**met**" not in report
    bench = {(row["task"], row["method"]): row for row in table(report, "Throughput")}
    assert set(bench) == {(task, method) for task in doctor_plan.BENCH_TASKS for method in methods}
    for row in bench.values():
        assert row["status"] == "ok", row
        for column in ("train ratio", "eval ratio", "train img/s", "eval passes/s"):
            assert math.isfinite(number(row[column])) and number(row[column]) > 0, (column, row)
        if find_method(row["method"])[0].post_hoc:  # its work after training, in its own MAP epochs
            assert number(row["post-hoc s"]) > 0 and number(row["post-hoc MAP epochs"]) > 0, row
        else:
            assert row["post-hoc s"] == row["post-hoc MAP epochs"] == "", row
    epochs = {row["method"]: row for row in table(report, "One epoch")}
    assert set(epochs) == {"map", "score-vi"} and all(row["status"] == "ok" for row in epochs.values())
    assert epochs["score-vi"]["timed"].startswith("VI epoch (after 1 MAP warm-up epoch)")
    assert epochs["map"]["steps x batch"] == "12 x 8"  # 90 training images (100 less a 10% validation split)
    evaluations = {row["method"]: row for row in table(report, "Full evaluation")}
    assert TINY_EVAL_IMAGES == 1542
    for method, samples in (("map", 1), ("score-vi", doctor_plan.N_SAMPLES)):
        row = evaluations[method]
        assert row["status"] == "ok" and row["CIFAR-10-C"] == "official" and row["splits"] == "78", row
        assert number(row["images"]) == TINY_EVAL_IMAGES
        assert number(row["forward passes"]) == TINY_EVAL_IMAGES * samples
        assert number(row[f"projected s for {doctor_report_images() // 1000}k"]) > 0
    compiled = {row["method"]: row for row in table(report, "torch.compile")}
    assert set(compiled) == {"map", "score-vi"} & set(methods)
    for row in compiled.values():
        assert row["status"] == "ok" and row["fell back to eager"] == "no", row
        assert number(row["train speed-up"]) > 0 and number(row["eval speed-up"]) > 0
    passes = {row["method"]: row for row in table(report, "Posterior samples")}
    assert set(passes) == {"score-vi", "ensemble"} & set(methods)
    for row in passes.values():  # the CPU's default is the loop; the stage runs the batched pass
        assert row["status"] == "ok" and (row["default"], row["other"]) == ("loop", "batched"), row
        assert number(row["eval ratio"]) > 0 and number(row["eval ratio (other)"]) > 0
    assert_transfer_section(report)
    assert "**The GPU figures are pending**" in report
    for name in ("GPU", "driver", "torch", "CUDA (torch.version.cuda)"):
        assert f"| {name} |" in report


def assert_transfer_section(report: str) -> None:
    """pets-vitl32's stages: score-vi's memory estimate (16 float32 copies of the tiny ViT's weights, counted here
    from the network itself) before its epoch, then an epoch of map and of score-vi on fake Pets JPEGs."""
    import torch

    from bnnbench.models import create_model
    from bnnbench.runner import prepare

    settings = doctor_plan.TINY.settings[doctor_plan.TRANSFER_TASK]
    plan = prepare(doctor_plan.TRANSFER_TASK, "score-vi", overrides=settings, device="cpu", load=False)
    with torch.device("meta"):
        network = create_model(plan.task.model, (3, 224, 224), 37)
    n = sum(parameter.numel() for parameter in network.parameters())
    assert f"a diagonal Gaussian over {n:,} weights needs about {16 * 4 * n / 2**20:.2f} MiB" in report
    assert ": fits." in report and "37 train / 37 validation / 37 test images" in report
    epochs = {row["method"]: row for row in table(report, f"{doctor_plan.TRANSFER_TASK}: ")}
    assert set(epochs) == {"map", "score-vi"} and all(row["status"] == "ok" for row in epochs.values())
    assert epochs["score-vi"]["timed"] == "VI epoch (after 0 MAP warm-up epochs)"  # the protocol has no warm-up
    assert epochs["map"]["steps x batch"] == "10 x 4" and epochs["map"]["augment"] == "resized-crop-flip-rotate"


def doctor_report_images() -> int:
    from bnnbench.doctor_report import EVAL_IMAGES

    return EVAL_IMAGES


def test_tiny_check_on_the_cpu_runs_every_stage_and_reports_exact_counts(cli, tmp_path):
    start = time.perf_counter()
    # the default 420 s budget is a GPU window's; on a CPU shared with other jobs the stages outran it (issue 35:
    # 420 s, the compile stage cut short, beside a 2-worker sweep), and a busy machine is not a failed check
    result, out = run_tiny_check(cli, tmp_path, FAST_METHODS, "--budget-seconds", "1800")
    assert result.code == 0, result.stderr
    assert_complete_tiny_report(out.read_text(), FAST_METHODS)
    assert f"wrote {out}" in result.stdout
    assert not list(tmp_path.glob("bnnbench-doctor-*")), "the temporary data root must be removed"
    print(f"tiny doctor, {len(FAST_METHODS)} methods: {time.perf_counter() - start:.1f} s")


@pytest.mark.slow
def test_tiny_check_benches_every_built_in_method_on_both_tasks(cli, tmp_path):
    result, out = run_tiny_check(cli, tmp_path, [], "--budget-seconds", "1800")
    assert result.code == 0, result.stderr
    assert_complete_tiny_report(out.read_text(), ALL_METHODS)


def test_without_cuda_it_says_so_in_one_line_and_exits_2(tmp_path):
    """Through the real entry point, as a GPU machine without a visible device would run it."""
    out = tmp_path / "gpu.md"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, "-m", "bnnbench", "doctor", "--gpu", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error: {doctor_plan.NO_CUDA}"]
    assert done.stdout == "" and not out.exists()


def test_no_cuda_refusal_comes_before_any_other_check(cli, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = cli("doctor", "--gpu", "--tiny", "--method", "no-such-method", "--out", str(tmp_path / "gpu.md"))
    assert result.code == 2 and result.stderr.strip().splitlines() == [f"error: {doctor_plan.NO_CUDA}"]


def test_bad_options_are_usage_errors(cli, tmp_path):
    result, _ = run_tiny_check(cli, tmp_path, ["no-such-method"])
    assert result.code == 2 and "unknown method 'no-such-method'" in result.stderr
    result = cli("doctor", "--gpu", "--device", "tpu")
    assert result.code == 2 and "unknown device 'tpu'" in result.stderr


def test_without_gpu_it_prints_the_environment(cli):
    result = cli("doctor")
    assert result.code == 0 and "torch:" in result.stdout and "CUDA (torch.version.cuda):" in result.stdout


def test_a_failed_a_timed_out_and_a_skipped_stage_keep_the_others_figures(cli, tmp_path, monkeypatch):
    """Stage bodies are replaced by fakes (the real ones are the tests above): a raising epoch, a compile stage past
    its cap, a budget spent before the last stage. The report read mid-check already holds what was done."""
    monkeypatch.setattr(doctor, "TINY", doctor_plan.CheckSizes(TINY_SIZES, 1, 1, 1, 1, 16, {
        **doctor_plan.STAGE_CAPS, "compile": 0.5},
        {doctor_plan.TRANSFER_TASK: doctor_plan.TINY.settings[doctor_plan.TRANSFER_TASK]}, transfer_per_class=1))
    seen_mid_check = {}

    def fake_bench(self, stage, compile=False):
        stage.figures |= {"train_batch": 8, "eval_batch": 16, "n_samples": 1, "method_train": 100.0,
                          "bare_train": 200.0, "train_ratio": 0.5, "method_eval": 300.0, "bare_eval": 300.0,
                          "eval_ratio": 1.0}

    def fake_epoch(self, stage):
        if stage.method == "score-vi":
            raise RuntimeError("CUDA out of memory\nsecond line")
        stage.figures |= {"timed": "1 epoch", "epoch_seconds": 2.0, "batch": 8, "steps_per_epoch": 12}
        self.predictives[stage.method] = object()

    def fake_evaluation(self, stage):
        if stage.method not in self.predictives:
            raise doctor.UsageError(f"no trained {stage.method} posterior: its epoch stage did not finish")
        stage.figures |= {"images": 1000, "forward_passes": 8000, "eval_seconds": 10.0, "splits": 78}

    def slow_compile(self, stage):
        seen_mid_check.setdefault("report", out.read_text())
        stage.figures["method_train"] = 1.0
        time.sleep(5)

    for name, fake in (("bench", fake_bench), ("epoch", fake_epoch), ("evaluation", fake_evaluation),
                       ("compile", slow_compile)):
        monkeypatch.setattr(doctor._Work, name, fake)
    out = tmp_path / "gpu.md"
    start = time.perf_counter()
    result = cli("doctor", "--gpu", "--device", "cpu", "--tiny", "--out", str(out), "--method", "map",
                 "--method", "score-vi", "--data-root", str(tmp_path))
    assert time.perf_counter() - start < 30
    assert result.code == 1
    assert result.stderr.splitlines() == [
        "failed: epoch cifar10-vit score-vi: RuntimeError: CUDA out of memory",
        "failed: evaluation cifar10-vit score-vi: UsageError: no trained score-vi posterior: its epoch stage did "
        "not finish",
        "failed: epoch pets-vitl32 score-vi: RuntimeError: CUDA out of memory"]
    stages = {row["stage"]: row for row in table(out.read_text(), "Stages")}
    assert stages["compile cifar10-vit map"]["status"] == "timed out"
    assert stages["evaluation cifar10-vit map"]["status"] == "ok"
    assert stages["bench cifar10-resnet18 score-vi"]["status"] == "ok"
    targets = {row["target"].split(" (")[0]: row for row in table(out.read_text(), "Targets")}
    assert targets["score-vi step ≤ 1.5x map's"]["measured"] == "1.00x"
    assert "epoch cifar10-vit score-vi: failed" in targets["score-vi epoch ≤ 1.5x map's"]["verdict"]
    # while the first compile stage ran, the file already held every earlier stage's figures
    mid = {row["stage"]: row["status"] for row in table(seen_mid_check["report"], "Stages")}
    assert mid["evaluation cifar10-vit map"] == "ok" and mid["compile cifar10-vit map"] == "running"
    assert mid["compile cifar10-vit score-vi"] == "pending"

    # a budget spent: the stages not begun are listed as skipped, none is run
    result = cli("doctor", "--gpu", "--device", "cpu", "--tiny", "--out", str(out), "--method", "map",
                 "--data-root", str(tmp_path), "--budget-seconds", "0.001")
    assert result.code == 0, result.stderr
    statuses = {row["stage"]: row["status"] for row in table(out.read_text(), "Stages")}
    assert set(statuses.values()) == {"skipped"}
    assert "not measured (bench cifar10-vit map: skipped)" in out.read_text()


@pytest.mark.parametrize(("method", "fits_of_each_length"), [("laplace-subnet", 1), ("map", 5)])
def test_a_post_hoc_methods_bench_fits_once_per_length(monkeypatch, tmp_path, method, fits_of_each_length):
    """A post-hoc method's steps are timed by their own seconds, so its bench fits once per length (each fit pays its
    curvature or selection); the others keep the fastest of the check's repeats."""
    import torch

    import bnnbench.bench

    asked = {}

    def bench(*args, **kwargs):
        asked.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(bnnbench.bench, "bench", bench)
    work = doctor._Work(tmp_path, torch.device("cpu"), doctor_plan.TINY)
    with pytest.raises(RuntimeError, match="stop here"):
        work.bench(doctor_plan.Stage("bench", "cifar10-vit", method))
    assert doctor_plan.TINY.bench_fit_repeats == 5 and asked["fit_repeats"] == fits_of_each_length
