"""Exceptions that the CLI turns into one-line messages and exit codes.

User mistakes (bad task, method, option, file) are `UsageError` and exit 2 before anything is written;
a run that breaks while training (NaN loss) is `DivergenceError`, recorded as a failed run, exit 1.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["BnnbenchError", "DivergenceError", "RunPruned", "UsageError", "error_line", "unknown_choice"]


class BnnbenchError(Exception):
    """Base class of every error bnnbench reports to a user."""


class UsageError(BnnbenchError):
    """Bad input: an unknown name, a malformed file, an impossible option."""


class DivergenceError(BnnbenchError):
    """Training produced a non-finite loss, or (in a tuning trial) a validation NLL far above its best."""


class RunPruned(BnnbenchError):  # noqa: N818 (a pruned run is an outcome, not an error)
    """A tuning trial's pruner stopped the run after `epoch` epochs (its validation NLL trailed the study's)."""

    def __init__(self, message: str, epoch: int) -> None:
        super().__init__(message)
        self.epoch = epoch


def error_line(error: BaseException) -> str:
    """"Type: first line of the message", for reporting someone else's exception on one line."""
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


def unknown_choice(kind: str, value: object, choices: Iterable[str], where: str = "") -> UsageError:
    """An error naming the bad value, the closest valid name and all valid choices.

    `where` (a file, say) prefixes the message so a user knows what to edit.
    """
    choices = sorted(choices)
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    prefix = f"{where}: " if where else ""
    return UsageError(f"{prefix}unknown {kind} '{value}'{hint}; valid choices: {', '.join(choices)}")
