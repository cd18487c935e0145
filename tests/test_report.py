"""`bnnbench report`: the page's sections and images, the numbers behind its figures checked against what the
evaluator wrote, the Pareto front against brute force, and (marked `browser`, run by `make report-check`) the
page rendered in headless Chromium with every image decoded."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bnnbench.errors import UsageError
from bnnbench.figures import pareto_front
from bnnbench.metrics import expected_calibration_error, reliability_bins
from bnnbench.report import build_report

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """Two methods x two seeds of digits-mlp and one forecasting run, predictions saved (about 15 s)."""
    from bnnbench.runner import prepare, run

    root = tmp_path_factory.mktemp("report") / "results"
    for task, methods, seeds in (("digits-mlp", ("map", "elbo-vi"), (0, 1)), ("ts-co2-mlp", ("map",), (0,))):
        for method in methods:
            plan = prepare(task, method, budget_name="ci", epochs=3, device="cpu", results_dir=root,
                           save_predictions=True, show_progress=False)
            for seed in seeds:
                assert run(plan, seed).status == "ok"
    return root


class _Page(HTMLParser):
    """Section ids, image sources and the leaderboard cells (row header -> texts) of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.sections, self.images, self.rows = [], [], {}
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row:
            self.rows.setdefault(self._row[0], self._row[1:])
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(page: Path) -> _Page:
    parser = _Page()
    parser.feed(page.read_text())
    return parser


def _metric(results: Path, task: str, method: str, metric: str) -> list[float]:
    """The clean-test values of `metric` the evaluator wrote, one per seed."""
    frames = [pd.read_csv(path) for path in sorted(results.glob(f"{task}/{method}/*/metrics.csv"))]
    return [float(f[(f["split"] == "test") & (f["corruption"] == "none") & (f["metric"] == metric)]["value"].iloc[0])
            for f in frames]


def test_report_has_every_section_and_image(results, tmp_path):
    report = build_report(results, tmp_path / "report")
    page = _parse(report.page)
    expected = []
    for slug, parts in (("digits-mlp-v1", ("leaderboard", "reliability", "severity", "cost", "convergence")),
                        ("ts-co2-mlp-v1", ("leaderboard", "cost", "forecast"))):
        expected += [slug, *(f"{slug}-{part}" for part in parts)]
    expected.append("ranks-across-tasks")  # two tasks, one method in common: it says in one line why nothing is drawn
    assert sorted(page.sections) == sorted(expected) == sorted(report.sections)
    assert len(page.images) == 6 and len(report.images) == 6
    from PIL import Image

    for source in page.images:
        with Image.open(report.page.parent / source) as image:  # a real PNG that decodes
            assert image.format == "PNG" and min(image.size) > 200
            image.load()
    assert "<script" not in report.page.read_text() and "http" not in report.page.read_text().split("</head>")[1]


def test_report_numbers_are_the_evaluators(results, tmp_path):
    report = build_report(results, tmp_path / "report", tasks=["digits-mlp"])
    cells = _parse(report.page).rows
    header = cells["method"]
    for method in ("map", "elbo-vi"):
        values = _metric(results, "digits-mlp", method, "nll")
        mean, stderr = np.mean(values), np.std(values, ddof=1) / np.sqrt(len(values))
        assert cells[method][header.index("nll")] == f"{mean:.4f} ± {stderr:.4f}"
    assert "ts-co2-mlp" not in report.page.read_text()


def test_saved_probabilities_reproduce_the_evaluators_ece(results):
    for path in results.glob("digits-mlp/*/*/predictions.npz"):
        with np.load(path) as saved:
            probs, labels = saved["probs"].astype(np.float64), saved["labels"]
        bins = reliability_bins(probs, labels)
        assert bins["count"].sum() == len(labels) == 360
        frame = pd.read_csv(path.with_name("metrics.csv")).query("split == 'test' and corruption == 'none'")
        ece = float(frame.query("metric == 'ece'")["value"].iloc[0])
        assert np.abs(bins["correct"] - bins["confidence"]).sum() / len(labels) == pytest.approx(ece, abs=1e-6)
        # the bins' accuracy, against a loop over examples
        confidence, correct = probs.max(1), probs.argmax(1) == labels
        top = (confidence > 14 / 15) & (confidence <= 1.0)
        assert bins["correct"][-1] == correct[top].sum()
        assert expected_calibration_error(np.log(probs), labels) == pytest.approx(ece, abs=1e-6)


def test_saved_forecast_bands_are_the_scored_samples(results):
    [path] = results.glob("ts-co2-mlp/map/*/predictions.npz")
    with np.load(path) as saved:
        levels, quantiles, truth, context = (saved[k] for k in ("quantile_levels", "quantiles", "y", "context"))
    frame = pd.read_csv(path.with_name("metrics.csv")).query("split == 'test' and corruption == 'none'")
    value = dict(zip(frame["metric"], frame["value"], strict=True))
    assert list(levels) == [0.05, 0.25, 0.5, 0.75, 0.95] and quantiles.shape == (20, 5, 26) == (len(truth), 5, 26)
    # gluonts' MAE of the sample median and the 90% coverage, from the same samples the metrics scored
    assert np.mean(np.abs(quantiles[:, 2] - truth)) == pytest.approx(value["mae"], rel=1e-9)
    assert np.mean((truth >= quantiles[:, 0]) & (truth <= quantiles[:, 4])) == pytest.approx(value["coverage_90"])
    # test windows start 4 weeks apart: a window's context ends with the first 4 targets of the one before
    np.testing.assert_allclose(context[1:, -4:], truth[:-1, :4], rtol=1e-6)


def test_pareto_front_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        costs, losses = rng.random(n), rng.random(n)
        dominated = {i for i in range(n) for j in range(n)
                     if costs[j] <= costs[i] and losses[j] <= losses[i] and j != i}
        front = pareto_front(list(costs), list(losses))
        assert sorted(front) == sorted(set(range(n)) - dominated)
        assert [costs[i] for i in front] == sorted(costs[i] for i in front)


def test_report_refuses_a_directory_it_did_not_write_and_replaces_its_own(results, tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(UsageError, match="not a bnnbench report directory"):
        build_report(results, foreign)
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]
    out = tmp_path / "report"
    build_report(results, out)
    (out / "figures" / "stale.png").write_bytes(b"old")
    build_report(results, out, tasks=["ts-co2-mlp"])
    assert not (out / "figures" / "stale.png").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind
    with pytest.raises(UsageError, match="no runs of task 'nope'.*digits-mlp, ts-co2-mlp"):
        build_report(results, out, tasks=["nope"])


def test_report_command(cli, results, tmp_path):
    result = cli("report", "--results-dir", str(results), "--out", str(tmp_path / "r"), "--task", "digits-mlp")
    assert result.code == 0, result.stderr
    assert "wrote" in result.stdout and "(4 figures)" in result.stdout
    missing = cli("report", "--results-dir", str(tmp_path / "none"), "--out", str(tmp_path / "r2"))
    assert missing.code == 2 and "no runs found" in missing.stderr and not (tmp_path / "r2").exists()


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]

# Added to a copy of the page only (the report itself has no script): after load, record each image's state.
PROBE = """<script>window.addEventListener("load", () => {
  document.body.dataset.images = JSON.stringify(Array.from(document.images, (image) =>
    ({src: image.getAttribute("src"), complete: image.complete, width: image.naturalWidth})));
});</script>"""


@pytest.mark.browser
def test_report_renders_in_headless_chromium(results, tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.fail("needs Debian's chromium (apt-get install chromium); `make report-check` runs this test")
    report = build_report(results, tmp_path / "report")
    profile = tmp_path / "profile"
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,6000",
                    f"--screenshot={shot}", report.page.as_uri()], check=True, capture_output=True, timeout=120)
    probe = report.page.with_name("probe.html")
    probe.write_text(report.page.read_text().replace("</body>", PROBE + "</body>"))
    dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                          "--dump-dom", probe.as_uri()], check=True, capture_output=True, text=True, timeout=120).stdout
    images = json.loads(re.search(r'data-images="([^"]*)"', dom).group(1).replace("&quot;", '"'))
    assert len(images) == len(report.images) == 6
    assert all(image["complete"] and image["width"] > 200 for image in images), images
    assert sorted(re.findall(r'<section id="([^"]+)"', dom)) == sorted(report.sections)
    from PIL import Image

    with Image.open(shot) as picture:  # the screenshot is a page, not a blank canvas
        pixels = np.asarray(picture.convert("L"), dtype=np.float64)
    assert pixels.shape == (6000, 1280) and pixels.std() > 20
    keep = os.environ.get("REPORT_CHECK_OUT")
    if keep:  # `make report-check` keeps the page and its screenshot for people to look at
        shutil.copytree(report.page.parent, Path(keep) / "report", dirs_exist_ok=True)
        shutil.copy(shot, Path(keep) / "report.png")
