"""`bnnbench report`: one HTML page (plus its PNGs) per results directory, for reading a benchmark at a glance.

Per task (and version and data variant, the units `compare` keeps apart): the leaderboard, reliability diagrams
per method, metrics against corruption severity, loss against cost with its Pareto front, forecast fan charts
and the VI convergence curves, each where the results hold what it needs; then the methods' ranks across tasks
(`bnnbench.ranking`: Friedman test, Nemenyi critical-difference diagram). Everything shown is read from what runs
wrote (metrics.csv, run.json, predictions.npz); the report scores nothing itself. The page uses no JavaScript and
no resource outside its directory, and the directory is written whole or not at all.
"""

from __future__ import annotations

import html
import re
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from bnnbench.errors import UsageError

__all__ = ["Report", "build_report"]

SEVERITY_METRICS = ("nll", "ece", "acc")
COSTS = ("fit s", "peak MB")
REPORT_MARK = '<meta name="generator" content="bnnbench report">'


@dataclass
class Report:
    """What was written: the page, its section ids (tasks' subsections included) and its images."""

    page: Path
    sections: list[str] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # subsections left out, and why
    n_runs: int = 0  # runs reported on, and how many of them failed
    n_failed: int = 0


@dataclass
class _Group:
    """One task version and data variant: its runs, seed-aggregated table and leaderboard, its method labels."""

    task: str
    version: int
    variant: str
    runs: pd.DataFrame
    table: pd.DataFrame
    board: pd.DataFrame
    labels: dict[tuple[str, str, str], str]
    warn: Callable[[str], None] | None = None  # told of each run file left out as unreadable

    @property
    def title(self) -> str:
        return f"{self.task} v{self.version}" + ("" if self.variant == "standard" else f" ({self.variant})")

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")

    def label(self, method: str, config_hash: str) -> str:
        return self.labels.get((self.task, method, config_hash), method)

    def has_metric(self, metric: str) -> bool:
        """Whether the task's runs scored `metric` (what kind of task this is: ece for classification, crps for
        forecasting)."""
        return bool((self.table["metric"] == metric).any())

    def clean_test(self, metric: str) -> pd.DataFrame:
        rows = self.table[(self.table["split"] == "test") & (self.table["corruption"] == "none")
                          & (self.table["metric"] == metric)]
        return rows.assign(label=[self.label(m, h) for m, h in zip(rows["method"], rows["config_hash"], strict=True)])


def build_report(results_dir: Path, out: Path, tasks: list[str] | None = None,
                 warn: Callable[[str], None] | None = None, convergence_dir: Path | None = None) -> Report:
    """Write `out`/index.html and `out`/figures/*.png for the runs under `results_dir` (only `tasks`, if given).
    Runs or prediction files that cannot be read are left out, with one line each naming the file to `warn`
    (see `load_results`). With `convergence_dir`, the convergence benchmark's targets found there (`bnnbench
    convergence`) get a section each: the figure and the summary table."""
    from bnnbench.atomic import write_directory
    from bnnbench.comparison import TASK_KEY, aggregate, leaderboard, method_labels
    from bnnbench.results import load_results

    runs, metrics = load_results(results_dir, warn)
    if runs.empty:
        raise UsageError(f"no runs found under '{results_dir}'; run `bnnbench run` or `bnnbench sweep` first")
    if tasks:
        known = sorted(runs["task"].unique())
        for name in tasks:
            if name not in known:
                raise UsageError(f"no runs of task '{name}' under '{results_dir}'; tasks there: {', '.join(known)}")
        runs, metrics = runs[runs["task"].isin(tasks)], metrics[metrics["task"].isin(tasks)]
    out = Path(out)
    _check_replaceable(out)
    table = aggregate(runs, metrics)
    board = leaderboard(runs, table)
    labels = method_labels(table[table["n"] > 0])
    tables, boards = dict(list(table.groupby(TASK_KEY))), dict(list(board.groupby(TASK_KEY)))
    groups = [_Group(key[0], int(key[1]), key[2], group_runs, tables.get(key, table.iloc[:0]),
                     boards.get(key, board.iloc[:0]), labels, warn)
              for key, group_runs in runs.groupby(TASK_KEY, sort=True)]

    with write_directory(out) as staging:
        report = Report(page=out / "index.html", n_runs=len(runs), n_failed=int((runs["status"] != "ok").sum()))
        bodies = [_task_section(group, Path(results_dir), staging, report) for group in groups]
        bodies.append(_ranks_section(table, staging, report))
        if convergence_dir is not None:
            bodies.append(_benchmark_section(Path(convergence_dir), staging, report))
        page = _page(Path(results_dir), runs, groups, bodies)
        (staging / "index.html").write_text(page, encoding="utf-8")
    report.images = [out / image.relative_to(staging) for image in report.images]
    return report


def _check_replaceable(out: Path) -> None:
    """Refuse to replace a directory that is not an earlier report (the whole directory is swapped out)."""
    if not out.exists():
        from bnnbench.results import check_writable

        # a file on the way, or a read-only filesystem: refused before any work
        check_writable(out.parent, what=f"--out '{out}': folder")
        return
    page = out / "index.html"
    if not out.is_dir() or (any(out.iterdir()) and not (page.is_file()
                                                        and REPORT_MARK in page.read_text(errors="replace"))):
        raise UsageError(f"--out '{out}' exists and is not a bnnbench report directory; give a new or empty one")


def _task_section(group: _Group, results_dir: Path, staging: Path, report: Report) -> str:
    """The HTML of one task's section; its figures are written under `staging`/figures."""
    parts = [f'<section id="{group.slug}">', f"<h2>{html.escape(group.title)}</h2>"]
    failed = group.runs[group.runs["status"] != "ok"]
    parts.append(f"<p>{len(group.runs) - len(failed)} finished runs, {len(failed)} failed.</p>")
    if not failed.empty:
        items = "".join(f"<li><code>{html.escape(str(row.run_id))}</code>: {html.escape(str(row.error))}</li>"
                        for row in failed.itertuples())
        parts.append(f'<details><summary>failed runs</summary><ul>{items}</ul></details>')
    subsections = [
        ("leaderboard", "Leaderboard", _leaderboard),
        ("fidelity", "Fidelity to the HMC reference", _fidelity),
        ("reliability", "Reliability diagrams", _reliability),
        ("severity", "Metrics against corruption severity", _severity),
        ("cost", "Loss against cost", _cost),
        ("forecast", "Forecast fan charts", _forecast),
        ("convergence", "Convergence of score-vi and elbo-vi", _convergence),
        ("tuning", "Tuning studies", _tuning),
    ]
    for key, heading, draw in subsections:
        section_id = f"{group.slug}-{key}"
        body = draw(group, results_dir, staging / "figures" / f"{section_id}.png")
        if body is None:  # does not apply to this kind of task
            continue
        if isinstance(body, _Skipped):
            report.notes.append(f"{group.title}: {heading.lower()}: {body.why}")
            body = f'<p class="missing">Not drawn: {html.escape(body.why)}.</p>'
        if isinstance(body, _Figure):
            report.images.append(body.path)
            alt = html.escape(f"{heading}: {group.title}")
            body = (f'<figure><img src="figures/{body.path.name}" alt="{alt}">'
                    f"<figcaption>{body.caption}</figcaption></figure>")
        report.sections.append(section_id)
        parts.append(f'<section id="{section_id}"><h3>{heading}</h3>{body}</section>')
    report.sections.append(group.slug)
    parts.append("</section>")
    return "\n".join(parts)


@dataclass(frozen=True)
class _Figure:
    path: Path
    caption: str


@dataclass(frozen=True)
class _Skipped:
    why: str


def _leaderboard(group: _Group, results_dir: Path, png: Path) -> str | _Skipped:
    from bnnbench.render import leaderboard_html

    if group.board.empty:
        return _Skipped("no finished run")
    caption = ("Mean ± standard error over seeds; bold is the best of each column; rank is the mean rank over the "
               "quality columns (costs excluded); n is the number of seeds.")
    return f'<div class="scroll">{leaderboard_html(group.board)}</div><p class="caption">{caption}</p>'


def _fidelity(group: _Group, results_dir: Path, png: Path) -> str | None:
    """Methods ranked by agreement with the HMC reference (regression: by W2 to it), with the reference's
    convergence as the runs recorded it; None for tasks without a reference."""
    from bnnbench.comparison import leaderboard
    from bnnbench.render import leaderboard_html

    columns = [name for name in ("agreement", "tv", "w2", "nll", "ece") if name in set(group.board["column"])]
    if not {"agreement", "w2"} & set(columns):
        return None
    rank_by = "agreement" if "agreement" in columns else "w2"
    from bnnbench.comparison import unresolved_pairs
    from bnnbench.reference_files import reference_resolutions

    recorded = [value for value in group.runs.get("hmc_reference", pd.Series(dtype=object)) if isinstance(value, dict)]
    resolutions = reference_resolutions(group.runs)
    resolution = resolutions.get((group.task, group.version, group.variant))
    board = leaderboard(group.runs, group.table, columns, rank_by, resolutions)
    board = board[board["column"].isin(columns)]
    about = ""
    if recorded:
        ref = recorded[0]
        about = (f"Reference <code>{html.escape(Path(str(ref.get('path'))).name)}</code>: {ref.get('chains')} chains "
                 f"× {ref.get('samples')} samples after {ref.get('warmup')} warm-up, split-R̂ max "
                 f"{_number(ref.get('rhat_max'), '.3f')}, 99th percentile {_number(ref.get('rhat_p99'), '.3f')}, "
                 f"bulk ESS min {_number(ref.get('ess_bulk_min'), '.0f')}. ")
    if resolution:
        shown = {column: limit for column, limit in resolution.items() if column in columns}
        ties = "; ".join(f"{column}: " + (", ".join(f"{html.escape(a)} = {html.escape(b)}" for a, b, _ in pairs)
                                          or "none") for column, pairs in unresolved_pairs(board, shown).items())
        about += ("Its resolution (the larger split-half difference of its draws): "
                  + ", ".join(f"{column} {limit:.4f}" for column, limit in shown.items())
                  + f"; closer means are ties, every one tied with the best is marked best. Ties: {ties}. ")
    caption = (f"{about}Rank is by {rank_by} alone ({'higher' if rank_by == 'agreement' else 'lower'} is better): "
               "how close each method's predictive is to full-batch HMC on the same posterior.")
    return f'<div class="scroll">{leaderboard_html(board)}</div><p class="caption">{caption}</p>'


def _number(value, form: str) -> str:
    """`value` formatted, or as it is where a run.json holds something else there."""
    return format(value, form) if isinstance(value, int | float) else html.escape(str(value))


def _prediction_files(group: _Group, results_dir: Path, needs: tuple[str, ...]) -> dict[str, list[tuple[int, dict]]]:
    """{method label: [(seed, arrays)]} of the group's finished runs that saved predictions holding `needs[0]`;
    a file that cannot be read or lacks the rest of `needs` is left out, naming it to the group's `warn`."""
    from bnnbench.results import run_directory

    found: dict[str, list[tuple[int, dict]]] = {}
    for row in group.runs[group.runs["status"] == "ok"].sort_values(["method", "seed"]).itertuples():
        path = run_directory(results_dir, row.task, row.method, row.run_id) / "predictions.npz"
        if not path.is_file():
            continue
        try:
            with np.load(path) as arrays:
                if needs[0] not in arrays:
                    continue
                saved = {name: arrays[name] for name in arrays.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:  # truncated, garbage, pickled objects
            if group.warn is not None:
                lines = str(error).strip().splitlines()
                group.warn(f"skipping {path}: not a readable .npz ({lines[0] if lines else type(error).__name__})")
            continue
        lacking = [name for name in needs if name not in saved]
        if lacking:
            if group.warn is not None:
                group.warn(f"skipping {path}: lacks array(s) {', '.join(lacking)}")
            continue
        found.setdefault(group.label(row.method, row.config_hash), []).append((int(row.seed), saved))
    return found


def _mean_text(rows: pd.DataFrame, label: str) -> str:
    from bnnbench.render import mean_stderr_text

    chosen = rows[rows["label"] == label]
    if chosen.empty:
        return "n/a"
    row = chosen.iloc[0]
    return mean_stderr_text(row["mean"], row["stderr"], int(row["n"]))


def _reliability(group: _Group, results_dir: Path, png: Path) -> _Figure | _Skipped | None:
    from bnnbench.figures import ReliabilityPanel, reliability_figure
    from bnnbench.metrics import reliability_bins

    if not group.has_metric("ece"):
        return None
    saved = _prediction_files(group, results_dir, ("probs", "labels"))
    if not saved:
        return _Skipped("no classification run saved its predictions (run with --save-predictions)")
    ece = group.clean_test("ece")
    panels = []
    for label, seeds in saved.items():
        pooled = [reliability_bins(arrays["probs"].astype(np.float64), arrays["labels"]) for _, arrays in seeds]
        panels.append(ReliabilityPanel(label, *(sum(bins[key] for bins in pooled)
                                                for key in ("count", "correct", "confidence")),
                                       ece=_mean_text(ece, label), seeds=len(seeds)))
    reliability_figure(panels, f"{group.title}: reliability on the clean test split", png)
    return _Figure(png, "Accuracy against top-label confidence in 15 equal-width bins, test examples of all seeds "
                        "pooled; the shaded part is the gap to the diagonal (above the bar: over-confident). ECE "
                        "is the evaluator's, mean ± standard error over seeds.")


def _severity(group: _Group, results_dir: Path, png: Path) -> _Figure | None:
    from bnnbench.figures import SeverityCurve, severity_figure

    table = group.table
    corrupted = table[(table["split"] == "test") & (table["corruption"] == "mean") & (table["severity"] > 0)]
    if corrupted.empty:
        return None
    clean = table[(table["split"] == "test") & (table["corruption"] == "none")]
    metrics = [name for name in SEVERITY_METRICS if name in set(corrupted["metric"])]
    rows = pd.concat([clean, corrupted])
    rows = rows[rows["metric"].isin(metrics)].sort_values("severity")
    curves = [SeverityCurve(group.label(method, hash_), metric, part["severity"].to_numpy(),
                            part["mean"].to_numpy(), part["stderr"].to_numpy())
              for (method, hash_, metric), part in rows.groupby(["method", "config_hash", "metric"], sort=True)]
    severity_figure(curves, metrics, f"{group.title}: test metrics against corruption severity", png)
    return _Figure(png, "Each metric averaged over the corruption types at each severity (0 is the clean test "
                        "split); bars are ± standard error over seeds.")


def _cost(group: _Group, results_dir: Path, png: Path) -> _Figure | _Skipped:
    from bnnbench.figures import CostPoint, cost_figure

    board = group.board
    loss_name = "nll" if "nll" in set(board["column"]) else None
    costs = [name for name in COSTS if name in set(board["column"])]
    if loss_name is None or not costs:
        return _Skipped("needs clean-test nll and recorded costs")
    wide = board.pivot_table(index="method", columns="column", values=["mean", "stderr"], aggfunc="first")
    points = [CostPoint(method, float(wide.loc[method, ("mean", loss_name)]),
                        float(wide.loc[method, ("stderr", loss_name)]),
                        {name: float(wide.loc[method, ("mean", name)]) for name in costs
                         if not np.isnan(wide.loc[method, ("mean", name)])})
              for method in wide.index if not np.isnan(wide.loc[method, ("mean", loss_name)])]
    cost_figure(points, loss_name, costs, f"{group.title}: NLL against cost", png)
    return _Figure(png, "Clean-test NLL (mean ± standard error over seeds) against mean fit seconds and peak "
                        "resident memory of a run. The red steps are the Pareto front: methods in bold have no "
                        "rival that is both cheaper and better.")


def _forecast(group: _Group, results_dir: Path, png: Path) -> _Figure | _Skipped | None:
    from bnnbench.figures import FanPanel, fan_figure

    if not group.has_metric("crps"):
        return None
    saved = _prediction_files(group, results_dir, ("quantiles", "quantile_levels", "context", "y"))
    if not saved:
        return _Skipped("no forecasting run saved its predictions (run with --save-predictions)")
    panels = []
    for label, seeds in saved.items():
        seed, arrays = seeds[0]
        panels.append(FanPanel(f"{label} (seed {seed})", arrays["context"][-1], arrays["y"][-1].reshape(-1),
                               arrays["quantile_levels"], arrays["quantiles"][-1]))
    fan_figure(panels, f"{group.title}: the last test window", png)
    return _Figure(png, "The last window of the test split in series units: context, true continuation (dashed), "
                        "forecast median and the central 50% and 90% intervals of the same forecast samples the "
                        "metrics score.")


def _convergence(group: _Group, results_dir: Path, png: Path) -> _Figure | None:
    from bnnbench.convergence import plot_convergence

    try:
        plot_convergence(group.runs, results_dir, group.task, png, group.warn)
    except UsageError:  # no score-vi or elbo-vi run recorded a curve
        return None
    return _Figure(png, "Negative ELBO (same estimator for both methods) against wall-clock seconds since the fit "
                        "started, one line per run.")


def _tuning(group: _Group, results_dir: Path, png: Path) -> _Figure | _Skipped | None:
    """Per tuned method, Optuna's optimisation history and parameter importances (its matplotlib backend), read
    from the study named in the tuned file the runs applied; None where no run was tuned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    from bnnbench.tuned import load_tuned

    records = {}
    for row in group.runs.itertuples():
        tuned = getattr(row, "tuned", None)
        if isinstance(tuned, dict):
            records[row.method] = tuned
    if not records:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    panels, missing = [], []
    for method, record in sorted(records.items()):
        try:
            data = load_tuned(Path(record["path"]))
            study = optuna.load_study(study_name=data["summary"][method]["study"], storage=data["storage"])
        except Exception as error:  # a moved tuned file or study: say so, draw the others
            missing.append(f"{method} ({type(error).__name__})")
            continue
        panels.append((method, study))
    if not panels:
        return _Skipped(f"the tuning studies could not be read: {', '.join(missing)}")
    figure, axes = plt.subplots(len(panels), 2, figsize=(12, 3.4 * len(panels)), squeeze=False)
    with tempfile.TemporaryDirectory() as scratch:
        for index, (method, study) in enumerate(panels):
            for column, plot in enumerate((optuna.visualization.matplotlib.plot_optimization_history,
                                           optuna.visualization.matplotlib.plot_param_importances)):
                target = axes[index][column]
                target.axis("off")
                try:
                    drawn = plot(study)
                except Exception as error:  # importances need two parameters and finished trials
                    target.text(0.5, 0.5, f"{method}: {type(error).__name__}", ha="center", va="center")
                    continue
                part = Path(scratch) / f"{index}-{column}.png"
                drawn.figure.savefig(part, dpi=90, bbox_inches="tight")
                plt.close(drawn.figure)
                target.imshow(plt.imread(part))
                target.set_title(method, fontsize=10)
        figure.tight_layout()
        figure.savefig(png, dpi=100)
        plt.close(figure)
    caption = ("Per tuned method: the validation objective of each trial with the best so far (left), and each "
               "setting's importance by Optuna's fANOVA evaluator (right).")
    if missing:
        caption += f" Studies not found: {html.escape(', '.join(missing))}."
    return _Figure(png, caption)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; padding: 0 1em; }
h2 { border-bottom: 2px solid #ccc; padding-top: 1em; }
.scroll { overflow-x: auto; }  /* a leaderboard with many columns scrolls rather than spill past the page */
table.leaderboard { border-collapse: collapse; font-size: 0.85em; }
table.leaderboard th, table.leaderboard td { padding: 0.25em 0.6em; border-bottom: 1px solid #ddd; }
table.leaderboard td { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.leaderboard th { text-align: left; }
figure { margin: 0.5em 0; }
figure img { max-width: 100%; }
figcaption, .caption, .meta, .missing { color: #555; font-size: 0.85em; }
nav ul { columns: 2; }
"""


def _benchmark_section(convergence_dir: Path, staging: Path, report: Report) -> str:
    """The convergence benchmark's section: per target, its figure and summary table, and how steps were chosen."""
    from bnnbench.convergence_benchmark import load_benchmark, plot_benchmark, summary_table

    found = load_benchmark(convergence_dir)
    parts = ['<section id="convergence-benchmark">', "<h2>Convergence benchmark: score-vi, elbo-vi, GSM, BaM</h2>"]
    if not found:
        report.notes.append(f"convergence benchmark: no readable rows.csv under {convergence_dir}")
        return "\n".join([*parts, f'<p class="missing">No benchmark rows under '
                                  f"<code>{html.escape(str(convergence_dir))}</code>.</p>", "</section>"])
    for target, (rows, meta) in found.items():
        png = staging / "figures" / f"convergence-benchmark-{target}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        plot_benchmark(rows, target, png)
        report.images.append(png)
        table = summary_table(rows).drop(columns="target")
        parts += [f"<h3>{html.escape(target)} (D = {meta.get('dim')})</h3>",
                  "<p>" + html.escape(f"{meta.get('description', '')}. Moments: {meta.get('moments')}. Step sizes: "
                                      f"{meta.get('chosen_steps')} ({meta.get('step_rule')}).") + "</p>",
                  f'<figure><img src="figures/{png.name}" alt="{html.escape(f"Convergence benchmark: {target}")}">'
                  "<figcaption>Negative ELBO minus the best value any run reached, against score evaluations and "
                  "against seconds in the methods' updates; thin lines are seeds, thick lines their median."
                  "</figcaption></figure>",
                  table.to_html(index=False, float_format=lambda value: f"{value:.4g}", na_rep="–", border=0)]
    return "\n".join([*parts, "</section>"])


def _ranks_section(table: pd.DataFrame, staging: Path, report: Report) -> str:
    """Methods ranked across the tasks (Friedman + Nemenyi, `bnnbench.ranking`) by clean-test nll, and by ece where
    every task has it: the CD diagram, the test, the ranks and what was left out. Where the results cannot be
    ranked (one task, too few methods in common), one line says why."""
    from bnnbench.ranking import cd_figure, rank_across_tasks

    parts = ['<section id="ranks-across-tasks">', "<h2>Ranks across tasks</h2>"]
    report.sections.append("ranks-across-tasks")
    clean = table[(table["split"] == "test") & (table["corruption"] == "none")]
    tasks = set(clean["task"])
    metrics = ["nll"] + (["ece"] if tasks and tasks == set(clean.loc[clean["metric"] == "ece", "task"]) else [])
    for metric in metrics:
        parts.append(f"<h3>Clean-test {metric}</h3>")
        try:
            result = rank_across_tasks(table, metric)
        except UsageError as why:
            report.notes.append(f"ranks across tasks ({metric}): {why}")
            parts.append(f'<p class="missing">Not drawn: {html.escape(str(why))}.</p>')
            continue
        png = cd_figure(result, staging / "figures" / f"ranks-across-tasks-{metric}.png")
        report.images.append(png)
        verdict = "the ranks differ" if result.significant else "no significant difference between the ranks"
        caption = (f"Average rank of each method over {len(result.tasks)} tasks by clean-test {metric} (1 is best). "
                   f"Friedman χ² = {result.friedman_statistic:.3f}, p = {result.friedman_pvalue:.3g}: {verdict} at "
                   f"α = {result.alpha:g}. Nemenyi critical difference CD = {result.cd:.3f}: thick bars join methods "
                   "whose average ranks lie within CD of each other (not significantly different).")
        parts += [f'<figure><img src="figures/{png.name}" alt="{html.escape(f"Ranks across tasks: {metric}")}">'
                  f"<figcaption>{html.escape(caption)}</figcaption></figure>",
                  '<div class="scroll">' + result.rank_table().to_html(
                      classes="leaderboard", float_format=lambda value: f"{value:.2f}", index_names=False, border=0)
                  + "</div>"]
        missing = result.missing_lines()
        if missing:
            items = "".join(f"<li>{html.escape(line)}</li>" for line in missing)
            parts.append(f'<p class="caption">Left out to keep every method on every task (Friedman\'s test needs '
                         f"it):</p><ul>{items}</ul>")
    return "\n".join([*parts, "</section>"])


def _page(results_dir: Path, runs: pd.DataFrame, groups: list[_Group], bodies: list[str]) -> str:
    commits = sorted({str(commit)[:10] for commit in runs.get("git_sha", pd.Series(dtype=str)).dropna()})
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    contents = "".join(f'<li><a href="#{group.slug}">{html.escape(group.title)}</a></li>' for group in groups)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', REPORT_MARK,
        "<title>bnnbench report</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
        '<header id="summary"><h1>bnnbench report</h1>',
        f'<p class="meta">{len(runs)} runs of {len(groups)} task(s) from <code>{html.escape(str(results_dir))}</code>'
        f"; bnnbench commit(s) {html.escape(', '.join(commits) or 'unknown')}; written {stamp}.</p></header>",
        f'<nav id="contents"><h2>Tasks</h2><ul>{contents}</ul></nav>',
        *bodies, "</body>", "</html>", ""])
