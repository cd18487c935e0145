"""Command-line interface: parse strings, call the library (`run`, `sweep` and `tune` are `bnnbench.api`'s
functions), render with rich. No benchmark logic lives here."""

from __future__ import annotations

import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from bnnbench.api import MAX_SEED, MAX_SEEDS
from bnnbench.errors import BnnbenchError, UsageError, error_line

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="bnnbench: which posterior-inference method gives the best uncertainty, at what cost?")
out = Console() if sys.stdout.isatty() else Console(width=200)  # pipes and files get whole rows
err = Console(stderr=True)


SET_HELP = "method hyper-parameter key=value; model.KEY=value (or a bare KEY the method lacks) sets a model option"
DATA_DIR_HELP = "where data sets live (default $BNNBENCH_DATA, else ~/.cache/bnnbench/data)"
TASKS_DIR_HELP = "a folder of task .toml files, searched after the built-in tasks and $BNNBENCH_TASKS_PATH (repeatable)"
METHOD_HELP = "method name (see `bnnbench list methods`), or package.module:attr of a MethodSpec"
COMPILE_HELP = "torch.compile the network (eager again, with a warning, if compiling fails)"
data_app = typer.Typer(no_args_is_help=True, help="Get the data sets that need a download.")
app.add_typer(data_app, name="data")
reference_app = typer.Typer(no_args_is_help=True, help="Reference posteriors that fidelity tasks score methods with.")
app.add_typer(reference_app, name="reference")


class Listable(str, Enum):
    """What `bnnbench list` can show."""

    tasks = "tasks"
    methods = "methods"
    metrics = "metrics"


class Format(str, Enum):
    """Leaderboard output formats."""

    table = "table"
    markdown = "markdown"
    csv = "csv"
    json = "json"
    latex = "latex"


class Pivot(str, Enum):
    """Leaderboard layouts: one table per task with metrics as columns, or one metric with tasks as columns."""

    metric = "metric"
    task = "task"


def parse_seeds(values: list[str]) -> list[int]:
    """`["0..2", "5"]` or `["0-2,5"]` -> [0, 1, 2, 5]: each seed once, in the order first named. Seeds lie in
    0..2**64 - 1 (what torch.manual_seed takes); at most a million of them, so a typo cannot fill the memory."""
    max_seed, max_count = MAX_SEED, MAX_SEEDS
    seeds: dict[int, None] = {}  # insertion-ordered set: linear, where list.index per seed was quadratic
    for value in values:
        for part in value.split(","):
            low, sep, high = part.replace("..", "-").partition("-")
            try:
                first, last = int(low), int(high) if sep else int(low)
            except ValueError:
                raise UsageError(f"--seed expects an integer or a range like 0..2, got '{part}'") from None
            if not 0 <= first <= max_seed or not 0 <= last <= max_seed:
                raise UsageError(f"--seed {part} is out of range: seeds must lie in 0..{max_seed}")
            if last < first:
                raise UsageError(f"--seed range '{part}' is empty: write the lower seed first, e.g. {last}..{first}")
            if last - first + 1 + len(seeds) > max_count:
                raise UsageError(f"--seed {part} asks for too many seeds: at most {max_count:,} in all")
            seeds.update(dict.fromkeys(range(first, last + 1)))
    if not seeds:
        raise UsageError("--seed expects at least one seed")
    return list(seeds)


@app.command("list", epilog="Example: `bnnbench list methods`; for scripts: `bnnbench list methods --names --built-in`")
def list_(
    what: Annotated[Listable, typer.Argument(help="tasks, methods or metrics")],
    tasks_dir: Annotated[list[Path], typer.Option(help=TASKS_DIR_HELP)] = [],  # noqa: B006
    names: Annotated[bool, typer.Option(help="bare names, one per line (for scripts)")] = False,
    built_in: Annotated[bool, typer.Option("--built-in", help="methods: only bnnbench's own, no plugins")] = False,
) -> None:
    """List the registered tasks, methods (with where each comes from: built-in, or a plugin's distribution and
    version) or metrics."""
    from rich.table import Table
    from rich.text import Text

    if built_in and what is not Listable.methods:
        raise UsageError(f"--built-in lists bnnbench's own methods; it does not apply to `list {what.value}`")
    rows = _listing(what, tasks_dir, built_in)
    if names:
        for row in rows:
            out.print(row[0], markup=False, highlight=False, soft_wrap=True)
        return
    table = Table(show_header=True, header_style="bold")
    for column in (what.value[:-1], "description", *(["origin"] if what is Listable.methods else [])):
        table.add_column(column)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # names and descriptions (a plugin's too) are no markup
    out.print(table)


def _listing(what: Listable, tasks_dir: list[Path], built_in: bool) -> list[tuple[str, ...]]:
    """(name, description) of each task or metric; (name, summary, origin) of each method."""
    if what is Listable.tasks:
        from bnnbench.tasks import list_tasks, task_description

        return [(name, task_description(name, tasks_dir)) for name in list_tasks(tasks_dir)]
    if what is Listable.metrics:
        from bnnbench.metrics import METRICS

        return [(name, METRICS.summary(name)) for name in METRICS.names()]
    from bnnbench.methods import METHODS, find_method, origin_label, warn

    rows = []
    for name in METHODS.names():
        if METHODS.origin(name) is None:  # built-in: the registered summary, so listing imports no torch
            rows.append((name, METHODS.summary(name), origin_label(None)))
        elif not built_in:
            try:  # a plugin is imported to be listed: one that cannot be is a warning, not the end of the list
                spec, origin = find_method(name)
            except BnnbenchError as error:
                warn(str(error))
                continue
            rows.append((name, spec.summary, origin_label(origin)))
    return rows


@app.command(epilog="Example: `bnnbench validate digits-mlp` (no names: every task)")
def validate(
    tasks: Annotated[list[str] | None, typer.Argument(help="task names or .toml paths")] = None,
    tasks_dir: Annotated[list[Path], typer.Option(help=TASKS_DIR_HELP)] = [],  # noqa: B006
) -> None:
    """Check task files: keys, data source, model and its size, training settings, metrics, method overrides."""
    from bnnbench.tasks import check_network, list_tasks, load_task

    for name in tasks or list_tasks(tasks_dir):
        task = load_task(name, tasks_dir)
        count = check_network(task)
        size = "sized when its data are loaded" if count is None else f"{count:,} parameters"
        out.print(f"[green]ok[/green] {task.name} v{task.version} ({task.path}): {size}")


@app.command(epilog="Example: `bnnbench run --task digits-mlp --method map --seed 0..2`")
def run(
    task: Annotated[str, typer.Option(help="task name (see `bnnbench list tasks`) or path to a .toml")],
    method: Annotated[str, typer.Option(help=METHOD_HELP)],
    seed: Annotated[list[str], typer.Option(help="seed, repeatable or a range such as 0..2")] = ["0"],  # noqa: B006
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    results_dir: Annotated[Path, typer.Option(help="where run directories are written")] = Path("results/runs"),
    epochs: Annotated[int | None, typer.Option(help="override the budget's epochs")] = None,
    budget: Annotated[str | None, typer.Option(help="a named budget of the task, e.g. ci")] = None,
    set_: Annotated[list[str], typer.Option("--set", help=SET_HELP)] = [],  # noqa: B006
    save_predictions: Annotated[bool, typer.Option(help="write predictions.npz (clean test) and pointwise.npz "
                                                        "(per-example metric terms, for `compare --against`)")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
    force: Annotated[bool, typer.Option(help="re-run seeds that already have an ok result")] = False,
    tasks_dir: Annotated[list[Path], typer.Option(help=TASKS_DIR_HELP)] = [],  # noqa: B006
    tuned: Annotated[Path | None, typer.Option(help="apply the method's settings from a `bnnbench tune` file "
                                                     "(tuned/TASK.toml); --set still wins")] = None,
    compile_: Annotated[bool, typer.Option("--compile", help=COMPILE_HELP)] = False,
) -> None:
    """Fit one method on one task for each seed, evaluate it, and write tidy results. A seed whose run id
    already has an ok result is skipped, as in `sweep`; `--force` replaces it."""
    from bnnbench import api
    from bnnbench.methods import parse_assignments

    failed = []

    def report(outcome) -> None:
        if outcome.status == "failed":
            failed.append(outcome.run_id)
        _print_run(outcome)

    api.run(task, method, parse_seeds(seed), parse_assignments(set_), results_dir=results_dir, budget=budget,
            epochs=epochs, device=device, data_dir=data_dir, force=force, save_predictions=save_predictions,
            task_dirs=tasks_dir, tuned=tuned, compile=compile_, show_progress=not quiet, on_run=report)
    if failed:
        raise typer.Exit(1)


def _print_run(outcome) -> None:
    """One line for a seed of `run`: skipped, its clean-test scores and timings, or its error (on stderr)."""
    if outcome.status == "skipped":
        out.print(f"skipped {outcome.run_id}: an ok result is already in {outcome.directory} (--force re-runs it)",
                  markup=False, highlight=False)
    elif outcome.status == "ok":
        record = outcome.record
        scores = " ".join(f"{name} {value:.4f}" for name, value in outcome.clean_test.items())
        out.print(f"[green]ok[/green] {escape(outcome.run_id)}: test {scores}; fit {record['fit_seconds']:.1f} s "
                  f"({record['fit_epochs']} epochs), eval {record['eval_seconds']:.1f} s -> "
                  f"{escape(str(outcome.directory))}")
    else:
        first_line = (outcome.error.strip().splitlines() or [""])[0]
        err.print(f"[red]failed[/red] {escape(outcome.run_id)}: {escape(first_line)} -> "
                  f"{escape(str(outcome.directory))}", soft_wrap=True)


class Executor(str, Enum):
    local = "local"
    ray = "ray"


@app.command(epilog="Example: `bnnbench sweep --tasks digits-mlp --methods map,swag --seeds 0-4 --workers 2`")
def sweep(
    tasks: Annotated[str, typer.Option(help="comma-separated task names")],
    methods: Annotated[str, typer.Option(help="comma-separated method names (or package.module:attr)")],
    seeds: Annotated[str, typer.Option(help="seeds, e.g. 0-4 or 0,3")] = "0",
    set_: Annotated[list[str], typer.Option("--set", help="KEY=V1,V2,...: a grid axis (repeatable)")] = [],  # noqa: B006
    executor: Annotated[Executor, typer.Option(help="where runs execute")] = Executor.local,
    workers: Annotated[int, typer.Option(help="worker processes (local), CPUs of a Ray started here (ray)")] = 1,
    ray_address: Annotated[str | None, typer.Option(help="ray: join this cluster (auto or HOST:PORT)")] = None,
    gpus_per_run: Annotated[float | None, typer.Option(help="ray: GPUs each run asks for (default: the task's "
                                                            "[resources])")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads per worker (local, default 1); ray: CPUs and "
                                                     "threads per run (default: the task's [resources])")] = None,
    force: Annotated[bool, typer.Option(help="re-run runs that already have an ok result")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    results_dir: Annotated[Path, typer.Option(help="where run directories are written")] = Path("results/runs"),
    budget: Annotated[str | None, typer.Option(help="a named budget of the tasks, e.g. ci")] = None,
    epochs: Annotated[int | None, typer.Option(help="override the budget's epochs")] = None,
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
    save_predictions: Annotated[bool, typer.Option(help="each run writes predictions.npz and pointwise.npz "
                                                        "(for `bnnbench report` and `compare --against`)")]
    = False,
    quiet: Annotated[bool, typer.Option(help="no live progress table")] = False,
    tasks_dir: Annotated[list[Path], typer.Option(help=TASKS_DIR_HELP)] = [],  # noqa: B006
    tuned: Annotated[Path | None, typer.Option(help="apply each method's settings from a `bnnbench tune` file; "
                                                     "--set values still win")] = None,
) -> None:
    """Run tasks x methods x seeds x grid; skips runs with an ok result, isolates failures, resumable."""
    from bnnbench import api
    from bnnbench.sweep import parse_grid

    with _SweepProgress(enabled=not quiet) as progress:
        result = api.sweep(
            [name for name in tasks.split(",") if name], [name for name in methods.split(",") if name],
            parse_seeds([seeds]), parse_grid(set_), executor=executor.value, workers=workers,
            ray_address=ray_address, gpus_per_run=gpus_per_run, threads=threads, force=force, device=device,
            results_dir=results_dir, budget=budget, epochs=epochs, data_dir=data_dir,
            save_predictions=save_predictions, task_dirs=tasks_dir, tuned=tuned, on_update=progress.update)
    counts = {status: list(result.status.values()).count(status) for status in ("ok", "failed", "skipped")}
    out.print(f"sweep: {result.total} runs: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} "
              f"skipped; wall {result.wall_seconds:.1f} s, runs' own time {result.run_seconds:.1f} s")
    for run_id, error in result.errors.items():
        err.print(f"[red]failed[/red] {run_id}: {error}", soft_wrap=True)
    if counts["failed"]:
        raise typer.Exit(1)


class _SweepProgress:
    """A live table: done / running / failed / skipped / remaining and an ETA from the runs finished so far. It
    appears with the first update, once the sweep is expanded (bad input is one line, not a table first)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.live, self.start = enabled, None, time.perf_counter()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def update(self, result, running: int) -> None:
        from rich.live import Live

        if not self.enabled:
            return
        if self.live is None:
            self.start = time.perf_counter()
            self.live = Live(self._render(result, running), console=err, refresh_per_second=4)
            self.live.__enter__()
        self.live.update(self._render(result, running))

    def _render(self, result, running: int):
        from rich.table import Table

        statuses = list(result.status.values())
        ran = statuses.count("ok") + statuses.count("failed")
        remaining = result.total - len(statuses) - running
        elapsed = time.perf_counter() - self.start
        eta = elapsed / ran * (remaining + running) if ran else float("nan")
        table = Table("done", "running", "failed", "skipped", "remaining", "elapsed s", "ETA s", title="sweep")
        table.add_row(str(statuses.count("ok")), str(running), str(statuses.count("failed")),
                      str(statuses.count("skipped")), str(remaining), f"{elapsed:.0f}",
                      "?" if eta != eta else f"{eta:.0f}")
        return table


@app.command(epilog="Example: `bnnbench tune --task digits-mlp --methods all --workers 2` (24 trials per method at "
                     "the task's full budget, pruned by successive halving)")
def tune(
    task: Annotated[str, typer.Option(help="task name (see `bnnbench list tasks`) or path to a .toml")],
    methods: Annotated[str, typer.Option(help="comma-separated method names, or all (bnnbench's own)")],
    trials: Annotated[int, typer.Option(help="trials per method: the same budget for each")] = 24,
    seeds: Annotated[str, typer.Option(help="seeds each trial runs (its value is their mean), e.g. 1000 or "
                                            "1000-1002; `run --tuned` refuses them")] = "1000",
    objective: Annotated[str, typer.Option(help="a metric of the task's validation split, e.g. nll or ece")] = "nll",
    executor: Annotated[Executor, typer.Option(help="where trial runs execute")] = Executor.local,
    workers: Annotated[int, typer.Option(help="trials in flight; worker processes (local), CPUs of a Ray "
                                              "started here (ray)")] = 1,
    study_dir: Annotated[Path, typer.Option(help="the Optuna studies (TASK.db, SQLite) and trial runs")]
    = Path("studies"),
    out_file: Annotated[Path | None, typer.Option("--out", help="the tuned settings file (default "
                                                                "tuned/TASK.toml)")] = None,
    budget_seconds: Annotated[float | None, typer.Option(help="also stop a method's study once its runs took "
                                                              "this many seconds (an equal wall-clock budget)")]
    = None,
    sampler_seed: Annotated[int, typer.Option(help="seed of the TPE samplers")] = 0,
    budget: Annotated[str | None, typer.Option(help="a named budget of the task for the trials, e.g. ci (default: "
                                                    "the task's full budget, the one reported)")] = None,
    pruner: Annotated[str, typer.Option(help="stop trials whose validation NLL trails: sha (successive halving), "
                                             "hyperband or none")] = "sha",
    min_epochs: Annotated[int | None, typer.Option(help="the pruner's first rung in epochs (default 1/9 of the "
                                                        "budget's)")] = None,
    divergence_factor: Annotated[float, typer.Option(help="stop a run as diverged when its validation NLL exceeds "
                                                          "its best by this factor")] = 3.0,
    epochs: Annotated[int | None, typer.Option(help="override the budget's epochs")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    threads: Annotated[int | None, typer.Option(help="torch threads per worker (local, default 1); ray: CPUs and "
                                                     "threads per run")] = None,
    ray_address: Annotated[str | None, typer.Option(help="ray: join this cluster (auto or HOST:PORT)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
    quiet: Annotated[bool, typer.Option(help="no line per trial")] = False,
    tasks_dir: Annotated[list[Path], typer.Option(help=TASKS_DIR_HELP)] = [],  # noqa: B006
) -> None:
    """Tune each method with the same number of trials (Optuna TPE, seeded) on the task's validation split only;
    trials run on the sweep executors and resume after a kill. Writes `tuned/TASK.toml` for `run --tuned`."""
    from bnnbench import api

    def report(task_name: str, method: str, number: int, value: float | None) -> None:
        _say(f"tune {task_name} {method} trial {number}: {objective} "
             f"{'failed or pruned' if value is None else f'{value:.4f}'}")

    names = [name for name in methods.split(",") if name]
    tuned = api.tune(task, names, trials, parse_seeds([seeds]), objective, executor=executor.value, workers=workers,
                     study_dir=study_dir, out=out_file, budget_seconds=budget_seconds, sampler_seed=sampler_seed,
                     budget=budget, epochs=epochs, device=device, threads=threads, ray_address=ray_address,
                     data_dir=data_dir, task_dirs=tasks_dir, on_trial=None if quiet else report, pruner=pruner,
                     min_epochs=min_epochs, divergence_factor=divergence_factor)
    for method, summary in tuned.outcome.summaries.items():
        best = summary.get("best_value")
        cost = f"{summary['full_runs']:g} full runs" if "full_runs" in summary else "cost unknown"
        out.print(f"{method}: {summary['complete']} complete, {summary['pruned']} pruned, {summary['failed']} failed "
                  f"({summary['diverged']} diverged) of {summary['trials']} trials, {cost}; best {objective} "
                  f"{'-' if best is None else f'{best:.4f}'} {tuned.outcome.best.get(method, {})}",
                  markup=False, highlight=False)
    out.print(f"wrote {tuned.path}", markup=False, highlight=False)


@app.command(epilog="Example: `bnnbench compare --task digits-mlp --format markdown`")
def compare(
    results_dir: Annotated[Path, typer.Option(help="results to read")] = Path("results/runs"),
    task: Annotated[list[str], typer.Option(help="only these tasks (repeatable)")] = [],  # noqa: B006
    metric: Annotated[list[str], typer.Option(help="only these metrics (repeatable)")] = [],  # noqa: B006
    format_: Annotated[Format, typer.Option("--format", help="table, markdown, csv, json or latex")] = Format.table,
    pivot: Annotated[Pivot, typer.Option(help="metric: a table per task; task: one --metric, tasks as columns")]
    = Pivot.metric,
    rank_by: Annotated[str | None, typer.Option(help="rank by this clean-test column alone (e.g. agreement) instead "
                                                     "of the mean rank over all quality columns")] = None,
    published: Annotated[bool, typer.Option("--published/--no-published",
                                            help="show published figures (a paper's numbers, marked †, never "
                                                 "ranked) for the tasks the tables name")] = True,
    published_table: Annotated[list[Path], typer.Option(help="a published-figure table to show instead of the "
                                                             "shipped ones (repeatable)")] = [],  # noqa: B006
    against: Annotated[str | None, typer.Option(help="show each method's paired difference from this method (e.g. "
                                                     "map), with confidence intervals, instead of the leaderboard")]
    = None,
    level: Annotated[float, typer.Option(help="--against: the intervals' confidence level")] = 0.95,
    bootstrap: Annotated[int, typer.Option(help="--against: bootstrap replicates")] = 2000,
    across_tasks: Annotated[bool, typer.Option("--across-tasks", help="rank methods on each task (of --task, or "
                                                                      "all) by one --metric (default nll): average "
                                                                      "ranks, Friedman test, Nemenyi CD")] = False,
    alpha: Annotated[float, typer.Option(help="--across-tasks: the tests' significance level")] = 0.05,
) -> None:
    """Leaderboards per task: mean ± stderr over seeds, best per column, mean rank, cost columns. Published figures
    of the tasks (the shipped tables', or --published-table's) follow as unranked rows marked †, with a footnote.
    With --against, each method's difference from one method, paired by seed, with its confidence interval. With
    --across-tasks, the methods' average ranks over tasks and whether they differ (Demšar 2006, via autorank)."""
    from bnnbench.comparison import TASK_KEY, aggregate, leaderboard, with_published
    from bnnbench.metrics import METRICS
    from bnnbench.published import load_published, shipped_tables
    from bnnbench.reference_files import reference_resolutions
    from bnnbench.results import load_results

    for name in [*metric, *([rank_by] if rank_by else [])]:
        METRICS.check(name)
    if pivot is Pivot.task and len(metric) != 1:
        raise UsageError(f"--pivot task shows one metric across tasks: give exactly one --metric, not {len(metric)}")
    if published_table and not published:
        raise UsageError("--published-table names tables to show, --no-published shows none: give one of them")
    tables = [load_published(path) for path in (published_table or shipped_tables())] if published else []
    runs, metrics = load_results(results_dir, _warn)
    if runs.empty:
        raise UsageError(f"no runs found under '{results_dir}'; run `bnnbench run` first")
    where = f"under {results_dir}"
    if task:
        runs, metrics = runs[runs["task"].isin(task)], metrics[metrics["task"].isin(task)]
        if runs.empty:
            raise UsageError(f"no runs of task(s) {', '.join(task)} under '{results_dir}'")
        where = f"of task(s) {', '.join(task)} {where}"
    if (runs["status"] != "ok").all():  # an empty leaderboard would say nothing about why
        _say(f"no successful runs {where} ({len(runs)} failed)")
        raise typer.Exit(1)
    table = aggregate(runs, metrics)
    there = sorted(set(table.loc[table["n"] > 0, "metric"]))
    for name in [*metric, *([rank_by] if rank_by else [])]:
        if name not in there:
            raise UsageError(f"metric '{name}' does not apply to these results; metrics there: "
                             f"{', '.join(there) or 'none'}")
    if across_tasks:
        if against is not None or pivot is Pivot.task or rank_by or format_ in (Format.latex, Format.json):
            raise UsageError("--across-tasks ranks methods by one --metric; it takes no --against, --pivot task, "
                             "--rank-by or --format latex/json (table, markdown or csv)")
        if len(metric) > 1:
            raise UsageError(f"--across-tasks ranks by one --metric, not {len(metric)}")
        _print_ranks(table, metric[0] if metric else "nll", alpha, format_)
        return
    if against is not None:
        from bnnbench.paired import PairedSettings

        if pivot is Pivot.task or rank_by or format_ is Format.latex:
            raise UsageError("--against shows differences from one method; it takes no --pivot task, --rank-by or "
                             "--format latex")
        _print_paired(runs, metrics, results_dir, PairedSettings(against, level, bootstrap), metric, format_)
        return
    resolution = reference_resolutions(runs)
    board = with_published(leaderboard(runs, table, metric or None, rank_by, resolution), tables, metric or None)
    if pivot is Pivot.task:
        from bnnbench.render import pivot_tasks

        board = pivot_tasks(board, metric[0]).assign(task="all tasks", task_version=0, data_variant="standard")
    if format_ is Format.csv:
        sys.stdout.write(board.to_csv(index=False))
    elif format_ is Format.json:
        sys.stdout.write(board.to_json(orient="records", indent=2) + "\n")
    else:
        from bnnbench.render import leaderboard_latex, leaderboard_markdown, leaderboard_table

        for (task_name, version, variant), rows in board.groupby(TASK_KEY, sort=True):
            title = f"{task_name} v{version}" + ("" if variant == "standard" else f" ({variant})")
            if pivot is Pivot.task:
                title = f"{metric[0]} (clean test) by task"
            notes = _resolution_notes(rows, resolution.get((task_name, version, variant)))
            if format_ is Format.latex:
                sys.stdout.write(leaderboard_latex(rows, title) + "\n")
            elif format_ is Format.markdown:
                sys.stdout.write(leaderboard_markdown(rows, title) + "".join(f"{note}  \n" for note in notes) + "\n")
            else:
                out.print(leaderboard_table(rows, title))
            if notes and format_ is not Format.markdown:
                out.print("\n".join(notes), markup=False, highlight=False, soft_wrap=True)


def _print_ranks(table, metric: str, alpha: float, format_: Format) -> None:
    """`compare --across-tasks`: the rank table (a row per method, its average rank and its rank on each task), the
    Friedman test, the critical difference and what was left out."""
    from bnnbench.ranking import rank_across_tasks

    result = rank_across_tasks(table, metric, alpha=alpha)
    if format_ is Format.csv:
        sys.stdout.write(result.to_frame().to_csv(index=False))
        return
    from bnnbench.render import rank_markdown, rank_table

    title = f"ranks by clean-test {metric} across {len(result.tasks)} tasks (1 is best)"
    ranks, lines = result.rank_table().reset_index(), result.summary_lines()
    if format_ is Format.markdown:
        sys.stdout.write(rank_markdown(ranks, title) + "\n" + "".join(f"{line}  \n" for line in lines))
        return
    out.print(rank_table(ranks, title))
    out.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)


def _resolution_notes(board, resolution: dict[str, float] | None) -> list[str]:
    """Lines under a fidelity task's leaderboard: the reference's resolution and the pairs it cannot tell apart."""
    from bnnbench.comparison import unresolved_pairs

    if not resolution:
        return []
    shown = {column: limit for column, limit in resolution.items() if column in set(board["column"])}
    if not shown:
        return []
    lines = ["HMC reference resolution (larger of its split-half differences: chains and halves of each chain): "
             + ", ".join(f"{column} {limit:.4f}" for column, limit in shown.items())
             + "; means closer than that are ties, and every mean tied with a column's best is marked best"]
    for column, pairs in unresolved_pairs(board, shown).items():
        lines.append(f"{column} ties: " + (", ".join(f"{a} = {b} ({gap:.4f})" for a, b, gap in pairs) or "none"))
    return lines


def _print_paired(runs, metrics, results_dir: Path, settings, metric: list[str], format_: Format) -> None:
    """`compare --against`: a table of paired differences per task, the interval methods used under each."""
    from bnnbench.comparison import TASK_KEY
    from bnnbench.paired import interval_note, paired_differences
    from bnnbench.render import PAIRED_MARKS, paired_markdown, paired_table

    rows = paired_differences(runs, metrics, results_dir, settings, metric or None)
    if format_ is Format.csv:
        sys.stdout.write(rows.to_csv(index=False))
        return
    if format_ is Format.json:
        sys.stdout.write(rows.to_json(orient="records", indent=2) + "\n")
        return
    for (task_name, version, variant), task_rows in rows.groupby(TASK_KEY, sort=True):
        seeds = sorted(set(task_rows["seeds"]))
        title = (f"{task_name} v{version}" + ("" if variant == "standard" else f" ({variant})")
                 + f": method - {settings.against}, mean over {'/'.join(map(str, seeds))} paired seeds, "
                 f"{settings.level:.0%} interval")
        notes = [*interval_note(set(task_rows["interval"]), settings),
                 f"{PAIRED_MARKS['better']} / {PAIRED_MARKS['worse']}: the interval excludes 0 "
                 f"and the method is better / worse than {settings.against} by the metric's direction; unmarked: "
                 "not resolved"]
        if (task_rows["quantity"] != "difference").any():
            notes.append("coverage_*: the difference of the distances to the nominal level (below 0 is better)")
        if format_ is Format.markdown:
            sys.stdout.write(paired_markdown(task_rows, title, notes) + "\n")
        else:
            out.print(paired_table(task_rows, title, notes))


def _warn(line: str) -> None:
    """A reader's warning (a run skipped as unreadable, naming its file): one line on stderr, as it is."""
    _say(f"warning: {line}")


def _say(line: str) -> None:
    """One line on stderr, printed as it is: paths and names hold `[`, which rich would take for markup."""
    err.print(line, markup=False, highlight=False, soft_wrap=True)


class CheckFormat(str, Enum):
    """`bnnbench check` output: a table for a terminal, or a report for a CI system (`bnnbench.check_formats`)."""

    text = "text"
    junit = "junit"
    markdown = "markdown"
    github = "github"


@app.command(epilog="Examples: `bnnbench check --baseline results/baselines/ci-cpu.csv --results-dir results/ci-runs`; "
                     "`bnnbench check --baseline base.csv --results-dir results/ci-runs --format junit --output "
                     "check.xml` (CI: see docs/ci.md)")
def check(
    baseline: Annotated[Path, typer.Option(help="baseline CSV (see `bnnbench baseline`)")],
    results_dir: Annotated[Path, typer.Option(help="new results to check")] = Path("results/runs"),
    config: Annotated[Path | None, typer.Option(help="pyproject.toml with [tool.bnnbench.check]")] = None,
    only_changed: Annotated[bool, typer.Option(help="hide unchanged rows (text format)")] = False,
    format_: Annotated[CheckFormat, typer.Option("--format", help="text (a table), junit (XML), markdown (a "
                                                 "pull-request comment) or github (workflow commands); a report "
                                                 "goes to stdout alone, the verdict to stderr")] = CheckFormat.text,
    output: Annotated[Path | None, typer.Option(help="write the junit, markdown or github report to this file "
                                                     "(whole or not at all) instead of stdout")] = None,
) -> None:
    """Compare results with a baseline; exit 1 on a regression (+) or new failure (!) of a gated metric, or when
    nothing matches the baseline, in every format."""
    from bnnbench import atomic
    from bnnbench.check_formats import Verdict, check_github, check_junit, check_markdown, verdict
    from bnnbench.comparison import aggregate, load_baseline, load_check_config
    from bnnbench.comparison import check as check_results
    from bnnbench.render import check_result_table
    from bnnbench.results import check_output_file, load_results

    if output is not None:  # bad input first: no results are read for a report that cannot be written
        if format_ is CheckFormat.text:
            raise UsageError("--output writes a CI report: give --format junit, markdown or github "
                             "(the text table goes to stdout)")
        check_output_file(output, option="--output")
    settings = load_check_config(config)
    base = load_baseline(baseline)
    runs, metrics = load_results(results_dir, _warn)
    if runs.empty:  # nothing to check is bad input, as for compare, baseline and report: not a table of '?'
        raise UsageError(f"no runs found under '{results_dir}'; run `bnnbench run` first")
    result = check_results(base, aggregate(runs, metrics), settings)
    counts = result["mark"].value_counts().to_dict()
    marks = "marks: " + ", ".join(f"'{mark}' {count}" for mark, count in sorted(counts.items()))
    if format_ is CheckFormat.text:
        shown = result[result["mark"] != " "] if only_changed else result
        out.print(check_result_table(shown, settings))
        out.print(marks)
    else:  # the report alone on stdout (`> check.xml` is a valid file); everything else on stderr
        render = {CheckFormat.junit: check_junit, CheckFormat.markdown: check_markdown,
                  CheckFormat.github: check_github}[format_]
        report = render(result, settings)
        if output is None:  # UTF-8 whatever the locale's encoding: the XML declares it, GitHub's summary expects it
            sys.stdout.flush()
            binary = getattr(sys.stdout, "buffer", None)
            if binary is None:  # a text-only stream (an embedding's StringIO): its own encoding
                sys.stdout.write(report)
            else:
                binary.write(report.encode("utf-8"))
                binary.flush()
        else:
            atomic.write_text(output, report)
            _say(f"wrote {output}")
        _say(marks)
    gate = escape(", ".join(settings.gate))
    found = verdict(result)
    if found is Verdict.nothing_matched:
        err.print(f"[red]no results under '{escape(str(results_dir))}' match the baseline[/red]", soft_wrap=True)
        raise typer.Exit(1)
    if found is Verdict.regression:
        err.print(f"[red]regression in a gated metric ({gate})[/red]", soft_wrap=True)
        raise typer.Exit(1)
    (out if format_ is CheckFormat.text else err).print(f"[green]no regression in gated metrics ({gate})[/green]")


@app.command("baseline", epilog="Example: `bnnbench baseline --results-dir results/ci-runs "
                                "--out results/baselines/ci-cpu.csv`")
def baseline_(
    out_path: Annotated[Path, typer.Option("--out", help="baseline CSV to write")],
    results_dir: Annotated[Path, typer.Option(help="results to summarise")] = Path("results/runs"),
) -> None:
    """Write the seed-aggregated summary rows of a results directory as a baseline CSV."""
    from bnnbench import atomic
    from bnnbench.comparison import BASELINE_DIGITS, aggregate, summary_rows
    from bnnbench.results import check_output_file, load_results

    check_output_file(out_path)
    runs, metrics = load_results(results_dir, _warn)
    if runs.empty:
        raise UsageError(f"no runs found under '{results_dir}'")
    if (runs["status"] != "ok").all():  # a baseline of failures has no number to compare with
        _say(f"no successful runs under {results_dir} ({len(runs)} failed); no baseline written")
        raise typer.Exit(1)
    table = summary_rows(aggregate(runs, metrics))
    atomic.write_text(out_path, table.to_csv(index=False, float_format=f"%.{BASELINE_DIGITS}g"))
    out.print(f"wrote {len(table)} rows from {len(runs)} runs to {out_path}", markup=False, soft_wrap=True)


@app.command(epilog="Examples: `bnnbench convergence --task gauss-d100-k1000 --methods score-vi,elbo-vi,gsm,bam "
                     "--seed 0..4`; `bnnbench convergence --task digits-mlp --from-runs --out convergence.png`")
def convergence(
    task: Annotated[str, typer.Option(help="a target (`bnnbench convergence --list`); with --from-runs, a task")]
    = "",
    methods: Annotated[str, typer.Option(help="comma-separated, of score-vi, elbo-vi, gsm, bam")]
    = "score-vi,elbo-vi,gsm,bam",
    seed: Annotated[list[str], typer.Option(help="seeds, e.g. 0..4")] = ["0..4"],  # noqa: B006
    iterations: Annotated[int, typer.Option(help="updates per method and seed")] = 500,
    batch: Annotated[int, typer.Option(help="score evaluations per update, every method")] = 8,
    out_dir: Annotated[Path, typer.Option(help="where rows.csv, settings.json and the figure go (per target)")]
    = Path("results/convergence"),
    from_runs: Annotated[bool, typer.Option("--from-runs", help="draw the neg-ELBO curves that VI runs recorded")]
    = False,
    png: Annotated[Path, typer.Option("--out", help="with --from-runs: PNG file to write")] = Path("convergence.png"),
    results_dir: Annotated[Path, typer.Option(help="with --from-runs: where the runs are")] = Path("results/runs"),
    list_targets: Annotated[bool, typer.Option("--list", help="list the targets and exit")] = False,
) -> None:
    """The convergence benchmark: score-vi against ADVI (elbo-vi), GSM and BaM on a target with a known answer, from
    the same start, step sizes chosen by one stated rule; or, with --from-runs, the curves VI runs recorded."""
    if list_targets:
        from bnnbench.convergence_benchmark import target_names

        for name in target_names():
            out.print(name, markup=False)
        return
    if not task:
        raise UsageError("--task is required: a target (see `bnnbench convergence --list`) or, with --from-runs, "
                         "a task")
    if from_runs:
        _convergence_from_runs(task, png, results_dir)
        return
    from bnnbench.convergence_benchmark import (
        BenchmarkSettings,
        plot_benchmark,
        resolve_target,
        run_benchmark,
        summary_table,
        write_benchmark,
    )

    chosen = [name.strip() for name in methods.split(",") if name.strip()]
    if iterations < 1 or batch < 1:
        raise UsageError(f"--iterations and --batch must be >= 1, got {iterations} and {batch}")
    settings = BenchmarkSettings(iterations=iterations, batch=batch, record_every=max(1, iterations // 50))
    seeds = parse_seeds(seed)
    target = resolve_target(task)  # a bad name is exit 2 before any work
    result = run_benchmark(target, chosen, seeds, settings, progress=lambda line: _say(line))
    directory = write_benchmark(result, settings, out_dir)
    plot_benchmark(result.rows, task, directory / "convergence.png")
    for failure in result.failures:
        _say(f"failed: {failure}")
    out.print(f"{task}: convergence over {len(seeds)} seeds (step sizes {result.chosen})", markup=False,
              soft_wrap=True)
    out.print(summary_table(result.rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"), markup=False,
              soft_wrap=True)
    out.print(f"wrote {directory}/rows.csv, settings.json and convergence.png", markup=False, soft_wrap=True)


def _convergence_from_runs(task: str, png: Path, results_dir: Path) -> None:
    from bnnbench.convergence import plot_convergence
    from bnnbench.results import load_results

    runs, _ = load_results(results_dir, _warn)
    of_task = runs[runs["task"] == task] if not runs.empty else runs
    if not of_task.empty and (of_task["status"] != "ok").all():
        _say(f"no successful runs of task {task} under {results_dir} ({len(of_task)} failed)")
        raise typer.Exit(1)
    curves = plot_convergence(runs, results_dir, task, png, _warn)
    for curve in curves:
        out.print(f"{curve['method']} seed {curve['seed']}: neg-ELBO {curve['neg_elbo'][0]:.1f} -> "
                  f"{curve['neg_elbo'][-1]:.1f} in {curve['seconds'][-1]:.1f} s", markup=False, soft_wrap=True)
    out.print(f"wrote {png}", markup=False, soft_wrap=True)


@app.command(epilog="Example: `bnnbench report --results-dir results/runs --out report/`")
def report(
    out_dir: Annotated[Path, typer.Option("--out", help="directory for index.html and figures/ (replaced whole)")]
    = Path("report"),
    results_dir: Annotated[Path, typer.Option(help="results to report on")] = Path("results/runs"),
    task: Annotated[list[str], typer.Option(help="only these tasks (repeatable)")] = [],  # noqa: B006
    convergence_dir: Annotated[Path | None, typer.Option(help="`bnnbench convergence` output to add (default: "
                                                               "results/convergence where it exists)")] = None,
) -> None:
    """An HTML page with PNG figures: leaderboards, reliability, corruption severity, cost, forecasts, convergence."""
    from bnnbench.report import build_report

    if convergence_dir is None and Path("results/convergence").is_dir():
        convergence_dir = Path("results/convergence")
    written = build_report(results_dir, out_dir, task or None, warn=_warn, convergence_dir=convergence_dir)
    if written.n_failed == written.n_runs:  # still written: the page lists each failure and its error
        _say(f"no successful runs under {results_dir} ({written.n_failed} failed); the report lists the failures")
    for note in written.notes:
        out.print(f"[dim]left out: {escape(note)}[/dim]", soft_wrap=True)
    out.print(f"wrote {written.page} ({len(written.images)} figures)", markup=False, soft_wrap=True)


@data_app.command("download", epilog="Example: `bnnbench data download cifar10`")
def data_download(
    name: Annotated[str, typer.Argument(help="cifar10, cifar100, cifar10c, svhn, pets, flowers, aircraft or dtd")],
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
) -> None:
    """Download a data set's official files, check their md5 checksum and unpack them under the data root."""
    from bnnbench.data.download import download
    from bnnbench.data.files import data_root

    path = download(name, data_root(data_dir), progress=err.is_terminal)
    out.print(f"[green]ok[/green] {name} -> {path}")


@reference_app.command("hmc", epilog="Example: `bnnbench reference hmc --task digits-fidelity --chains 4 --workers 2`")
def reference_hmc(
    task: Annotated[str, typer.Option(help="task name or path to a .toml; it needs a [posterior] table")],
    chains: Annotated[int, typer.Option(help="independent NUTS chains (split-R̂ compares them)")] = 4,
    samples: Annotated[int, typer.Option(help="kept samples per chain, after warm-up")] = 1000,
    warmup: Annotated[int, typer.Option(help="warm-up iterations per chain (step size and mass matrix adapt)")]
    = 1000,
    workers: Annotated[int | None, typer.Option(help="processes, one thread each (default min(chains, CPUs))")]
    = None,
    seed: Annotated[int, typer.Option(help="chain c uses seed + c")] = 0,
    out_dir: Annotated[Path, typer.Option(help="where TASK.vVERSION.npz and .json are written")]
    = Path("results/references"),
    max_tree_depth: Annotated[int, typer.Option(help="NUTS tree depth limit (2**depth - 1 gradients a sample)")]
    = 10,
    init_steps: Annotated[int, typer.Option(help="full-batch Adam steps from each chain's prior draw")] = 300,
    quiet: Annotated[bool, typer.Option(help="no progress output")] = False,
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
    tasks_dir: Annotated[list[Path], typer.Option(help=TASKS_DIR_HELP)] = [],  # noqa: B006
) -> None:
    """Sample a task's posterior with full-batch NUTS and save its test predictive as the task's reference."""
    from bnnbench.hmc import HmcSettings, check_settings, check_task, sample_reference
    from bnnbench.reference_files import save_reference
    from bnnbench.results import check_writable
    from bnnbench.tasks import load_task

    settings = HmcSettings(chains=chains, samples=samples, warmup=warmup, seed=seed, max_tree_depth=max_tree_depth,
                           init_steps=init_steps)
    workers = min(chains, os.cpu_count() or 1) if workers is None else workers
    check_settings(settings, workers)
    spec = load_task(task, tasks_dir)
    check_task(spec)
    check_writable(out_dir, what="--out-dir")
    workers = min(workers, chains)
    if not quiet:
        _say(f"{spec.name} v{spec.version}: {chains} chains x ({warmup} warm-up + {samples} samples) on "
             f"{workers} worker{'s' * (workers > 1)}")
    arrays, meta = sample_reference(spec, settings, workers=workers, data_dir=data_dir,
                                    report=None if quiet else _say, progress_bar=not quiet and err.is_terminal)
    npz_path, json_path = save_reference(out_dir, spec, arrays, meta)
    _print_reference_summary(meta, npz_path)


def _print_reference_summary(meta: dict, npz_path: Path) -> None:
    from rich.table import Table

    def numbers(values: list[float], form: str) -> str:
        return " ".join(format(value, form) for value in values)

    table = Table(title=f"HMC reference {meta['task']} v{meta['task_version']}", show_header=False)
    table.add_column(justify="right")
    table.add_column()
    table.add_row("split-R̂ max / p99", f"{meta['rhat_max']:.3f} / {meta['rhat_p99']:.3f}")
    table.add_row("ESS min / median", f"{meta['ess_bulk_min']:.0f} / {meta['ess_bulk_median']:.0f} "
                  f"(of {meta['chains'] * meta['samples']} samples)")
    table.add_row("acceptance per chain", numbers(meta["accept_rate"], ".2f"))
    table.add_row("step size per chain", numbers(meta["step_size"], ".3g"))
    table.add_row("mean tree depth per chain", numbers(meta["mean_tree_depth"], ".1f"))
    table.add_row("divergences per chain", numbers(meta["divergences"], "d"))
    table.add_row("seconds (wall)", f"{meta['wall_seconds']:.0f}")
    table.add_row("written", escape(str(npz_path)))
    out.print(table)


@app.command("bench", epilog="Example: `bnnbench bench --task cifar10-vit --method score-vi --device cuda`")
def bench_(
    task: Annotated[str, typer.Option(help="task name or path to a .toml")],
    method: Annotated[str, typer.Option(help="method name")],
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    steps: Annotated[int, typer.Option(help="timed training steps")] = 50,
    warmup: Annotated[int, typer.Option(help="untimed training steps first")] = 10,
    eval_batch: Annotated[int | None, typer.Option(help="evaluation batch (default: the task's)")] = None,
    samples: Annotated[int | None, typer.Option(help="posterior samples per evaluation batch")] = None,
    synthetic: Annotated[bool, typer.Option(help="random images of the task's shape (no data files)")] = False,
    set_: Annotated[list[str], typer.Option("--set", help=SET_HELP)] = [],  # noqa: B006
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
    compile_: Annotated[bool, typer.Option("--compile", help=COMPILE_HELP + "; the bare network's too")] = False,
    fit_repeats: Annotated[int, typer.Option(help="fits of each length, the fastest kept")] = 3,
) -> None:
    """Images/s of a method's training steps and evaluation against the bare network's, as ratios."""
    from rich.table import Table

    from bnnbench.bench import bench
    from bnnbench.methods import parse_assignments

    if min(steps, warmup, fit_repeats) < 1:
        raise UsageError(f"--steps, --warmup and --fit-repeats must be at least 1, got {steps}, {warmup} and "
                         f"{fit_repeats}")
    result = bench(task, method, device, steps=steps, warmup=warmup, n_samples=samples, eval_batch=eval_batch,
                   overrides=parse_assignments(set_), synthetic=synthetic, data_dir=data_dir, compile=compile_,
                   fit_repeats=fit_repeats)
    compiled = " (compiled)" if compile_ and result.compile_error is None else ""
    table = Table(title=f"{task} / {method} on {result.device}{compiled}", header_style="bold")
    for column in ("", "batch", method, "bare network", "ratio"):
        table.add_column(column, justify="right")
    table.add_row("train images/s", str(result.train_batch), f"{result.method_train:,.0f}",
                  f"{result.bare_train:,.0f}", f"{result.train_ratio:.3f}")
    table.add_row(f"eval forward passes/s (x{result.n_samples} samples)", str(result.eval_batch),
                  f"{result.method_eval:,.0f}", f"{result.bare_eval:,.0f}", f"{result.eval_ratio:.3f}")
    out.print(table)
    if result.post_hoc_map_epochs is not None:
        out.print(f"post-hoc fit after the training steps: {result.post_hoc_seconds:.2f} s, "
                  f"{result.post_hoc_map_epochs:.2f} MAP epochs of the {result.train_images:,} training images")
    out.print(f"eval images/s: {result.method_eval / max(result.n_samples, 1):,.0f} "
              f"(x bare per image: {result.eval_image_ratio:.3f}); train step x bare: "
              f"{1 / result.train_ratio:.2f}" + (f"; peak CUDA memory {result.peak_cuda_mb:,.0f} MB"
                                                if result.peak_cuda_mb is not None else ""))


@app.command(epilog="Example: `bnnbench doctor --gpu` on a CUDA machine; `--device cpu --tiny` anywhere (the tests)")
def doctor(
    gpu: Annotated[bool, typer.Option("--gpu", help="run the GPU check and write its report")] = False,
    device: Annotated[str, typer.Option(help="cuda, or cpu (with --tiny: the tests' run of the same stages)")]
    = "cuda",
    tiny: Annotated[bool, typer.Option(help="tiny data sets, networks and step counts: every stage in seconds")]
    = False,
    out_path: Annotated[Path, typer.Option("--out", help="the report (Markdown), rewritten after every stage")]
    = Path("docs/gpu.md"),
    data_root: Annotated[Path | None, typer.Option(help="where the temporary data root is made (default: the "
                                                        "system's temporary folder); it is removed afterwards")]
    = None,
    budget_seconds: Annotated[float, typer.Option(help="time for the whole check; stages not begun within it "
                                                       "are skipped")] = 420.0,
    method: Annotated[list[str], typer.Option(help="bench only these methods (repeatable; default: every "
                                                   "built-in one)")] = [],  # noqa: B006
) -> None:
    """Without --gpu: torch, CUDA and the devices this machine shows. With --gpu: the GPU check (bench of every
    method on cifar10-vit and cifar10-resnet18, a real epoch and a full evaluation of map and score-vi, compile),
    written to docs/gpu.md; exit 2 at once when no CUDA device is visible, 1 when a stage failed."""
    from bnnbench.doctor import CheckOptions, check_device, environment, gpu_check

    if not gpu:
        import torch

        for key, value in environment(torch.device("cpu")).items():
            if key != "GPU":
                out.print(f"{key}: {value}", markup=False, highlight=False, soft_wrap=True)
        for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
            out.print(f"cuda:{index}: {torch.cuda.get_device_name(index)}", markup=False, highlight=False)
        return
    check_device(device)  # no CUDA: one line and exit 2, before anything else
    options = CheckOptions(device=device, tiny=tiny, out=out_path, data_parent=data_root,
                           budget_seconds=budget_seconds, methods=tuple(method))
    report = gpu_check(options, say=lambda line: out.print(line, markup=False, highlight=False, soft_wrap=True))
    out.print(f"wrote {out_path}", markup=False, highlight=False, soft_wrap=True)
    for stage in report.failed:
        _say(f"failed: {stage.name}: {stage.reason}")
    if report.failed:
        raise typer.Exit(1)


# The click that the installed typer raises from: typer >= 0.2x vendors it as typer._click, older ones use click.
_CLICK_EXCEPTIONS = sys.modules[typer.BadParameter.__module__]


def main() -> None:
    """Entry point: usage errors become one line on stderr and exit code 2."""
    try:
        code = app(standalone_mode=False)  # returns the exit code of typer.Exit instead of raising it
        if code == 130:  # typer turns Ctrl-C into Exit(130)
            err.print("aborted")
        sys.exit(code if isinstance(code, int) else 0)
    except BnnbenchError as error:
        _say(f"error: {error}")
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted")
        sys.exit(130)
    except _CLICK_EXCEPTIONS.ClickException as error:
        if isinstance(error, getattr(_CLICK_EXCEPTIONS, "NoArgsIsHelpError", ())):
            error.show()  # a bare `bnnbench` or `bnnbench data`: the help, as click prints it
        else:
            _say(f"error: {_click_error_line(error)}")
        sys.exit(error.exit_code)
    except Exception as error:
        # a bug outside any run (runs record their own failures): one line, the trace on request
        if os.environ.get("BNNBENCH_TRACEBACK"):
            raise
        _say(f"internal error: {error_line(error)} (BNNBENCH_TRACEBACK=1 shows where)")
        sys.exit(1)


def _click_error_line(error: Exception) -> str:
    """click's message on one line, without the usage block and help hint that click's `show` puts above it.
    typer's pydantic coercion words a bad value without quoting it ("Input should be a valid integer"), so the
    value is added where the message lacks it; its "Value error, " prefix says nothing to a user."""
    message = " ".join(error.format_message().split()).replace("Value error, ", "")
    bad_value = _rejected_input(error)
    if bad_value is not None and repr(bad_value) not in message:
        message = f"{message.rstrip('.')}, got {bad_value!r}"
    return message


def _rejected_input(error: Exception) -> object | None:
    """The value typer's pydantic validation rejected (the cause of its BadParameter), or None."""
    errors = getattr(error.__cause__, "errors", None)
    try:
        return errors()[0].get("input") if callable(errors) else None
    except (IndexError, AttributeError, TypeError):
        return None
