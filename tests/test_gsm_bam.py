"""GSM and BaM as bnnbench methods (issue 34) and the convergence benchmark that runs them beside score-vi and
elbo-vi: on sanity-blr's exact Gaussian posterior both methods recover the posterior's moments; over more weights
than a dense covariance allows they are refused at the door in one line; the benchmark's rows, step-size rule and
summary are checked against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from bnnbench.types import Budget, FitContext


def _sanity_blr():
    from bnnbench.data import load_data
    from bnnbench.reference import linear_gaussian_posterior
    from bnnbench.tasks import load_task

    task = load_task("sanity-blr")
    bundle = load_data(task.data).bundle
    exact = linear_gaussian_posterior(bundle.train.x.numpy(), bundle.train.y.numpy().reshape(-1), 0.7, 1.0)
    return task, bundle, exact


@pytest.mark.parametrize("method", ["gsm", "bam"])
def test_gsm_and_bam_recover_sanity_blrs_exact_posterior(method):
    """Full-batch scores (sanity-blr's batch is its 342 rows) of a Gaussian posterior: both reach its mean and
    covariance, which a diagonal family cannot (the posterior's condition number is 441)."""
    from bnnbench.methods import build_method
    from bnnbench.models import create_model

    task, bundle, exact = _sanity_blr()
    torch.manual_seed(0)
    model = create_model(task.model, bundle.input_shape, bundle.num_outputs)
    bound = build_method(method, task, {"batch_samples": 16})
    predictive, info = bound.fit(task, model, bundle, Budget(max_epochs=400), FitContext(torch.device("cpu"), 0, False))
    covariance = predictive.posterior.covariance().double().numpy()
    mean = predictive.posterior.mean.double().numpy()
    assert np.linalg.norm(mean - exact.mean) / np.linalg.norm(exact.mean) < 1e-3
    assert np.linalg.norm(covariance - exact.covariance) / np.linalg.norm(exact.covariance) < 0.05
    assert info.extra["updates"] == 200 and len(info.extra["neg_elbo"]) == 200


def test_a_dense_covariance_over_too_many_weights_is_refused_at_the_door(cli, tmp_path):
    result = cli("run", "--task", "digits-mlp", "--method", "gsm", "--seed", "0", "--results-dir", str(tmp_path))
    assert result.code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "26,122" in line and "4,096" in line and "variational_params" in line
    assert not any(tmp_path.iterdir())


def test_last_layer_names_the_output_layer_of_any_network():
    from bnnbench.methods.vi.common import select_parameters
    from bnnbench.models import last_layer_name

    network = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    network.bnnbench_last_layer = "2"
    variational, fixed = select_parameters(network, "last-layer")
    assert last_layer_name(network) == "2"
    assert sorted(variational) == ["2.bias", "2.weight"] and sorted(fixed) == ["0.bias", "0.weight"]


# --- the convergence benchmark ----------------------------------------------------------------------------------


def test_the_benchmark_records_exact_kl_and_gsm_bam_converge_on_a_gaussian(tmp_path):
    from bnnbench.convergence_benchmark import BenchmarkSettings, load_benchmark, run_benchmark, write_benchmark

    settings = BenchmarkSettings(iterations=60, batch=8, record_every=20)
    result = run_benchmark("gauss-d10-k10", ["gsm", "bam"], [0, 1], settings)
    rows = result.rows
    assert result.failures == [] and result.chosen["gsm"] is None and result.chosen["bam"] in (0.1, 1.0, 10.0)
    assert sorted(rows["iteration"].unique()) == [0, 20, 40, 60]
    assert (rows["evaluations"] == 8 * rows["iteration"]).all()
    # a normalised Gaussian target: the negative ELBO is the exact KL, which is large at N(0, I) and ~0 at the end
    assert np.allclose(rows["neg_elbo"], rows["kl"])
    final = rows[rows["iteration"] == 60]
    assert (rows[rows["iteration"] == 0]["kl"] > 1).all()
    assert (final[final["method"] == "bam"]["kl"] < 1e-8).all() and (final[final["method"] == "gsm"]["kl"] < 1e-3).all()
    directory = write_benchmark(result, settings, tmp_path)
    loaded, meta = load_benchmark(tmp_path)["gauss-d10-k10"]
    assert len(loaded) == len(rows) and meta["chosen_steps"]["gsm"] is None and (directory / "rows.csv").exists()


def test_the_negative_elbo_estimate_matches_the_exact_kl_on_a_gaussian():
    """The Monte Carlo estimator used on non-Gaussian targets, on a Gaussian one: E_q[−log p] − H(q) = KL(q ‖ p)."""
    from bnnbench.convergence_benchmark import _Monitor
    from bnnbench.targets import get_target

    target = get_target("gauss-d10-k10")
    monitor = _Monitor(target, draws=200_000)
    monitor.exact = False
    mean, covariance = torch.zeros(10, dtype=torch.float64), 0.5 * torch.eye(10, dtype=torch.float64)
    estimate = monitor(mean, covariance)["neg_elbo"]
    assert estimate == pytest.approx(target.kl_from(mean, covariance), rel=0.01)


def test_evaluations_to_one_percent_are_counted_from_the_common_start():
    from bnnbench.convergence_benchmark import summary_table

    def run(method, seed, values):
        return [{"target": "t", "method": method, "seed": seed, "iteration": i, "evaluations": 10 * i,
                 "seconds": float(i), "neg_elbo": v, "kl": math.nan, "mean_error": math.nan, "cov_error": math.nan}
                for i, v in enumerate(values)]

    # start 100, best 0: the threshold is 1.0
    rows = pd.DataFrame(run("a", 0, [100, 50, 0.5, 0.0]) + run("a", 1, [100, 2.0, 1.0, 0.9])
                        + run("b", 0, [100, 60, 30, 10]))
    table = summary_table(rows).set_index("method")
    assert table.loc["a", "evals_to_1pct"] == 20 and table.loc["a", "reached"] == "2/2"
    assert math.isnan(table.loc["b", "evals_to_1pct"]) and table.loc["b", "reached"] == "0/1"
    assert table.loc["a", "final_neg_elbo"] == pytest.approx(0.45)
    assert table.loc["a", "final_neg_elbo_se"] == pytest.approx(np.std([0.0, 0.9], ddof=1) / math.sqrt(2))


def test_the_step_size_is_chosen_on_the_tuning_seed_by_the_final_elbo(monkeypatch):
    import bnnbench.convergence_benchmark as benchmark

    finals = {1e-3: 5.0, 3e-3: 2.0, 1e-2: math.inf, 3e-2: 1.0, 1e-1: 1.5}
    seen = []

    def fake_final(method, target, settings, step):
        seen.append(step)
        return finals[step]

    monkeypatch.setattr(benchmark, "_final", fake_final)
    assert benchmark.choose_step("score-vi", None, benchmark.BenchmarkSettings()) == 3e-2
    assert seen == list(benchmark.LEARNING_RATES) and benchmark.choose_step("gsm", None, None) is None


def test_convergence_refuses_an_unknown_target_or_method_in_one_line(cli, tmp_path):
    bad_target = cli("convergence", "--task", "gauss-d7", "--out-dir", str(tmp_path))
    assert bad_target.code == 2 and "gauss-d10-k10" in bad_target.stderr
    bad_method = cli("convergence", "--task", "gauss-d10-k10", "--methods", "advi", "--out-dir", str(tmp_path))
    assert bad_method.code == 2 and "score-vi" in bad_method.stderr
    assert not any(tmp_path.iterdir())
    listed = cli("convergence", "--list")
    assert listed.code == 0 and "sanity-blr" in listed.stdout.split() and "logreg-breast-cancer" in listed.stdout


def test_the_report_draws_a_figure_and_a_summary_per_benchmark_target(tmp_path):
    from PIL import Image

    from bnnbench.convergence_benchmark import BenchmarkSettings, run_benchmark, write_benchmark
    from bnnbench.report import Report, _benchmark_section

    settings = BenchmarkSettings(iterations=20, batch=4, record_every=10)
    write_benchmark(run_benchmark("gauss-d10-k10", ["gsm", "bam"], [0, 1], settings), settings, tmp_path / "conv")
    report = Report(page=tmp_path / "index.html", n_runs=0, n_failed=0)
    html = _benchmark_section(tmp_path / "conv", tmp_path / "staging", report)
    (image,) = report.images
    with Image.open(image) as opened:
        assert opened.format == "PNG" and opened.size[0] > 500
    assert "gauss-d10-k10 (D = 10)" in html and html.count("</tr>") == 3  # header, gsm, bam
    assert "evals_to_1pct" in html and "exact" in html
