"""The package's layers (pyproject's [tool.importlinter] contracts) hold, and would catch an import that runs up."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the `bnnbench` package found first under `root`, with `root`'s pyproject contracts."""
    environment = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml")], cwd=root,
                          env=environment, capture_output=True, text=True, timeout=120)


def test_every_contract_is_kept():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout, result.stdout


def test_an_upward_import_breaks_the_layers_and_makes_a_cycle(tmp_path):
    shutil.copytree(REPO / "bnnbench", tmp_path / "bnnbench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    errors = tmp_path / "bnnbench" / "errors.py"
    errors.write_text(errors.read_text() + "\nimport bnnbench.runner  # planted: the bottom layer reaching up\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "bnnbench is layered BROKEN" in result.stdout, result.stdout
    assert "no import cycles among the modules of any package of bnnbench BROKEN" in result.stdout, result.stdout
    assert "bnnbench.errors -> bnnbench.runner" in result.stdout, result.stdout


def test_a_module_outside_every_layer_is_refused(tmp_path):
    shutil.copytree(REPO / "bnnbench", tmp_path / "bnnbench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "bnnbench" / "stray.py").write_text('"""A module nobody gave a layer."""\n')
    result = lint_imports(tmp_path)
    assert result.returncode != 0 and "bnnbench.stray" in result.stdout + result.stderr, result.stdout
