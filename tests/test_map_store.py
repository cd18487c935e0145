"""The MAP checkpoint store (`bnnbench.map_store`): a post-hoc method's run that loads its MAP from the store scores
bit-equal to one that trains it; the key changes with anything the MAP depends on; the store reads data, never code."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from bnnbench.map_store import STORE_DIRECTORY, MapStore
from bnnbench.runner import prepare, run


def _run(method: str, results: Path, store: Path | None, seed: int = 0, **overrides):
    plan = prepare("digits-mlp", method, budget_name="ci", epochs=4, device="cpu", results_dir=results,
                   show_progress=False, map_store=store, overrides=overrides)
    outcome = run(plan, seed)
    assert outcome.status == "ok", outcome.error
    with open(outcome.directory / "metrics.csv", newline="") as handle:
        rows = {(r["split"], r["corruption"], r["severity"], r["metric"]): r["value"] for r in csv.DictReader(handle)}
    return rows, json.loads((outcome.directory / "run.json").read_text())


# laplace-ll: AdamW's decay as the prior; laplace-ll with tune=none: a stated Gaussian prior (its own key); swag: a
# warm start of half the budget, then SGD from the loaded weights and the restored random state
@pytest.mark.parametrize(("method", "overrides"), [("laplace-ll", {}), ("laplace-ll", {"tune": "none"}),
                                                   ("swag", {})])
def test_a_run_that_loads_its_map_scores_bit_equal_to_one_that_trains_it(tmp_path, method, overrides):
    store = tmp_path / STORE_DIRECTORY
    plain, plain_record = _run(method, tmp_path / "plain", None, **overrides)
    trained, trained_record = _run(method, tmp_path / "first", store, **overrides)
    loaded, loaded_record = _run(method, tmp_path / "second", store, **overrides)
    assert "map_store" not in plain_record
    [first] = trained_record["map_store"]["lookups"]
    [second] = loaded_record["map_store"]["lookups"]
    assert (first["reused"], second["reused"]) == (False, True) and first["key"] == second["key"]
    assert second["train_seconds"] == pytest.approx(first["train_seconds"])
    assert sorted(path.suffix for path in store.iterdir()) == [".json", ".pt"]
    assert plain == trained == loaded  # every metric row, as written: bit-equal
    assert trained_record["fit_epochs"] == loaded_record["fit_epochs"]


def test_the_key_changes_with_the_seed_and_the_training_settings_and_not_with_the_post_hoc_ones(tmp_path):
    store = tmp_path / STORE_DIRECTORY

    def lookup(results, seed=0, **overrides):
        return _run("laplace-ll", tmp_path / results, store, seed, **overrides)[1]["map_store"]["lookups"][0]

    first = lookup("a")
    assert lookup("b", hessian="full")["reused"]  # a post-hoc setting: the same MAP
    assert lookup("c", link_approx="mc")["key"] == first["key"]
    other_seed, other_lr = lookup("d", seed=1), lookup("e", lr=2e-3)
    assert not other_seed["reused"] and not other_lr["reused"]
    assert len({first["key"], other_seed["key"], other_lr["key"]}) == 3


def test_a_store_file_that_holds_code_is_never_run_and_the_map_is_trained_again(tmp_path, monkeypatch):
    store = tmp_path / STORE_DIRECTORY
    _, record = _run("laplace-ll", tmp_path / "a", store)
    key = record["map_store"]["lookups"][0]["key"]
    called = []

    class Payload:  # unpickling this would call `called.append` through __reduce__
        def __reduce__(self):
            return (called.append, ("ran",))

    torch.save({"state": {}, "random": {}, "payload": Payload()}, store / f"{key}.pt")
    _, again = _run("laplace-ll", tmp_path / "b", store)
    assert called == []
    [lookup] = again["map_store"]["lookups"]
    assert lookup["key"] == key and not lookup["reused"]  # trained again, and the file replaced with data
    assert torch.load(store / f"{key}.pt", weights_only=True)["state"]


def test_the_store_loads_only_with_weights_only(tmp_path, monkeypatch):
    """Whatever torch's default, the store asks for weights_only=True on every load."""
    calls = []
    original = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    store = MapStore(tmp_path, {"scope": 1})
    model = torch.nn.Linear(2, 2)
    store.save("k", model, torch.device("cpu"), {"description": "t", "seconds": 0.0, "loop": {}})
    monkeypatch.setattr(torch, "load", spy)
    assert store.load("k", torch.nn.Linear(2, 2), torch.device("cpu")) is not None
    assert calls == [True]
