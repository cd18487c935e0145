"""bnnbench runs on Python 3.10, the oldest its pyproject admits (requires-python): vermin finds no construct newer
than 3.10 in the package, and does find one planted in a copy of it. `make lint` runs the same check."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vermin", reason="vermin is a dev dependency: `make install`")

PACKAGE = Path(__file__).resolve().parents[1] / "bnnbench"
# --violations with --target=3.10-: exit 1 on anything that needs a later Python. --eval-annotations: the package
# evaluates some annotations (typing.get_type_hints on hyper-parameter classes), so they must hold on 3.10 as well.
# `X | Y` unions need 3.10 itself, so they pass (the package has dozens). Keep equal to the Makefile's lint target.
VERMIN_OPTIONS = ("--target=3.10-", "--violations", "--eval-annotations", "--no-tips", "--no-config-file")


def vermin(package: Path) -> subprocess.CompletedProcess:
    """vermin on `package` through this interpreter (vermin has no `python -m` entry)."""
    return subprocess.run([sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())", *VERMIN_OPTIONS,
                           str(package)], capture_output=True, text=True, timeout=120)


def test_the_package_needs_nothing_newer_than_python_3_10():
    checked = vermin(PACKAGE)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Minimum required versions: 3.10" in checked.stdout, checked.stdout


PLANTED_3_11 = {
    "tomllib": ("import tomllib\n", "'tomllib' module requires !2, 3.11"),
    "except-star": ("def f():\n    try:\n        pass\n    except* ValueError:\n        pass\n",
                    "`except*` requires !2, 3.11"),
}


@pytest.mark.parametrize("construct", sorted(PLANTED_3_11))
def test_a_construct_newer_than_3_10_fails_the_check(tmp_path, construct):
    if construct == "except-star" and sys.version_info < (3, 11):
        pytest.skip("this interpreter cannot parse except*")
    source, reason = PLANTED_3_11[construct]
    copy = tmp_path / "bnnbench"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "planted.py").write_text(source)
    checked = vermin(copy)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"3.11     {copy / 'planted.py'}" in checked.stdout and reason in checked.stdout, checked.stdout
    assert "Target versions not met:   3.10-" in checked.stdout
