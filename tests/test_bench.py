"""`bnnbench bench`: throughput of a method against its bare network, on the CPU through the same code."""

from __future__ import annotations

import pytest

from bnnbench.bench import bench


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
    result = cli("bench", "--task", "digits-mlp", "--method", "map", "--device", "cpu", "--steps", "30",
                 "--synthetic", "--eval-batch", "512")
    assert result.code == 0, result.stderr
    assert "train images/s" in result.stdout and "eval forward passes/s" in result.stdout


@pytest.mark.parametrize("steps", ["0"])
def test_bench_rejects_zero_steps(cli, steps):
    result = cli("bench", "--task", "digits-mlp", "--method", "map", "--steps", steps)
    assert result.code == 2 and "--steps and --warmup must be at least 1" in result.stderr
