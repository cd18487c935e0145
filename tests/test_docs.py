"""docs/methods.md's example method is code, not prose: it is run through the conformance kit and the CLI here."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from bnnbench.testing import check_method
from bnnbench.types import ParameterPosterior

METHODS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "methods.md"


def _example_source() -> str:
    text = METHODS_PAGE.read_text()
    section = text[text.index("## A complete method"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_method_authors_page_example_meets_the_contract_and_runs(cli, tmp_path, monkeypatch):
    source = _example_source()
    assert len(source.splitlines()) <= 50, "the page promises a method in about 40 lines"
    (tmp_path / "map_noise.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("map_noise")
    report = check_method(module.SPEC)
    assert set(report.seconds) == {"digits-mlp", "digits-cnn", "digits-vit"} and not report.skipped, report

    # the page's console commands, on the CI budget and one seed
    results = tmp_path / "results"
    ran = cli("run", "--task", "digits-mlp", "--method", "map_noise:SPEC", "--seed", "0", "--budget", "ci",
              "--set", "weight_noise=0.02", "--quiet", "--results-dir", str(results))
    assert ran.code == 0, ran.stderr
    board = cli("compare", "--task", "digits-mlp", "--results-dir", str(results))
    assert board.code == 0 and "map-noise" in board.stdout, board.stdout + board.stderr
    assert issubclass(module.NoisyWeights, ParameterPosterior)
