"""Tuning at the full budget (`bnnbench.pruning` and the tuner): trial runs report validation NLL per epoch and are
pruned by successive halving; a diverging run stops at once and is marked; a study states its cost in full runs;
post-hoc trials share their MAP; settings a method refuses are not trials; tuning seeds are not report seeds."""

from __future__ import annotations

import csv
import json
import math
import statistics

import optuna
import pytest
import torch
from assertions import assert_usage_error
from test_tune import OPTIONS, run_serial

from bnnbench.errors import DivergenceError, UsageError
from bnnbench.likelihoods import get_likelihood
from bnnbench.pruning import EpochMonitor, TrialLink, min_epochs_for
from bnnbench.tasks import load_task
from bnnbench.tune import study_name, tune
from bnnbench.tuned import load_tuned, write_tuned
from bnnbench.types import Split

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::optuna.exceptions.ExperimentalWarning")


def _monitor(factor=3.0):
    val = Split(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    link = TrialLink("", "", 0, True, "none", None, factor)
    return EpochMonitor(link, val, get_likelihood("categorical"), 16, torch.device("cpu"))


def _predicting(nll: float):
    """A predictive whose NLL on labels 0 is `nll`: probability exp(-nll) on class 0 of 2."""
    p = math.exp(-nll)

    def predictive(x):
        probs = torch.tensor([p, 1 - p], dtype=torch.float64).expand(len(x), 2)
        return probs.log().unsqueeze(0)

    return predictive


def test_the_monitor_scores_each_epoch_with_the_evaluators_nll_and_stops_a_run_past_the_factor():
    monitor = _monitor()
    for nll in (1.0, 0.5, 0.9, 1.45):  # 1.45 < 3 x 0.5: still going
        monitor.end_epoch(_predicting(nll))
    assert monitor.values == pytest.approx([1.0, 0.5, 0.9, 1.45], rel=1e-12)
    with pytest.raises(DivergenceError, match=r"diverged: validation NLL 1.6 at epoch 5 is above 3x its best \(0.5\)"):
        monitor.end_epoch(_predicting(1.6))
    nan = _monitor()
    with pytest.raises(DivergenceError, match="nan"):
        nan.end_epoch(lambda x: torch.full((1, len(x), 2), math.nan))


def test_shared_phases_are_checked_for_divergence_but_not_told_and_loaded_ones_are_counted():
    monitor = _monitor()
    monitor.end_epoch(_predicting(0.9), report=False)
    monitor.skip(3)
    monitor.end_epoch(_predicting(0.25))
    assert (monitor.epoch, monitor.step) == (5, 0)  # no trial here (pruner none): nothing is told
    assert monitor.values == pytest.approx([0.9, 0.25], rel=1e-12)
    with pytest.raises(DivergenceError):
        monitor.end_epoch(_predicting(0.8), report=False)
    assert min_epochs_for(50) == 5 and min_epochs_for(8) == 1 and min_epochs_for(None) == 1


def _study(tmp_path, task, method):
    return optuna.load_study(study_name=study_name(task, method),
                             storage=f"sqlite:///{tmp_path / 'studies' / f'{task.name}.db'}")


def _runs(tmp_path, method):
    return {path.parent.name: json.loads(path.read_text())
            for path in (tmp_path / "studies" / "runs").glob(f"*/{method}/*/run.json")}


def test_successive_halving_prunes_trials_records_where_and_states_the_cost(tmp_path):
    task = load_task("digits-mlp")
    options = {**OPTIONS, "epochs": 6}
    outcome = tune(task, ["map"], 6, [1000], "nll", tmp_path / "studies", options, run_serial, 1, pruner="sha",
                   min_epochs=1)
    study, runs = _study(tmp_path, task, "map"), _runs(tmp_path, "map")
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    summary = outcome.summaries["map"]
    assert pruned and complete and summary["pruned"] == len(pruned) and summary["complete"] == len(complete)
    for trial in pruned:  # the run says it was pruned, and where: at a rung (1, 3 epochs), before the budget's end
        (run_id,) = trial.user_attrs["run_ids"]
        record = runs[run_id]
        assert record["status"] == "pruned" and record["pruned_epoch"] == trial.user_attrs["pruned_epoch"] in (1, 3)
        assert record["trial"]["epochs"] == record["pruned_epoch"] == max(trial.intermediate_values)
    assert sorted(summary["pruned_epochs"]) == sorted(t.user_attrs["pruned_epoch"] for t in pruned)
    for trial in complete:  # the last epoch's score is the network the evaluator then scored: the same value
        (run_id,) = trial.user_attrs["run_ids"]
        assert runs[run_id]["trial"]["val_nll"][-1] == pytest.approx(trial.value, rel=1e-12)
        assert trial.intermediate_values[6] == pytest.approx(trial.value, rel=1e-12)
    full = statistics.median(s for t in complete for s in t.user_attrs["full_run_seconds"])
    assert summary["full_runs"] == pytest.approx(summary["seconds"] / full, rel=0.05)  # seconds: rounded to 0.1
    assert all(t.user_attrs["epochs"] < 6 for t in pruned)  # a pruned trial stops before the budget's end
    assert summary["pruner"] == "sha" and summary["first_rung_epochs"] == 1


@pytest.mark.parametrize("method", ["rank1", "mc-dropout", "score-vi", "swag"])
def test_a_trial_run_computes_what_the_same_run_outside_a_trial_does(tmp_path, method):
    """The monitor only watches: the predictives it scores sample (rank-1's factors, dropout masks, q's draws) from
    a forked generator, so a trial's run and a plain validation-only run of the same settings write the same
    numbers."""
    from bnnbench.methods import build_method, find_method
    from bnnbench.runner import prepare, run
    from bnnbench.tomlfile import toml_value
    from bnnbench.tune import search_space

    task = load_task("digits-mlp")
    hparams = build_method(method, task).hparams
    settings = {d.name: getattr(hparams, d.name) for d in search_space(find_method(method)[0], task)}
    table = "".join(f"{name} = {{ choices = [{toml_value(value)}] }}\n" for name, value in settings.items())
    task_file = tmp_path / "digits-mlp.toml"
    task_file.write_text(task.path.read_text() + f"\n[tune.{method}]\n{table}")
    task = load_task(str(task_file))
    options = {**OPTIONS, "epochs": 4}  # swag needs two snapshots: two SGD epochs after its warm start
    tune(task, [method], 1, [1000], "nll", tmp_path / "studies", options, run_serial, 1, pruner="sha")
    [record] = _runs(tmp_path, method).values()
    plan = prepare(task, method, overrides=settings, results_dir=tmp_path / "plain", validation_only=True,
                   show_progress=False, **options)
    plain = run(plan, 1000)
    assert plain.run_id == record["run_id"] and len(record["trial"]["val_nll"]) == 4

    def rows(directory):
        with open(directory / "metrics.csv", newline="") as handle:
            return [(r["metric"], r["value"]) for r in csv.DictReader(handle)]

    trial_dir = next((tmp_path / "studies" / "runs").glob(f"*/{method}/{record['run_id']}"))
    assert rows(trial_dir) == rows(plain.directory)


def test_a_diverging_trial_stops_at_once_and_is_marked(tmp_path):
    task_file = tmp_path / "digits-mlp.toml"
    task_file.write_text(load_task("digits-mlp").path.read_text() + "\n[tune.map]\nlr = { choices = [1e30] }\n"
                         "weight_decay = { choices = [0.0] }\n")
    task = load_task(str(task_file))
    outcome = tune(task, ["map"], 1, [1000], "nll", tmp_path / "studies", {**OPTIONS, "epochs": 6}, run_serial, 1)
    [record] = _runs(tmp_path, "map").values()
    assert record["status"] == "failed" and record["error"].startswith("DivergenceError")
    assert record["trial"]["epochs"] < 6  # stopped at once, not at the budget's end
    assert outcome.summaries["map"]["diverged"] == 1 and outcome.summaries["map"]["failed"] == 1


def test_post_hoc_trials_share_one_map_per_seed(tmp_path):
    task = load_task("digits-mlp")
    outcome = tune(task, ["laplace-ll"], 4, [1000, 1001], "nll", tmp_path / "studies", OPTIONS, run_serial, 1)
    runs = _runs(tmp_path, "laplace-ll")
    lookups = [lookup for record in runs.values() for lookup in record["map_store"]["lookups"]]
    assert len(runs) == 8 and sum(not lookup["reused"] for lookup in lookups) == 2  # one training per seed
    assert outcome.summaries["laplace-ll"]["map_trainings_per_seed"] == 1.0
    assert len({lookup["key"] for lookup in lookups}) == 2


def test_settings_a_method_refuses_are_not_trials(tmp_path):
    """score-vi's antithetic pairs need an even sample count: a draw of antithetic with S = 1 is marked invalid,
    costs no run and does not count against the trials."""
    task_file = tmp_path / "digits-mlp.toml"
    task_file.write_text(load_task("digits-mlp").path.read_text() + "\n[tune.score-vi]\n"
                         'vi_lr = { distribution = "log-uniform", low = 1e-3, high = 1e-2 }\n'
                         "train_samples = { choices = [1] }\nantithetic = { choices = [true, false] }\n"
                         "inner_steps = { choices = [1] }\nprox_weight = { choices = [1.0] }\n"
                         "prior_std = { choices = [1.0] }\n")
    task = load_task(str(task_file))
    outcome = tune(task, ["score-vi"], 3, [1000], "nll", tmp_path / "studies", OPTIONS, run_serial, 1,
                   pruner="none")
    study = _study(tmp_path, task, "score-vi")
    invalid = [t for t in study.trials if "invalid" in t.user_attrs]
    valid = [t for t in study.trials if "invalid" not in t.user_attrs]
    assert invalid and all(t.params["antithetic"] for t in invalid) and "even train_samples" in \
        invalid[0].user_attrs["invalid"]
    assert len(valid) == 3 and not any(t.params["antithetic"] for t in valid)
    assert outcome.summaries["score-vi"]["trials"] == 3 and len(_runs(tmp_path, "score-vi")) == 3


def test_reports_refuse_the_seeds_that_tuned_their_settings(tmp_path, cli):
    task = load_task("digits-mlp")
    outcome = tune(task, ["map"], 1, [1000], "nll", tmp_path / "studies", OPTIONS, run_serial, 1)
    path = tmp_path / "tuned.toml"
    write_tuned(path, task, outcome)
    assert load_tuned(path)["tuning_seeds"] == [1000]
    common = ("run", "--task", "digits-mlp", "--method", "map", "--budget", "ci", "--epochs", "1", "--device", "cpu",
              "--results-dir", str(tmp_path / "results"), "--tuned", str(path), "--quiet")
    refused = cli(*common, "--seed", "999..1001")
    assert_usage_error(refused, "seed 1000 was a tuning seed", "tuning seeds: 1000")
    assert not (tmp_path / "results").exists()
    assert cli(*common, "--seed", "0").code == 0
    with pytest.raises(UsageError, match="tuning seed"):
        from bnnbench import api

        api.sweep(["digits-mlp"], ["map"], seeds=[1000], tuned=path, results_dir=tmp_path / "sweep")
