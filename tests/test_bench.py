"""`bnnbench bench`: throughput of a method against its bare network, on the CPU through the same code; and
`--compile` (bench and run): torch.compile in place, falling back to eager."""

from __future__ import annotations

import json
from copy import deepcopy

import pytest
import torch
from torch import nn

from bnnbench.bench import bench
from bnnbench.compiler import ModelCompiler


def test_map_evaluation_runs_at_the_bare_networks_speed():
    """map's predictive is one forward pass of the same network: its evaluation throughput must match the
    bare forward pass (up to timing noise), and a sampling method's counts every sample."""
    result = bench("digits-cnn", "map", "cpu", steps=8, warmup=2, eval_repeats=10, eval_batch=256, synthetic=True)
    assert result.n_samples == 1 and 0.5 < result.eval_ratio < 2.0
    assert result.train_batch == 128 and result.method_train > 0 and result.bare_train > 0
    sampled = bench("digits-mlp", "mc-dropout", "cpu", steps=20, warmup=5, n_samples=4, eval_batch=256,
                    synthetic=True)
    assert sampled.n_samples == 4


def test_bench_command_prints_ratios(cli):
    # Enough steps that the timed ones stand out of a loaded machine's jitter: bench refuses a fit of warmup + steps
    # that took no longer than one of warmup (30 steps, ~0.1 s, did not, once, beside a CPU-bound process).
    result = cli("bench", "--task", "digits-mlp", "--method", "map", "--device", "cpu", "--steps", "400",
                 "--warmup", "2", "--synthetic", "--eval-batch", "512")
    assert result.code == 0, result.stderr
    assert "train images/s" in result.stdout and "eval forward passes/s" in result.stdout


@pytest.mark.parametrize("steps", ["0"])
def test_bench_rejects_zero_steps(cli, steps):
    result = cli("bench", "--task", "digits-mlp", "--method", "map", "--steps", steps)
    assert result.code == 2 and "--steps, --warmup and --fit-repeats must be at least 1" in result.stderr


def test_each_fit_length_keeps_its_fastest_fit(monkeypatch):
    """The CI failure this rule came from: a fit of 3 steps took 0.353 s, the fit of 11 after it 0.079 s. Fits
    are scripted here (untimed first, then short and long in alternation); the train rate must come from the
    fastest of each length, and a pair that never separates is refused."""
    import bnnbench.bench as bench_module
    from bnnbench.errors import BnnbenchError

    def scripted(seconds):
        calls = iter(seconds)

        def timed_fit(task, method, data, steps, device, build_model):
            return _ConstantPredictive(), next(calls), 10.0
        return timed_fit

    monkeypatch.setattr(bench_module, "_timed_fit", scripted([9.0, 0.353, 0.079, 0.05, 0.2, 0.06, 0.09]))
    result = bench("digits-mlp", "map", "cpu", steps=8, warmup=3, eval_repeats=1, eval_batch=16, synthetic=True)
    assert result.method_train == pytest.approx(8 * 128 / (0.079 - 0.05))
    monkeypatch.setattr(bench_module, "_timed_fit", scripted([9.0, 0.353, 0.079]))
    with pytest.raises(BnnbenchError, match=r"0.079 s vs 0.353 s, the fastest of 1 each"):
        bench("digits-mlp", "map", "cpu", steps=8, warmup=3, eval_repeats=1, eval_batch=16, synthetic=True,
              fit_repeats=1)


class _ConstantPredictive:
    def predict(self, x, n_samples):
        return torch.zeros(1, len(x), 10)


@pytest.mark.slow  # a cold inductor build takes tens of seconds; make test compiles through the doctor's tiny check
def test_bench_compiles_the_method_and_the_bare_network():
    """The real compiler (inductor's C++ on the CPU): every network of the bench goes through it, none falls back."""
    from torch._dynamo.utils import counters

    compiled_before = counters["frames"]["ok"]
    result = bench("digits-mlp", "map", "cpu", steps=4, warmup=2, eval_repeats=2, eval_batch=64, synthetic=True,
                   compile=True)
    assert result.compile and result.compile_error is None
    assert result.train_ratio > 0 and result.eval_ratio > 0
    assert counters["frames"]["ok"] > compiled_before


def _small_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def _compile_with(monkeypatch, backend) -> None:
    """nn.Module.compile with another backend: "eager" traces without generating code (fast), a function that
    raises stands for a machine without a working compiler."""
    original = nn.Module.compile
    monkeypatch.setattr(nn.Module, "compile", lambda self: original(self, backend=backend))
    torch._dynamo.reset()


def test_a_compiled_network_keeps_its_parameter_names_and_functional_call(monkeypatch):
    _compile_with(monkeypatch, "eager")
    eager = _small_network()
    model = ModelCompiler(True)(_small_network())
    assert [name for name, _ in model.named_parameters()] == [name for name, _ in eager.named_parameters()]
    x = torch.randn(5, 4)
    torch.testing.assert_close(model(x), eager(x))
    zeros = {name: torch.zeros_like(value) for name, value in model.named_parameters()}
    assert torch.equal(torch.func.functional_call(model, zeros, (x,)), torch.zeros(5, 2))
    copy = deepcopy(model)  # torch drops the compiled call of a copy: it runs eager, on its own weights
    assert copy._compiled_call_impl is None and model._compiled_call_impl is not None
    torch.testing.assert_close(copy(x), eager(x))


def test_a_compiler_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken(graph, example_inputs):
        raise RuntimeError("no working C++ compiler")

    _compile_with(monkeypatch, broken)
    warnings: list[str] = []
    compiler = ModelCompiler(True, warn=warnings.append)
    model = compiler(_small_network())
    x = torch.randn(5, 4)
    torch.testing.assert_close(model(x), _small_network()(x))
    model(x)
    later = compiler(_small_network())  # after a failure, networks are no longer compiled
    later(x)
    assert later._compiled_call_impl is None and model._compiled_call_impl is None
    assert len(warnings) == 1 and "torch.compile failed, running eager instead" in warnings[0]
    assert "no working C++ compiler" in warnings[0] and "\n" not in warnings[0]
    assert compiler.error == "BackendCompilerFailed (RuntimeError: no working C++ compiler)"


def test_run_with_compile_records_it_and_keeps_the_run_id(cli, tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    _compile_with(monkeypatch, "eager")
    compiled_before = counters["frames"]["ok"]
    results = tmp_path / "results"
    args = ("run", "--task", "digits-mlp", "--method", "map", "--budget", "ci", "--quiet", "--device", "cpu",
            "--results-dir", str(results))
    ran = cli(*args, "--compile")
    assert ran.code == 0, ran.stderr
    assert counters["frames"]["ok"] > compiled_before  # the network's calls went through torch.compile
    (run_json,) = results.glob("digits-mlp/map/*/run.json")
    record = json.loads(run_json.read_text())
    assert record["compile"] is True and "compile_error" not in record and record["status"] == "ok"
    # how a run executes is not what it measures: the same run id, so an eager run finds it done
    assert "skipped" in cli(*args).stdout


def test_a_post_hoc_fit_is_reported_in_map_epochs():
    """laplace-ll on digits-mlp: the post-hoc seconds are the whole fit's less its steps', and in MAP epochs they
    are those seconds over the time the method's own steps take for the training set (rate from the same bench)."""
    result = bench("digits-mlp", "laplace-ll", "cpu", steps=40, warmup=2, eval_repeats=1, eval_batch=64,
                   synthetic=True)
    assert result.post_hoc_seconds > 0 and result.train_images == 128 * 42
    epoch_seconds = result.train_images / result.method_train
    assert result.post_hoc_map_epochs == pytest.approx(result.post_hoc_seconds / epoch_seconds)
    assert bench("digits-mlp", "map", "cpu", steps=8, warmup=2, eval_repeats=1, eval_batch=64,
                 synthetic=True).post_hoc_map_epochs is None
