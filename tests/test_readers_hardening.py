"""The readers (`compare`, `check`, `baseline`, `report`, `convergence`) on damaged results directories: a bad run
is skipped with one warning line naming its file and the rest is still reported; nothing ends in a traceback.
One real run is made once per module; each test copies it and damages or relabels the copy."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

TASK = "digits-mlp"
GOOD = "map"
BROKEN = "broken"  # the damaged run's method: it must never reach the output


@pytest.fixture(scope="module")
def made_run(tmp_path_factory) -> Path:
    """A results directory with one finished digits-mlp MAP run (a few seconds)."""
    from bnnbench.runner import prepare, run

    root = tmp_path_factory.mktemp("hardening") / "results"
    plan = prepare(TASK, GOOD, budget_name="ci", epochs=2, device="cpu", results_dir=root, show_progress=False)
    assert run(plan, 0).status == "ok"
    return root


@pytest.fixture
def tree(made_run, tmp_path) -> Path:
    """A private copy of the one-run results directory."""
    return Path(shutil.copytree(made_run, tmp_path / "results"))


def good_run(tree: Path) -> Path:
    [run_dir] = tree.glob(f"{TASK}/{GOOD}/*")
    return run_dir


def relabel(run_dir: Path, **values) -> None:
    """Set keys of a run's run.json and the same columns of its metrics.csv (run_id, task, method)."""
    record = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**record, **values}))
    metrics = run_dir / "metrics.csv"
    if metrics.exists():
        with metrics.open() as handle:
            rows = list(csv.DictReader(handle))
        with metrics.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows({**row, **{key: value for key, value in values.items() if key in row}} for row in rows)


def second_run(tree: Path, method: str = BROKEN) -> Path:
    """A copy of the good run as another valid run (another method, another run id)."""
    source = good_run(tree)
    copy = shutil.copytree(source, tree / TASK / method / f"{source.name}.{method}")
    relabel(copy, method=method, run_id=copy.name)
    return copy


def assert_clean(result, code: int) -> None:
    assert result.code == code, result
    for stream in (result.stdout, result.stderr):
        assert "Traceback" not in stream and "internal error" not in stream, stream


def assert_warned_once(result, path: Path) -> None:
    """Exactly one stderr line, a warning naming `path`; `path`'s run is absent from the output."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"warning: skipping {path}: "), lines[0]
    assert BROKEN not in result.stdout


def with_first_value(text: str, value: str) -> str:
    header, first, *rest = text.splitlines()
    return "\n".join([header, first.rsplit(",", 1)[0] + f",{value}", *rest]) + "\n"


# (file, what to write, what the warning says): each damages one file of an otherwise valid run
DAMAGE = {
    "empty run.json": ("run.json", b"", "not readable JSON"),
    "truncated run.json": ("run.json", lambda text: text[: len(text) // 2], "not readable JSON"),
    "binary run.json": ("run.json", bytes(range(256)), "not readable JSON"),
    "run.json holding a list": ("run.json", b"[1, 2, 3]", "not a JSON object"),
    "run.json without status": ("run.json", lambda text: json.dumps({k: v for k, v in json.loads(text).items()
                                                                      if k != "status"}),
                                "lacks required key(s): status"),
    "run.json with a numeric run_id": ("run.json", lambda text: json.dumps({**json.loads(text), "run_id": 7}),
                                       "run_id is not a non-empty string"),
    "empty metrics.csv": ("metrics.csv", b"", "not a readable CSV"),
    # cut a few characters into a row: a cut inside the last field would leave a valid, shorter number
    "truncated metrics.csv": ("metrics.csv", lambda text: text[: text.index("\n", len(text) // 2) + 12],
                              "empty fields"),
    "metrics.csv cut in its header": ("metrics.csv", lambda text: text[:30], "lacks column"),
    "binary metrics.csv": ("metrics.csv", bytes(range(256)) * 4, "not a readable CSV"),
    "non-numeric metric value": ("metrics.csv", lambda text: with_first_value(text, "abc"), "'abc'"),
}


def damage(run_dir: Path, name: str) -> Path:
    file_name, content, _ = DAMAGE[name]
    path = run_dir / file_name
    if callable(content):
        content = content(path.read_text()).encode()
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("name", DAMAGE)
def test_compare_skips_a_damaged_run_with_one_warning(cli, tree, name):
    bad_file = damage(second_run(tree), name)
    result = cli("compare", "--results-dir", str(tree))
    assert_clean(result, 0)
    assert_warned_once(result, bad_file)
    assert DAMAGE[name][2] in result.stderr
    assert GOOD in result.stdout and "nll" in result.stdout


def test_load_results_hands_warnings_to_the_caller(tree):
    from bnnbench.results import load_results

    bad_file = damage(second_run(tree), "run.json holding a list")
    warnings: list[str] = []
    runs, metrics = load_results(tree, warn=warnings.append)
    assert warnings == [f"skipping {bad_file}: not a JSON object"]
    assert list(runs["method"]) == [GOOD] and set(metrics["method"]) == {GOOD}
    assert metrics["value"].dtype == float and metrics["severity"].dtype == int


def test_check_baseline_and_report_skip_a_damaged_run(cli, tree, tmp_path):
    baseline = tmp_path / "baseline.csv"
    assert cli("baseline", "--results-dir", str(tree), "--out", str(baseline)).code == 0
    bad_file = damage(second_run(tree), "non-numeric metric value")

    checked = cli("check", "--baseline", str(baseline), "--results-dir", str(tree))
    assert_clean(checked, 0)
    assert_warned_once(checked, bad_file)
    assert "no regression" in checked.stdout

    rewritten = cli("baseline", "--results-dir", str(tree), "--out", str(tmp_path / "again.csv"))
    assert_clean(rewritten, 0)
    assert_warned_once(rewritten, bad_file)
    assert (tmp_path / "again.csv").read_text() == baseline.read_text()

    reported = cli("report", "--results-dir", str(tree), "--out", str(tmp_path / "report"))
    assert_clean(reported, 0)
    assert_warned_once(reported, bad_file)
    page = (tmp_path / "report" / "index.html").read_text()
    assert f"<th>{GOOD}</th>" in page and BROKEN not in page


def vi_curve(run_dir: Path, method: str) -> None:
    """Give a run the per-epoch neg-ELBO record a VI method writes, so `convergence` draws it."""
    relabel(run_dir, method=method, fit_extra={"neg_elbo": [30.0, 20.0, 10.0], "epoch_seconds": [0.1, 0.2, 0.3]})


def test_convergence_skips_damaged_and_hidden_runs(cli, tree, tmp_path):
    good = good_run(tree)
    vi_curve(good, "elbo-vi")
    bad_file = damage(second_run(tree), "run.json holding a list")
    vi_curve(shutil.copytree(good, good.with_name(f".{good.name}.partial")), "half-written")
    vi_curve(shutil.copytree(good, tree / ".trash" / GOOD / good.name), "thrown-away")

    result = cli("convergence", "--from-runs", "--task", TASK, "--results-dir", str(tree),
                 "--out", str(tmp_path / "c.png"))
    assert_clean(result, 0)
    assert_warned_once(result, bad_file)
    assert "elbo-vi seed 0" in result.stdout
    assert "half-written" not in result.stdout and "thrown-away" not in result.stdout
    assert (tmp_path / "c.png").stat().st_size > 0


def test_convergence_skips_a_run_with_a_malformed_curve(cli, tree, tmp_path):
    vi_curve(good_run(tree), "elbo-vi")
    malformed = second_run(tree)
    relabel(malformed, fit_extra={"neg_elbo": "lots", "epoch_seconds": [0.1]})
    result = cli("convergence", "--from-runs", "--task", TASK, "--results-dir", str(tree),
                 "--out", str(tmp_path / "c.png"))
    assert_clean(result, 0)
    assert_warned_once(result, malformed / "run.json")
    assert "elbo-vi seed 0" in result.stdout


def test_hidden_directories_are_skipped_by_compare_and_report(cli, tree, tmp_path):
    good = good_run(tree)
    relabel(shutil.copytree(good, good.with_name(f".{good.name}.partial")), method=".staging")
    relabel(shutil.copytree(good, tree / ".trash" / GOOD / good.name), method=".staging")
    compared = cli("compare", "--results-dir", str(tree), "--format", "csv")
    assert_clean(compared, 0)
    assert ".staging" not in compared.stdout and GOOD in compared.stdout
    reported = cli("report", "--results-dir", str(tree), "--out", str(tmp_path / "report"))
    assert_clean(reported, 0)
    assert ".staging" not in (tmp_path / "report" / "index.html").read_text()


def fail_every_run(tree: Path) -> None:
    for run_dir in tree.glob("*/*/*"):
        relabel(run_dir, status="failed", error="RuntimeError: boom")
        (run_dir / "metrics.csv").unlink()


def test_compare_on_only_failed_runs_says_so(cli, tree):
    fail_every_run(tree)
    result = cli("compare", "--results-dir", str(tree))
    assert_clean(result, 1)
    assert result.stderr.strip() == f"no successful runs under {tree} (1 failed)", result.stderr
    assert result.stdout == ""


def test_baseline_on_only_failed_runs_writes_nothing(cli, tree, tmp_path):
    fail_every_run(tree)
    result = cli("baseline", "--results-dir", str(tree), "--out", str(tmp_path / "base.csv"))
    assert_clean(result, 1)
    assert result.stderr.strip().splitlines() == [f"no successful runs under {tree} (1 failed); no baseline written"]
    assert not (tmp_path / "base.csv").exists()


def test_check_report_and_convergence_on_only_failed_runs(cli, tree, tmp_path):
    baseline = tmp_path / "baseline.csv"
    assert cli("baseline", "--results-dir", str(tree), "--out", str(baseline)).code == 0
    fail_every_run(tree)

    checked = cli("check", "--baseline", str(baseline), "--results-dir", str(tree))
    assert_clean(checked, 1)  # every gated row is newly failing ('!')
    assert "'!'" in checked.stdout and "regression in a gated metric" in checked.stderr

    reported = cli("report", "--results-dir", str(tree), "--out", str(tmp_path / "report"))
    assert_clean(reported, 0)  # the report lists the failures, which is what there is to read
    assert reported.stderr.strip() == f"no successful runs under {tree} (1 failed); the report lists the failures"
    assert "boom" in (tmp_path / "report" / "index.html").read_text()

    drawn = cli("convergence", "--from-runs", "--task", TASK, "--results-dir", str(tree),
                "--out", str(tmp_path / "c.png"))
    assert_clean(drawn, 1)
    assert drawn.stderr.strip() == f"no successful runs of task {TASK} under {tree} (1 failed)"


def test_pivot_on_a_metric_the_results_lack_names_the_metrics_there(cli, tree):
    for pivot in ("task", "metric"):
        result = cli("compare", "--results-dir", str(tree), "--pivot", pivot, "--metric", "crps")
        assert_clean(result, 2)
        [line] = result.stderr.strip().splitlines()
        assert "metric 'crps' does not apply to these results" in line and "acc, brier, ece, nll" in line, line


@pytest.mark.parametrize("content", [bytes(range(256)) * 8, "not numeric"], ids=["binary", "non-numeric"])
def test_check_rejects_a_bad_baseline_in_one_line(cli, tree, tmp_path, content):
    baseline = tmp_path / "baseline.csv"
    assert cli("baseline", "--results-dir", str(tree), "--out", str(baseline)).code == 0
    if isinstance(content, bytes):
        baseline.write_bytes(content)
    else:
        header, first, *rest = baseline.read_text().splitlines()
        position = header.split(",").index("mean")
        first = ",".join(content if i == position else cell for i, cell in enumerate(first.split(",")))
        baseline.write_text("\n".join([header, first, *rest]) + "\n")
    result = cli("check", "--baseline", str(baseline), "--results-dir", str(tree))
    assert_clean(result, 2)
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot read baseline '{baseline}'") or f"baseline '{baseline}'" in line, line
    if isinstance(content, str):
        assert "'not numeric'" in line and "column mean" in line, line


def markdown_cells(line: str) -> list[str]:
    """A Markdown table row's cells, split at unescaped pipes as GitHub does."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def test_markdown_escapes_names_that_would_break_a_table(cli, tree):
    relabel(good_run(tree), task="a|b<i>", method="m|<script>x</script>")
    result = cli("compare", "--results-dir", str(tree), "--format", "markdown")
    assert_clean(result, 0)
    assert "<script>" not in result.stdout and "<i>" not in result.stdout
    header, _, row = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert len(markdown_cells(row)) == len(markdown_cells(header))
    assert markdown_cells(row)[0] == r"m\|&lt;script&gt;x&lt;/script&gt;"
    assert "### a\\|b&lt;i&gt; v1" in result.stdout


def test_brackets_in_paths_and_names_are_printed_verbatim(cli, tree, tmp_path):
    """`[` in a path or name is rich markup unless escaped: `[/x]` would crash the console, `[bold]` vanish."""
    relabel(good_run(tree), method="m[/x][bold]")
    odd = tmp_path / "odd[" / "b]"  # the path reads ".../odd[/b]", a closing tag to rich

    compared = cli("compare", "--results-dir", str(tree))
    assert_clean(compared, 0)
    assert "m[/x][bold]" in compared.stdout

    baseline = odd / "base[bold].csv"
    written = cli("baseline", "--results-dir", str(tree), "--out", str(baseline))
    assert_clean(written, 0)
    assert str(baseline) in written.stdout.replace("\n", "")

    checked = cli("check", "--baseline", str(baseline), "--results-dir", str(tree))
    assert_clean(checked, 0)
    assert "m[/x][bold]" in checked.stdout

    vi_curve(good_run(tree), "elbo-[/x]vi")
    png = odd / "c[bold].png"
    drawn = cli("convergence", "--from-runs", "--task", TASK, "--results-dir", str(tree), "--out", str(png))
    assert_clean(drawn, 0)
    assert "elbo-[/x]vi seed 0" in drawn.stdout and f"wrote {png}" in drawn.stdout.replace("\n", "")

    reported = cli("report", "--results-dir", str(tree), "--out", str(odd / "rep[bold]"))
    assert_clean(reported, 0)
    assert f"wrote {odd / 'rep[bold]' / 'index.html'}" in reported.stdout.replace("\n", "")

    empty = odd / "empty"
    empty.mkdir()
    nothing = cli("check", "--baseline", str(baseline), "--results-dir", str(empty))
    assert_clean(nothing, 2)  # nothing to check: exit 2, as compare, baseline and report say it
    assert f"no runs found under '{empty}'" in nothing.stderr.replace("\n", "")


def test_figures_draw_names_holding_dollar_signs(cli, tree, tmp_path):
    """A `$` in a name would start matplotlib's mathtext, which fails to draw unless it parses."""
    relabel(good_run(tree), method=r"m$\frac$")
    reported = cli("report", "--results-dir", str(tree), "--out", str(tmp_path / "report"))
    assert_clean(reported, 0)
    assert "figures" in reported.stdout and r"m$\frac$" in (tmp_path / "report" / "index.html").read_text()
    vi_curve(good_run(tree), r"vi$\frac$")
    drawn = cli("convergence", "--from-runs", "--task", TASK, "--results-dir", str(tree),
                "--out", str(tmp_path / "c.png"))
    assert_clean(drawn, 0)


def test_report_skips_an_unreadable_predictions_file(cli, tree, tmp_path):
    predictions = good_run(tree) / "predictions.npz"
    predictions.write_bytes(b"PK\x03\x04 not really a zip archive")
    result = cli("report", "--results-dir", str(tree), "--out", str(tmp_path / "report"))
    assert_clean(result, 0)
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"warning: skipping {predictions}: not a readable .npz"), line
    assert "reliability diagrams: no classification run saved its predictions" in result.stdout
