"""Result files: deterministic ids, atomic writes, loading."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bnnbench.results import config_hash, load_results, make_run_id, write_run

ROW = {"run_id": "r", "task": "t", "task_version": 1, "method": "m", "seed": 0, "split": "test",
       "corruption": "none", "severity": 0, "metric": "nll", "value": 0.1}


def test_run_id_is_deterministic_and_sensitive():
    first = config_hash({"hparams": {"lr": 1e-3}, "budget": {"max_epochs": 5}})
    assert first == config_hash({"budget": {"max_epochs": 5}, "hparams": {"lr": 1e-3}})
    assert first != config_hash({"hparams": {"lr": 2e-3}, "budget": {"max_epochs": 5}})
    assert make_run_id("t", 1, "m", first, 3) == f"t.v1.m.{first[:8]}.s3"


def test_write_replaces_a_run_whole(tmp_path):
    directory = tmp_path / "t" / "m" / "r"
    write_run(directory, {"run_id": "r", "status": "ok"}, [ROW], {"probs": np.ones((2, 2))})
    write_run(directory, {"run_id": "r", "status": "failed"}, [])
    assert sorted(p.name for p in directory.iterdir()) == ["run.json"]
    assert json.loads((directory / "run.json").read_text())["status"] == "failed"
    assert [p.name for p in (tmp_path / "t" / "m").iterdir()] == ["r"]  # no staging left behind


def test_crash_while_writing_leaves_nothing(tmp_path, monkeypatch):
    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    directory = tmp_path / "t" / "m" / "r"
    with pytest.raises(OSError, match="disk full"):
        write_run(directory, {"run_id": "r"}, [ROW], {"probs": np.ones(2)})
    assert list((tmp_path / "t" / "m").iterdir()) == []


def test_load_skips_directories_being_written(tmp_path):
    write_run(tmp_path / "t" / "m" / "r", {"run_id": "r", "status": "ok", "config_hash": "h"}, [ROW])
    staging = tmp_path / "t" / "m" / ".r.partial"
    staging.mkdir()
    (staging / "run.json").write_text(json.dumps({"run_id": "half"}))
    runs, metrics = load_results(tmp_path)
    assert list(runs["run_id"]) == ["r"]
    assert metrics["value"].tolist() == [0.1]


def test_parameter_moments_are_scored_only_for_predictives_that_declare_them():
    """`ParameterPosterior` is a declared protocol: a predictive with moments gets `w2_mean_err` and `var_ratio`
    against the exact posterior (here: the exact one itself, so 0 and 1), one without gets `pred_var_ratio`."""
    import torch

    from bnnbench.methods.ensemble import EnsemblePredictive
    from bnnbench.methods.map import PointPredictive
    from bnnbench.reference import fidelity_metrics, linear_gaussian_posterior
    from bnnbench.types import ParameterPosterior

    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.1 * rng.normal(size=50)
    exact = linear_gaussian_posterior(x, y, noise_std=0.1, prior_std=1.0)

    class ExactMoments(ParameterPosterior):
        def parameter_moments(self):
            as_tensor = torch.from_numpy
            return ({"weight": as_tensor(exact.mean[:3]), "bias": as_tensor(exact.mean[3:])},
                    {"weight": as_tensor(np.diag(exact.covariance)[:3]),
                     "bias": as_tensor(np.diag(exact.covariance)[3:])})

    exact_variance = exact.predictive_variance(x)
    scored = fidelity_metrics(exact, ExactMoments(), x, exact_variance)
    assert scored["w2_mean_err"] < 1e-12 and scored["pred_var_ratio"] == pytest.approx(1.0)
    assert scored["var_ratio"] == pytest.approx(np.mean(np.diag(exact.covariance) * np.diag(exact.precision)))
    assert scored["marginal_var_ratio"] == pytest.approx(1.0) and scored["var_ratio"] > 1.05  # a correlated posterior
    assert set(fidelity_metrics(exact, object(), x, 2 * exact_variance)) == {"pred_var_ratio"}
    assert issubclass(PointPredictive, ParameterPosterior) and not issubclass(EnsemblePredictive, ParameterPosterior)
