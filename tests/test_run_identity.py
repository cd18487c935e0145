"""A run id covers the whole effective configuration: two models under one task name never share one, and the
leaderboard never averages them together. Results with ids of the old kind are still read, and said to be so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bnnbench.package_files import builtin_tasks_dir

CPU = ("--device", "cpu", "--budget", "ci", "--quiet")


def _edited_copy(folder: Path, old: str, new: str) -> Path:
    """digits-mlp.toml saved under its own name in `folder`, with `old` replaced by `new`."""
    folder.mkdir(parents=True, exist_ok=True)
    text = (builtin_tasks_dir() / "digits-mlp.toml").read_text()
    assert old in text
    path = folder / "digits-mlp.toml"
    path.write_text(text.replace(old, new))
    return path


def _plan(task, **options):
    from bnnbench.runner import prepare

    return prepare(task, "map", budget_name="ci", device="cpu", show_progress=False, **options)


def test_another_model_data_or_eval_table_is_another_run_id_and_the_same_content_is_the_same(tmp_path):
    built_in = _plan("digits-mlp")
    same = _plan(_edited_copy(tmp_path / "same", "", ""))
    assert same.config_hash == built_in.config_hash  # the identity is the content, not the file's path
    for old, new in (("hidden = [128, 128]", "hidden = [8]"), ("split_seed = 0", "split_seed = 1"),
                     ("n_eval_samples = 32", "n_eval_samples = 16"), ('likelihood = "categorical"',
                                                                      'likelihood = { name = "categorical" }')):
        edited = _plan(_edited_copy(tmp_path / new.split()[0], old, new))
        changed = edited.config_hash != built_in.config_hash
        assert changed == (old.split()[0] != "likelihood"), (old, new)  # a table spelling of one likelihood: same
    assert _plan("digits-mlp", overrides={"model.hidden": [8]}).config_hash == \
        _plan(_edited_copy(tmp_path / "eight", "hidden = [128, 128]", "hidden = [8]")).config_hash


def test_an_edited_copy_of_a_task_is_run_not_skipped_and_compare_keeps_it_apart(cli, tmp_path):
    results = tmp_path / "results"
    assert cli("run", "--task", "digits-mlp", "--method", "map", "--seed", "0", "--results-dir", str(results),
               *CPU).code == 0
    copy = _edited_copy(tmp_path / "mine", "hidden = [128, 128]", "hidden = [8]")
    second = cli("run", "--task", str(copy), "--method", "map", "--seed", "0", "--results-dir", str(results), *CPU)
    assert second.code == 0, second.stderr
    assert "skipped" not in second.stdout + second.stderr
    assert len(list(results.glob("digits-mlp/map/*/metrics.csv"))) == 2

    from bnnbench import api

    board = api.compare(results)
    accuracy = board[board["column"] == "acc"]
    assert len(accuracy) == 2 and set(accuracy["n"]) == {1}, accuracy  # two rows of one seed, never one of two


def test_results_with_ids_of_the_old_kind_are_read_and_said_to_be(cli, tmp_path):
    from bnnbench.results import load_results

    results = tmp_path / "results"
    assert cli("run", "--task", "digits-mlp", "--method", "map", "--seed", "0", "--results-dir", str(results),
               *CPU).code == 0
    (run,) = results.glob("digits-mlp/map/*")
    old = run.with_name(run.name.replace(".s0", ".s1"))
    shutil.copytree(run, old)
    record = json.loads((old / "run.json").read_text())
    del record["identity"]
    record.update(run_id=old.name, seed=1)
    (old / "run.json").write_text(json.dumps(record))
    metrics = (old / "metrics.csv").read_text().replace(run.name, old.name)
    (old / "metrics.csv").write_text(metrics)
    warnings: list[str] = []
    runs, rows = load_results(results, warnings.append)
    assert len(runs) == 2 and set(rows["run_id"]) == {run.name, old.name}
    assert len(warnings) == 1 and "1 run(s)" in warnings[0] and "old kind" in warnings[0], warnings
