"""The convergence comparison of the score-vi paper: negative ELBO against wall-clock seconds, per method.

Reads the per-epoch diagnostics that the VI methods record in run.json (`fit_extra.neg_elbo` and
`fit_extra.epoch_seconds`, seconds since the fit started, MAP warm-up included) and draws one line per
run, coloured by method. Both methods' estimates are computed alike (see methods/vi/objectives.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from bnnbench.errors import UsageError

__all__ = ["convergence_curves", "plot_convergence"]


def convergence_curves(results_dir: Path, task: str) -> list[dict]:
    """[{method, seed, seconds, neg_elbo}] for each finished run of `task` that recorded a neg-ELBO curve."""
    curves = []
    for path in sorted(Path(results_dir).glob(f"{task}/*/*/run.json")):
        record = json.loads(path.read_text())
        extra = record.get("fit_extra") or {}
        if record.get("status") == "ok" and "neg_elbo" in extra:
            curves.append({"method": record["method"], "seed": record["seed"], "config_hash": record["config_hash"],
                           "seconds": extra["epoch_seconds"], "neg_elbo": extra["neg_elbo"]})
    return curves


def plot_convergence(results_dir: Path, task: str, out: Path) -> list[dict]:
    """Write the neg-ELBO vs seconds figure for `task` to `out` (PNG); returns the curves drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = convergence_curves(results_dir, task)
    if not curves:
        raise UsageError(f"no run of task '{task}' under '{results_dir}' recorded a neg-ELBO curve "
                         "(run score-vi or elbo-vi first)")
    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    colours = {}
    for curve in curves:
        colour = colours.setdefault(curve["method"], f"C{len(colours)}")
        axis.plot(curve["seconds"], curve["neg_elbo"], color=colour, alpha=0.8,
                  label=curve["method"] if curve["method"] not in {c.get_label() for c in axis.lines} else None)
    axis.set(xlabel="wall-clock seconds since the fit started", ylabel="negative ELBO (nats)", yscale="log",
             title=f"{task}: convergence of the VI objective")
    axis.legend()
    figure.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return curves
