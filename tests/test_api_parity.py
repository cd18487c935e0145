"""The command line's `run`, `sweep` and `tune` and the Python API's functions of those names take the same options:
an option on one side only fails here, so the two entry points cannot drift apart again."""

from __future__ import annotations

import inspect

import pytest
import typer.main

from bnnbench import api
from bnnbench.cli import app

# CLI parameter -> API parameter, where the names differ
RENAMED = {
    "run": {"seed": "seeds", "set_": "overrides", "tasks_dir": "task_dirs", "compile_": "compile",
            "quiet": "show_progress"},  # run's progress bars are the runner's: the API takes the (inverted) flag
    "sweep": {"set_": "grid", "tasks_dir": "task_dirs"},
    "tune": {"out_file": "out", "tasks_dir": "task_dirs"},
}
# CLI options that only change what is printed (the live sweep table, the line per trial)
PRESENTATION_ONLY = {"run": set(), "sweep": {"quiet"}, "tune": {"quiet"}}
# API parameters through which the CLI hears what to print
CALLBACKS = {"run": {"on_run"}, "sweep": {"on_update"}, "tune": {"on_trial"}}

COMMANDS = typer.main.get_command(app).commands


def cli_options(command: str) -> set[str]:
    return {param.name for param in COMMANDS[command].params}


def api_parameters(command: str) -> set[str]:
    return set(inspect.signature(getattr(api, command)).parameters)


@pytest.mark.parametrize("command", ["run", "sweep", "tune"])
def test_the_cli_and_the_api_take_the_same_options(command):
    cli, renamed = cli_options(command), RENAMED[command]
    expected = {renamed.get(name, name) for name in cli - PRESENTATION_ONLY[command]}
    actual = api_parameters(command) - CALLBACKS[command]
    assert not expected - actual, f"`bnnbench {command}` options the API lacks: {sorted(expected - actual)}"
    assert not actual - expected, f"api.{command} parameters the CLI lacks: {sorted(actual - expected)}"


@pytest.mark.parametrize("command", ["run", "sweep", "tune"])
def test_the_tables_name_only_options_that_exist(command):
    """A stale entry would hide a real difference: every name in the tables is an option or parameter today."""
    cli = cli_options(command)
    assert set(RENAMED[command]) <= cli and PRESENTATION_ONLY[command] <= cli
    assert set(RENAMED[command].values()) | CALLBACKS[command] <= api_parameters(command)
