"""Where the files that ship with bnnbench are: its task files (package data in a wheel, `tasks/` in a checkout)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["builtin_tasks_dir"]


def builtin_tasks_dir() -> Path:
    """The task files shipped with bnnbench (package data in a wheel, `tasks/` in a checkout)."""
    packaged = Path(__file__).parent / "task_files"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "tasks"
