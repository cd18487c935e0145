"""Shared fixtures. Tests run offline, on the CPU, one torch thread per pytest worker (two workers on the
two cores would otherwise oversubscribe them and make timings and thread-dependent sums vary)."""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("BNNBENCH_CACHE", os.path.join(tempfile.gettempdir(), "bnnbench-test-cache"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def results_dir(tmp_path):
    """A results directory that does not exist yet."""
    return tmp_path / "results"


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys):
    """`cli(*args)` runs `bnnbench ARGS...` through the real entry point `main()` in-process."""
    from bnnbench.cli import main

    def invoke(*args: str) -> CliResult:
        argv = sys.argv
        sys.argv = ["bnnbench", *args]
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            sys.argv = argv
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke
