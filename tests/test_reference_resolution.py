"""HMC references carry their resolution: thinned per-draw predictives beside the scored file, diagnostics anyone can
recompute from them, and `compare` calling fidelity differences below the resolution ties."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import log_softmax

from bnnbench.comparison import aggregate, leaderboard, unresolved_pairs
from bnnbench.hmc import RESOLUTION_HOW, draw_summary, split_half_resolution
from bnnbench.package_files import committed_references_dir
from bnnbench.reference_files import draws_path, load_reference, load_reference_draws, recorded_resolution
from bnnbench.results import load_results, make_run_id, run_directory, write_run


def _tv(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.mean(0.5 * np.abs(p - q).sum(axis=1)))


def test_split_half_resolution_is_the_larger_split():
    """Chains 0-1 draw one predictive and chains 2-3 another; within a chain the draws are stationary. The chain
    split sees the whole gap, the split of each chain in time none of it."""
    rng = np.random.default_rng(0)
    p, q = (np.exp(log_softmax(rng.normal(size=(30, 4)), axis=1)) for _ in range(2))
    draws = np.stack([np.broadcast_to(p if chain < 2 else q, (6, 30, 4)) for chain in range(4)])
    found = split_half_resolution("categorical", draws)
    assert found["splits"]["time"]["tv"] == pytest.approx(0.0, abs=1e-15)
    assert found["splits"]["time"]["agreement"] == 0.0
    assert found["tv"] == pytest.approx(_tv(p, q), abs=1e-12)
    assert found["agreement"] == pytest.approx(np.mean(p.argmax(1) != q.argmax(1)), abs=1e-12)


def test_the_committed_reference_keeps_draws_that_reproduce_its_diagnostics():
    npz_path = committed_references_dir() / "digits-fidelity.v1.npz"
    arrays, meta = load_reference(npz_path)
    draws = load_reference_draws(npz_path)
    assert "draw_probs" not in arrays  # the scored file holds what runs are scored against, nothing else
    kept = draws["draw_probs"]
    stored = meta["stored_draws"]
    assert kept.shape == (meta["chains"], stored["per_chain"], meta["test_rows"], 10) and kept.dtype == np.float32
    recomputed = draw_summary("categorical", draws)
    for key in ("rhat_max", "rhat_p99", "ess_bulk_min", "ess_bulk_median"):
        assert recomputed[key] == pytest.approx(stored[key], rel=1e-9), key
    assert recomputed["resolution"]["tv"] == pytest.approx(stored["resolution"]["tv"], rel=1e-9)
    assert recomputed["resolution"]["agreement"] == pytest.approx(stored["resolution"]["agreement"], abs=1e-12)
    # the thinned draws are draws of the scored predictive: their mean is nearer to it than two halves of them are
    # to each other (1/120 - 1/1200 of the variance against 2/60)
    assert _tv(kept.mean(axis=(0, 1)), arrays["probs"]) < stored["resolution"]["tv"]
    assert meta["rhat_max"] < 1.02 and stored["rhat_max"] < 1.15  # 30 draws a chain: a noisier R̂ of the same chains
    assert 0 < meta["resolution"]["tv"] < 0.02 and 0 <= meta["resolution"]["agreement"] < 0.05
    assert meta["resolution"]["how"] == RESOLUTION_HOW  # the file says how its figures were computed


def _fidelity_results(results_dir, tv: dict[str, float], record: dict) -> None:
    for method, value in tv.items():
        for seed in range(2):
            run_id = make_run_id("fid", 1, method, "abcdef0123", seed)
            rows = [{"run_id": run_id, "task": "fid", "task_version": 1, "method": method, "seed": seed,
                     "split": "test", "corruption": "none", "severity": 0, "metric": "tv", "value": value}]
            write_run(run_directory(results_dir, "fid", method, run_id),
                      {"run_id": run_id, "task": "fid", "task_version": 1, "method": method, "seed": seed,
                       "status": "ok", "config_hash": "abcdef0123", "identity": 2, "hmc_reference": record}, rows)


def test_means_within_the_resolution_are_ties_and_best(tmp_path, cli):
    record = {"path": "gone.npz", "sha256": "0" * 64, "resolution": {"tv": 0.005, "agreement": 0.01}}
    _fidelity_results(tmp_path, {"a": 0.030, "b": 0.033, "c": 0.036, "d": 0.050}, record)
    runs, metrics = load_results(tmp_path, print)
    resolution = {("fid", 1, "standard"): recorded_resolution(record)}
    board = leaderboard(runs, aggregate(runs, metrics), ["tv"], "tv", resolution)
    tv = board[board["column"] == "tv"].set_index("method")
    assert tv["best"].to_dict() == {"a": True, "b": True, "c": False, "d": False}
    pairs = unresolved_pairs(tv.reset_index(), {"tv": 0.005})["tv"]
    assert [(a, b) for a, b, _ in pairs] == [("a", "b"), ("b", "c")]
    from bnnbench import api

    from_api = api.compare(tmp_path, metrics=["tv"])  # the Python API reads the same resolution
    assert from_api[from_api["column"] == "tv"].set_index("method")["best"].to_dict() == tv["best"].to_dict()
    result = cli("compare", "--results-dir", str(tmp_path), "--no-published")
    assert result.code == 0, result.stderr
    assert "tv 0.0050" in result.stdout and "tv ties: a = b (0.0030), b = c (0.0030)" in result.stdout


def test_a_run_without_a_recorded_resolution_reads_it_beside_its_reference(tmp_path):
    npz_path = tmp_path / "r.v1.npz"
    np.savez(npz_path, probs=np.ones((2, 2)) / 2)
    npz_path.with_suffix(".json").write_text(json.dumps({"resolution": {"tv": 0.007, "agreement": 0.01}}))
    import hashlib

    digest = hashlib.sha256(npz_path.read_bytes()).hexdigest()
    assert recorded_resolution({"path": str(npz_path), "sha256": digest}) == {"tv": 0.007, "agreement": 0.01}
    assert recorded_resolution({"path": str(npz_path), "sha256": "f" * 64}) is None  # another reference now
    assert recorded_resolution(None) is None and recorded_resolution({"path": str(tmp_path / "x.npz")}) is None
    assert draws_path(npz_path).name == "r.v1.draws.npz"


def test_frames_without_resolution_keep_exact_best(tmp_path):
    _fidelity_results(tmp_path, {"a": 0.030, "b": 0.033}, {"path": "gone.npz", "sha256": "0" * 64})
    runs, metrics = load_results(tmp_path, print)
    board = leaderboard(runs, aggregate(runs, metrics), ["tv"], "tv")
    assert board.set_index("method").loc[["a", "b"], "best"].tolist() == [True, False]
    assert isinstance(board, pd.DataFrame)
