"""The convergence comparison of the score-vi paper: negative ELBO against wall-clock seconds, per method.

Reads the per-epoch diagnostics that the VI methods record in run.json (`fit_extra.neg_elbo` and
`fit_extra.epoch_seconds`, seconds since the fit started, MAP warm-up included) and draws one line per
run, coloured by method. Both methods' estimates are computed alike (see methods/vi/objectives.py). Runs come
from `results.load_results`, so hidden and unreadable run directories are skipped as by every other reader.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real
from pathlib import Path

import pandas as pd

from bnnbench.errors import UsageError

__all__ = ["convergence_curves", "plot_convergence"]


def convergence_curves(runs: pd.DataFrame, results_dir: Path, task: str,
                       warn: Callable[[str], None] | None = None) -> list[dict]:
    """[{method, seed, config_hash, seconds, neg_elbo}] for each finished run of `task` (in `runs`, as
    `load_results(results_dir)` returns them) that recorded a neg-ELBO curve. A run whose curve is malformed is
    left out, with one line naming its run.json to `warn`."""
    from bnnbench.results import run_directory

    curves = []
    if runs.empty:
        return curves
    chosen = runs[(runs["task"] == task) & (runs["status"] == "ok")]
    for record in chosen.to_dict("records"):
        extra = record.get("fit_extra")
        if not isinstance(extra, dict) or "neg_elbo" not in extra:
            continue
        seconds, neg_elbo = extra.get("epoch_seconds"), extra["neg_elbo"]
        if not (_numbers(neg_elbo) and _numbers(seconds) and len(neg_elbo) == len(seconds)):
            if warn is not None:
                path = run_directory(results_dir, record["task"], record["method"], record["run_id"]) / "run.json"
                warn(f"skipping {path}: fit_extra.neg_elbo and fit_extra.epoch_seconds are not two equally long, "
                     "non-empty lists of numbers")
            continue
        curves.append({"method": record["method"], "seed": record.get("seed"), "config_hash": record["config_hash"],
                       "seconds": _floats(seconds), "neg_elbo": _floats(neg_elbo)})
    return curves


def _numbers(values: object) -> bool:
    """Whether `values` is a non-empty list of numbers; null is allowed, as run.json writes a non-finite one."""
    return (isinstance(values, list) and len(values) > 0
            and all(v is None or (isinstance(v, Real) and not isinstance(v, bool)) for v in values))


def _floats(values: list) -> list[float]:
    return [math.nan if value is None else float(value) for value in values]


def plot_convergence(runs: pd.DataFrame, results_dir: Path, task: str, out: Path,
                     warn: Callable[[str], None] | None = None) -> list[dict]:
    """Write the neg-ELBO vs seconds figure for `task` to `out` (PNG); returns the curves drawn. Raises
    UsageError when no finished run of `task` recorded a curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bnnbench.figures import plain_text

    curves = convergence_curves(runs, results_dir, task, warn)
    if not curves:
        raise UsageError(f"no run of task '{task}' under '{results_dir}' recorded a neg-ELBO curve "
                         "(run score-vi or elbo-vi first)")
    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    colours = {}
    for curve in curves:
        colour = colours.setdefault(curve["method"], f"C{len(colours)}")
        label = plain_text(curve["method"])
        axis.plot(curve["seconds"], curve["neg_elbo"], color=colour, alpha=0.8,
                  label=label if label not in {c.get_label() for c in axis.lines} else None)
    axis.set(xlabel="wall-clock seconds since the fit started", ylabel="negative ELBO (nats)", yscale="log",
             title=plain_text(f"{task}: convergence of the VI objective"))
    axis.legend()
    figure.tight_layout()
    from bnnbench.atomic import write_with

    image_format = Path(out).suffix.lstrip(".") or "png"
    write_with(Path(out), lambda handle: figure.savefig(handle, format=image_format))
    plt.close(figure)
    return curves
