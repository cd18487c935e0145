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

# Tests of 15 s or more on this project's 2-core machine (make test's --durations), handed out first: pytest-xdist
# gives tests to its workers in collection order, and one of these handed out last kept one worker busy for a
# minute or two while the other idled (make test took 504 to 686 s on one commit, issue 35).
LONG_TESTS = ("test_doctor.py::test_tiny_check_on_the_cpu", "test_run.py::test_ci_gate",
              "test_pruning.py::test_post_hoc_trials", "test_sampled_laplace.py::test_samples_have_the_exact",
              "test_sweep.py::test_a_worker_killed", "test_sweep.py::test_local_sweep",
              "test_map_store.py::test_the_key", "test_plugins.py::test_installed_example",
              "test_vi.py::test_sanity_blr", "test_vi.py::test_elbo_vi_recovers", "test_hmc.py::test_nuts_recovers",
              "test_conformance.py::test_every_registered_method")


def pytest_collection_modifyitems(config, items):
    """The long tests first, each group in its collection order (a stable sort: every worker sees one order)."""
    items.sort(key=lambda item: not any(name in item.nodeid for name in LONG_TESTS))


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
