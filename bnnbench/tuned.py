"""`tuned/<task>.toml`, what `bnnbench tune` leaves: each method's best settings and its study's summary. Written
by the tuner, read by `bnnbench run --tuned` and by the report, so its format lives apart from both."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnnbench import atomic, tomlfile
from bnnbench.errors import UsageError, unknown_choice
from bnnbench.tomlfile import toml_key, toml_value
from bnnbench.types import TaskSpec

__all__ = ["TUNED_FORMAT", "TUNING_SEEDS", "TuneOutcome", "check_report_seeds", "load_tuned", "tuned_overrides",
           "write_tuned"]

TUNED_FORMAT = 1
# A study's default seeds: apart from the leaderboards' (0, 1, 2, ...), so that no reported run shares its seed,
# and with it its initial weights and batch order, with a run that chose its settings
TUNING_SEEDS = (1000,)


@dataclass
class TuneOutcome:
    """What a tune did: per method the study's summary (what `tuned/<task>.toml` records)."""

    task: str
    objective: str
    direction: str
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    best: dict[str, dict[str, Any]] = field(default_factory=dict)
    storage: str = ""
    seeds: list[int] = field(default_factory=list)  # the studies' seeds, which reported runs must not use


def write_tuned(path: Path, task: TaskSpec, outcome: TuneOutcome) -> None:
    """`tuned/<task>.toml`: `[tuned.<method>]` the best settings, `[summary.<method>]` the study (atomically)."""
    lines = [f"# Written by `bnnbench tune`: each method's best settings on task {task.name} v{task.version} by the",
             f"# mean validation {outcome.objective} over the seeds, and its study. `bnnbench run --tuned {path}` "
             "applies them.",
             f"format = {TUNED_FORMAT}", f"task = {toml_value(task.name)}", f"task_version = {task.version}",
             f"objective = {toml_value(outcome.objective)}", f"direction = {toml_value(outcome.direction)}",
             f"storage = {toml_value(outcome.storage)}",
             "# the seeds the studies ran; `run --tuned` refuses them (a report's seeds are not its tuning seeds)",
             f"tuning_seeds = {toml_value(list(outcome.seeds))}", ""]
    for method, best in outcome.best.items():
        if not best:
            continue
        lines.append(f"[tuned.{toml_key(method)}]")
        lines += [f"{toml_key(key)} = {toml_value(value)}" for key, value in best.items()]
        lines.append("")
    for method, summary in outcome.summaries.items():
        lines.append(f"[summary.{toml_key(method)}]")
        lines += [f"{toml_key(key)} = {toml_value(value)}" for key, value in summary.items()]
        lines.append("")
    atomic.write_text(path, "\n".join(lines) + "\n")


def load_tuned(path: Path) -> dict[str, Any]:
    """A tuned file, checked: UsageError (one line) when it is missing, not TOML or not one `write_tuned` wrote."""
    try:
        data = tomlfile.loads(Path(path).read_text())
    except OSError as error:
        raise UsageError(f"--tuned {path}: cannot read it ({error.strerror or error})") from None
    except (tomlfile.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"--tuned {path}: not a TOML file ({error})") from None
    if data.get("format") != TUNED_FORMAT or not isinstance(data.get("task"), str) or \
            not isinstance(data.get("tuned", {}), dict) or not isinstance(data.get("summary", {}), dict):
        raise UsageError(f"--tuned {path}: not a tuned file of format {TUNED_FORMAT} (write one with `bnnbench tune`)")
    return data


def check_report_seeds(path: Path, seeds: list[int]) -> None:
    """UsageError when a seed of a reported run was a seed of the studies that made the tuned file (its
    `tuning_seeds`; a file written before they were recorded: the seeds of its summaries)."""
    data = load_tuned(path)
    tuning = data.get("tuning_seeds")
    if tuning is None:
        tuning = sorted({seed for summary in data.get("summary", {}).values() for seed in summary.get("seeds", [])})
    shared = [seed for seed in seeds if seed in tuning]
    if shared:
        raise UsageError(f"seed {shared[0]} was a tuning seed of --tuned {path} (tuning seeds: "
                         f"{', '.join(map(str, tuning))}); report on other seeds, e.g. 0..2")


def tuned_overrides(path: Path, task: TaskSpec, method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the method's tuned settings, what run.json records of them) from a tuned file made for this task version.
    UsageError when it was made for another task or version, or does not tune this method."""
    data = load_tuned(path)
    if data["task"] != task.name or data.get("task_version") != task.version:
        raise UsageError(f"--tuned {path} was made for task '{data['task']}' v{data.get('task_version')}, not "
                         f"'{task.name}' v{task.version}")
    tuned = data.get("tuned", {})
    if method not in tuned:
        raise unknown_choice(f"method in --tuned {path}", method, sorted(tuned), "--method")
    summary = data.get("summary", {}).get(method, {})
    record = {"path": str(path), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
              "objective": data.get("objective"), "trials": summary.get("trials"), "seconds": summary.get("seconds"),
              "budget": summary.get("budget"), "best_value": summary.get("best_value"), "settings": tuned[method],
              "pruned": summary.get("pruned"), "full_runs": summary.get("full_runs"),
              "tuning_seeds": data.get("tuning_seeds")}
    return dict(tuned[method]), record

