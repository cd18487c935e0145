"""`bnnbench tune`: search spaces, validation-only trials, the equal trial budget, resuming a killed study, the
tuned file and `run --tuned`, and the tuning column of `compare`. Trials run in this process (a serial stand-in for
the sweep executors, through the same `sweep._execute`) at a few epochs of digits-mlp."""

from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path

import optuna
import pytest
from assertions import assert_usage_error

from bnnbench.errors import UsageError
from bnnbench.methods import find_method
from bnnbench.sweep import _execute, job_ended_ok
from bnnbench.tasks import load_task
from bnnbench.tune import search_space, study_name, tune
from bnnbench.tuned import load_tuned, write_tuned

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::optuna.exceptions.ExperimentalWarning")

OPTIONS = {"budget_name": "ci", "epochs": 2, "device": "cpu"}


def run_serial(jobs, on_done):
    """The sweep executors' contract, one job at a time in this process (monkeypatches reach the runs)."""
    pending = list(jobs)
    while pending:
        job = pending.pop(0)
        if job_ended_ok(job):
            continue
        status, error, _ = _execute(job)
        pending += on_done(job.run_id, status, error)


def _tune(tmp_path, methods=("map",), trials=3, **kwargs):
    kwargs.setdefault("pruner", "none")  # these tests are about the studies; pruning has its own
    task = load_task("digits-mlp")
    return task, tune(task, list(methods), trials, [1000], "nll", tmp_path / "studies", OPTIONS, run_serial, 1,
                      **kwargs)


def _val_nll(run_json: Path) -> float:
    with open(run_json.with_name("metrics.csv"), newline="") as handle:
        rows = [row for row in csv.DictReader(handle)]
    assert {row["split"] for row in rows} == {"val"}  # a trial run scores nothing else
    return next(float(row["value"]) for row in rows if row["metric"] == "nll")


def test_search_space_takes_the_task_table_and_leaves_out_what_the_posterior_fixes(tmp_path):
    score_vi = find_method("score-vi")[0]
    declared = [dimension.name for dimension in score_vi.search_space]
    assert declared[:2] == ["vi_lr", "prior_std"] and {"inner_steps", "prox_weight", "init_std"} <= set(declared)
    assert {"train_samples", "antithetic", "control_variate"} <= set(declared)  # the score's noise is a setting too
    fidelity = [dimension.name for dimension in search_space(score_vi, load_task("digits-fidelity"))]
    assert "prior_std" not in fidelity and "prior_centre" not in fidelity  # the task's [posterior] fixes them
    assert fidelity[0] == "vi_lr" and "prox_weight" in fidelity
    text = load_task("digits-mlp").path.read_text()
    task_file = tmp_path / "digits-mlp.toml"
    task_file.write_text(text + '\n[tune.score-vi]\nvi_lr = { distribution = "log-uniform", low = 1e-5, high = 1e-4 }'
                         '\ntemperature = { choices = [0.5, 1.0] }\n')
    space = {dimension.name: dimension for dimension in search_space(score_vi, load_task(str(task_file)))}
    assert (space["vi_lr"].low, space["vi_lr"].high) == (1e-5, 1e-4)
    assert space["temperature"].choices == (0.5, 1.0) and space["temperature"].distribution == "categorical"


@pytest.mark.parametrize(("entry", "fragment"), [
    ('lr = { distribution = "log-uniform", low = 0, high = 1 }', "low > 0"),
    ('lr = { distribution = "normal", low = 1, high = 2 }', "unknown distribution 'normal'"),
    ('lr = { distribution = "uniform", low = 2, high = 1 }', "low < high"),
    ('lr = { choices = [] }', "non-empty"),
    ('learning_rate = { distribution = "uniform", low = 1, high = 2 }', "'learning_rate'"),
])
def test_a_bad_tune_table_is_a_one_line_error(tmp_path, cli, entry, fragment):
    task_file = tmp_path / "digits-mlp.toml"
    task_file.write_text(load_task("digits-mlp").path.read_text() + f"\n[tune.map]\n{entry}\n")
    result = cli("tune", "--task", str(task_file), "--methods", "map", "--trials", "1", "--study-dir",
                 str(tmp_path / "studies"), "--quiet")
    assert_usage_error(result, fragment)
    assert not (tmp_path / "studies").exists()


def test_tuning_never_reads_the_test_split(tmp_path, monkeypatch):
    """The data's test split raises on any use: a tune completes, while a full run of the same method fails on it
    (so the guard would catch a tuning run that read the test split)."""
    import bnnbench.runner as runner
    from bnnbench.data import LoadedData, load_data

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the test split was read ({name})")

        def __len__(self):
            raise AssertionError("the test split was read (len)")

    def guarded(*args, **kwargs):
        loaded = load_data(*args, **kwargs)
        return LoadedData(loaded.bundle, Untouchable(), loaded.ood, loaded.official_corruptions, loaded.info)

    runner._load_cached.cache_clear()
    monkeypatch.setattr("bnnbench.data.load_data", guarded)
    try:
        task, outcome = _tune(tmp_path, trials=2)
        assert outcome.summaries["map"]["complete"] == 2
        plan = runner.prepare("digits-mlp", "map", results_dir=tmp_path / "full", show_progress=False, **OPTIONS)
        full = runner.run(plan, 0)
        assert full.status == "failed" and "the test split was read" in full.error
    finally:
        runner._load_cached.cache_clear()


def test_each_method_gets_the_same_trials_and_the_best_is_the_runs_own_value(tmp_path):
    task, outcome = _tune(tmp_path, methods=("map", "mc-dropout"), trials=3)
    storage = f"sqlite:///{tmp_path / 'studies' / 'digits-mlp.db'}"
    for method in ("map", "mc-dropout"):
        study = optuna.load_study(study_name=study_name(task, method), storage=storage)
        assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
        for trial in study.trials:  # the objective is the trial run's validation NLL, read back
            (run_id,) = trial.user_attrs["run_ids"]
            run_json = next((tmp_path / "studies" / "runs").glob(f"digits-mlp/{method}/{run_id}/run.json"))
            assert trial.value == pytest.approx(_val_nll(run_json), rel=1e-12)
            assert json.loads(run_json.read_text())["evaluated"] == "val"
        assert outcome.summaries[method]["best_value"] == min(t.value for t in study.trials)
        assert outcome.best[method] == study.best_trial.params
    path = tmp_path / "tuned" / "digits-mlp.toml"
    write_tuned(path, task, outcome)
    data = load_tuned(path)
    assert data["tuned"]["map"] == outcome.best["map"] and data["summary"]["map"]["trials"] == 3
    assert data["summary"]["mc-dropout"]["search_space"]["rate"] == {"distribution": "uniform", "low": 0.01,
                                                                     "high": 0.5}


def test_a_killed_tune_resumes_and_leaves_a_live_ones_trials_alone(tmp_path):
    """A RUNNING trial whose tune process is gone is run again with its settings and told; one held by a live
    process counts against the budget and is left running; the study ends at the trial budget."""
    task, _ = _tune(tmp_path, trials=1)
    storage = f"sqlite:///{tmp_path / 'studies' / 'digits-mlp.db'}"
    study = optuna.load_study(study_name=study_name(task, "map"), storage=storage)
    host = socket.gethostname()
    for owner, lr in ((f"{host}:{2**22 + 12345}", 3e-3), (f"{host}:{os.getppid()}", 2e-3)):  # dead pid, live pid
        study.enqueue_trial({"lr": lr, "weight_decay": 1e-4})
        trial = study.ask()
        trial.set_user_attr("owner", owner)
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    _, outcome = _tune(tmp_path, trials=4)
    states = {t.number: t.state.name for t in study.trials}
    assert states[1] == "COMPLETE" and states[2] == "RUNNING"  # the dead one re-run, the live one untouched
    assert study.trials[1].params["lr"] == 3e-3 and study.trials[1].user_attrs["owner"].endswith(f":{os.getpid()}")
    assert len(study.trials) == 4 and outcome.summaries["map"]["complete"] == 3


def test_run_tuned_applies_the_settings_records_them_and_compare_says_so(tmp_path, cli):
    task, outcome = _tune(tmp_path, trials=2)
    path = tmp_path / "tuned" / "digits-mlp.toml"
    write_tuned(path, task, outcome)
    results = tmp_path / "results"
    common = ("--task", "digits-mlp", "--method", "map", "--budget", "ci", "--epochs", "2", "--device", "cpu",
              "--quiet", "--results-dir", str(results))
    assert cli("run", *common, "--tuned", str(path)).code == 0
    assert cli("run", *common).code == 0
    tuned_record = [json.loads(p.read_text()) for p in results.glob("digits-mlp/map/*/run.json")]
    tuned_record = next(r for r in tuned_record if "tuned" in r)
    assert tuned_record["hparams"]["lr"] == outcome.best["map"]["lr"]
    assert tuned_record["tuned"]["trials"] == 2 and tuned_record["tuned"]["settings"] == outcome.best["map"]
    board = cli("compare", "--task", "digits-mlp", "--results-dir", str(results), "--format", "csv")
    assert board.code == 0
    rows = list(csv.DictReader(board.stdout.splitlines()))
    summary = outcome.summaries["map"]
    assert {row["tuning"] for row in rows} == {"hand", f"2 trials, 0 pruned (ci, {summary['full_runs']:g} full runs)"}
    from matplotlib.image import imread

    from bnnbench.report import build_report

    report = build_report(results, tmp_path / "report")
    (figure,) = [image for image in report.images if "tuning" in image.name]
    assert any(section.endswith("-tuning") for section in report.sections) and imread(figure).shape[0] > 100


def test_run_tuned_refuses_a_file_for_another_task_or_method(tmp_path, cli):
    task, outcome = _tune(tmp_path, trials=1)
    path = tmp_path / "tuned.toml"
    write_tuned(path, task, outcome)
    stale = tmp_path / "stale.toml"
    stale.write_text(path.read_text().replace("task_version = 1", "task_version = 9"))
    common = ("--task", "digits-mlp", "--budget", "ci", "--quiet", "--results-dir", str(tmp_path / "r"))
    assert_usage_error(cli("run", *common, "--method", "map", "--tuned", str(stale)), "v9", "not 'digits-mlp' v1")
    assert_usage_error(cli("run", *common, "--method", "swag", "--tuned", str(path)), "'swag'", "map")
    (tmp_path / "junk.toml").write_text("not = [toml")
    assert_usage_error(cli("run", *common, "--method", "map", "--tuned", str(tmp_path / "junk.toml")), "not a TOML")
    assert not (tmp_path / "r").exists()


def test_an_objective_the_validation_split_lacks_is_refused():
    with pytest.raises(UsageError, match="agreement"):
        tune(load_task("digits-fidelity"), ["map"], 1, [0], "agreement", Path("unused"), OPTIONS, run_serial, 1)


def test_a_resumed_study_draws_new_settings(tmp_path):
    """Each tune process seeds its samplers by the study's progress: a second tune on the same study does not
    replay the first one's draws (a sampler seeded as before would, and its budget would buy repeats)."""
    task, _ = _tune(tmp_path, trials=2)
    _tune(tmp_path, trials=4)
    study = optuna.load_study(study_name=study_name(task, "map"),
                              storage=f"sqlite:///{tmp_path / 'studies' / 'digits-mlp.db'}")
    assert len({trial.params["lr"] for trial in study.trials}) == 4


def test_a_small_categorical_space_is_tried_once_per_setting(tmp_path):
    """A space of 2 x 2 settings with 6 trials allowed gets those 4, each once (TPE would repeat some)."""
    task_file = tmp_path / "digits-mlp.toml"
    task_file.write_text(load_task("digits-mlp").path.read_text() + "\n[tune.map]\nlr = { choices = [1e-3, 2e-3] }\n"
                         "weight_decay = { choices = [0.0, 1e-4] }\n")
    task = load_task(str(task_file))
    outcome = tune(task, ["map"], 6, [1000], "nll", tmp_path / "studies", OPTIONS, run_serial, 1, pruner="none")
    study = optuna.load_study(study_name=study_name(task, "map"),
                              storage=f"sqlite:///{tmp_path / 'studies' / 'digits-mlp.db'}")
    settings = sorted((t.params["lr"], t.params["weight_decay"]) for t in study.trials)
    assert settings == [(1e-3, 0.0), (1e-3, 1e-4), (2e-3, 0.0), (2e-3, 1e-4)]
    assert outcome.summaries["map"]["complete"] == 4


def test_a_tie_keeps_the_methods_own_setting(tmp_path):
    """Settings that do not change the numbers (a gradient clip far above any gradient norm, in laplace-ll's MAP
    phase) tie; the tuned file then keeps the method's own setting (no clipping), not whichever tie came first."""
    task_file = tmp_path / "digits-mlp.toml"
    table = ('[tune.laplace-ll]\nhessian = { choices = ["kron"] }\nlink_approx = { choices = ["probit"] }\n'
             'grad_clip = { choices = [1e9, 0.0] }\n')
    task_file.write_text(load_task("digits-mlp").path.read_text() + "\n" + table)
    task = load_task(str(task_file))
    outcome = tune(task, ["laplace-ll"], 2, [1000], "nll", tmp_path / "studies", OPTIONS, run_serial, 1)
    summary = outcome.summaries["laplace-ll"]
    assert summary["tied_trials"] == 2 and summary["chose_default"] and summary["best_trial"] == 1
    assert outcome.best["laplace-ll"] == {"hessian": "kron", "link_approx": "probit", "grad_clip": 0.0}


def test_the_sampler_seed_makes_a_fresh_study_repeatable(tmp_path):
    """Seeded per (seed, task, method, trial number): two fresh studies draw the same settings, another seed others."""
    def settings(folder, seed=0):
        task = load_task("digits-mlp")
        tune(task, ["map"], 2, [1000], "nll", folder, OPTIONS, run_serial, 1, sampler_seed=seed, pruner="none")
        study = optuna.load_study(study_name=study_name(task, "map"), storage=f"sqlite:///{folder / 'digits-mlp.db'}")
        return [trial.params for trial in study.trials]

    first = settings(tmp_path / "a")
    assert settings(tmp_path / "b") == first and settings(tmp_path / "c", seed=1) != first
