"""Where the files that ship with bnnbench are: its task files (the checkout's top-level `tasks/`, which
`bnnbench/task_files` links to so that package discovery ships them inside the package) and, in a checkout, the
committed HMC references."""

from __future__ import annotations

from pathlib import Path

__all__ = ["builtin_tasks_dir", "committed_references_dir"]


def builtin_tasks_dir() -> Path:
    """The task files shipped with bnnbench."""
    return Path(__file__).parent / "task_files"


def committed_references_dir() -> Path:
    """`results/references` of the bnnbench checkout this code runs from (absent from an installed wheel)."""
    return Path(__file__).resolve().parents[1] / "results" / "references"
