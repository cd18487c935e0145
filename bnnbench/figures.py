"""The report's figures, drawn with matplotlib from numbers the evaluator already wrote (nothing is scored here).

Each function draws one PNG. Figures are built on `matplotlib.figure.Figure` objects rather than pyplot, so
drawing keeps no global state between figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CostPoint", "FanPanel", "RankDiagram", "ReliabilityPanel", "SeverityCurve", "cost_figure", "fan_figure",
           "pareto_front", "plain_text", "rank_figure", "reliability_figure", "severity_figure"]

DPI = 110


def plain_text(text: str) -> str:
    """`text` as matplotlib should show it: task, method and metric names come from result files, and a `$` in
    one would start mathtext, which fails to draw unless it parses."""
    return str(text).replace("$", r"\$")


@dataclass(frozen=True)
class ReliabilityPanel:
    """One method's reliability diagram: bins pooled over its seeds (see metrics.reliability_bins)."""

    method: str
    count: np.ndarray
    correct: np.ndarray
    confidence: np.ndarray
    ece: str  # the evaluator's ECE, as text (mean ± stderr over seeds)
    seeds: int


@dataclass(frozen=True)
class SeverityCurve:
    """A metric of one method at severities 0 (clean) to 5: mean and standard error over seeds."""

    method: str
    metric: str
    severity: np.ndarray
    mean: np.ndarray
    stderr: np.ndarray


@dataclass(frozen=True)
class CostPoint:
    """One method's mean loss and mean costs over seeds."""

    method: str
    loss: float
    loss_stderr: float
    costs: dict[str, float]  # e.g. {"fit s": 1.2, "peak MB": 350.0}


@dataclass(frozen=True)
class FanPanel:
    """One method's forecast of one window, in series units."""

    method: str
    context: np.ndarray  # (L,)
    truth: np.ndarray  # (H,)
    levels: np.ndarray  # e.g. (0.05, 0.25, 0.5, 0.75, 0.95)
    quantiles: np.ndarray  # (len(levels), H)


def _figure(n_panels: int, columns: int, size: tuple[float, float]):
    from matplotlib.figure import Figure

    columns = max(1, min(columns, n_panels))
    rows = -(-n_panels // columns)
    figure = Figure(figsize=(size[0] * columns, size[1] * rows), dpi=DPI)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis in axes[n_panels:]:
        axis.set_visible(False)
    return figure, axes[:n_panels]


def _save(figure, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    return out


def reliability_figure(panels: Sequence[ReliabilityPanel], title: str, out: Path) -> Path:
    """Accuracy against confidence per bin, one panel per method; the gap to the diagonal is miscalibration."""
    figure, axes = _figure(len(panels), 4, (3.0, 3.0))
    for axis, panel in zip(axes, panels, strict=True):
        n_bins = len(panel.count)
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        filled = panel.count > 0
        accuracy = np.divide(panel.correct, panel.count, out=np.zeros(n_bins), where=filled)
        confidence = np.divide(panel.confidence, panel.count, out=np.zeros(n_bins), where=filled)
        axis.bar(edges[:-1][filled], accuracy[filled], width=1.0 / n_bins, align="edge", color="C0",
                 edgecolor="white", label="accuracy")
        axis.bar(edges[:-1][filled], (confidence - accuracy)[filled], bottom=accuracy[filled], width=1.0 / n_bins,
                 align="edge", color="C3", alpha=0.35, label="gap to confidence")
        axis.plot([0, 1], [0, 1], color="black", linewidth=0.8, linestyle="--")
        axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
                 title=f"{plain_text(panel.method)}\nECE {panel.ece} "
                       f"({panel.seeds} seed{'s' if panel.seeds != 1 else ''})")
        axis.title.set_fontsize(9)
    axes[0].legend(loc="upper left", fontsize=7)
    figure.suptitle(plain_text(title))
    figure.tight_layout()
    return _save(figure, out)


def severity_figure(curves: Sequence[SeverityCurve], metrics: Sequence[str], title: str, out: Path) -> Path:
    """Each metric against corruption severity (0 = clean), a line per method with ± stderr bars."""
    figure, axes = _figure(len(metrics), 3, (4.2, 3.4))
    methods = list(dict.fromkeys(curve.method for curve in curves))
    colours = {method: f"C{i % 10}" for i, method in enumerate(methods)}
    for axis, metric in zip(axes, metrics, strict=True):
        for curve in (c for c in curves if c.metric == metric):
            axis.errorbar(curve.severity, curve.mean, yerr=curve.stderr, color=colours[curve.method], marker="o",
                          markersize=3, capsize=2, linewidth=1.2, label=plain_text(curve.method))
        axis.set(xlabel="corruption severity (0 = clean)", ylabel=plain_text(metric), xticks=range(6))
    axes[0].legend(fontsize=7)
    figure.suptitle(plain_text(title))
    figure.tight_layout()
    return _save(figure, out)


def pareto_front(costs: Sequence[float], losses: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both cost and loss (lower is better for both), in order of
    increasing cost."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], losses[i]))
    front, best = [], np.inf
    for index in order:
        if losses[index] < best:
            front.append(index)
            best = losses[index]
    return front


def cost_figure(points: Sequence[CostPoint], loss_name: str, cost_names: Sequence[str], title: str,
                out: Path) -> Path:
    """Loss against each cost, a point per method, with the Pareto front (what nothing cheaper beats) drawn."""
    figure, axes = _figure(len(cost_names), 2, (4.8, 3.8))
    for axis, cost_name in zip(axes, cost_names, strict=True):
        chosen = [point for point in points if cost_name in point.costs]
        costs = [point.costs[cost_name] for point in chosen]
        losses = [point.loss for point in chosen]
        front = pareto_front(costs, losses)
        axis.errorbar(costs, losses, yerr=[point.loss_stderr for point in chosen], fmt="o", color="C0",
                      markersize=4, capsize=2)
        axis.step([costs[i] for i in front], [losses[i] for i in front], where="post", color="C3", linewidth=1.2,
                  label="Pareto front")
        for index, point in enumerate(chosen):
            axis.annotate(plain_text(point.method), (costs[index], losses[index]), textcoords="offset points",
                          xytext=(4, 3), fontsize=7, fontweight="bold" if index in front else "normal")
        axis.margins(x=0.15, y=0.12)  # room for the labels of the outermost points
        if costs and min(costs) > 0 and max(costs) / min(costs) > 20:
            axis.set_xscale("log")
        axis.set(xlabel=cost_name, ylabel=f"{loss_name} (clean test)")
        axis.legend(fontsize=7)
    figure.suptitle(plain_text(title))
    figure.tight_layout()
    return _save(figure, out)


def fan_figure(panels: Sequence[FanPanel], title: str, out: Path) -> Path:
    """One test window per method: its context, the true continuation and the forecast's median with the bands
    between symmetric quantile pairs (outer band lightest)."""
    figure, axes = _figure(len(panels), 3, (4.4, 3.0))
    for axis, panel in zip(axes, panels, strict=True):
        horizon = len(panel.truth)
        context = panel.context[-3 * horizon:]
        past, future = np.arange(-len(context), 0), np.arange(horizon)
        axis.plot(past, context, color="black", linewidth=1.0, label="context")
        axis.plot(future, panel.truth, color="black", linestyle="--", linewidth=1.0, label="truth")
        n_levels = len(panel.levels)
        for band in range(n_levels // 2):
            low, high = panel.quantiles[band], panel.quantiles[n_levels - 1 - band]
            width = round((panel.levels[n_levels - 1 - band] - panel.levels[band]) * 100)
            axis.fill_between(future, low, high, color="C0", alpha=0.2 + 0.25 * band, linewidth=0,
                              label=f"{width}% interval")
        if n_levels % 2:
            axis.plot(future, panel.quantiles[n_levels // 2], color="C0", linewidth=1.2, label="median")
        axis.axvline(-0.5, color="grey", linewidth=0.6)
        axis.set(title=plain_text(panel.method), xlabel="steps from the forecast start")
        axis.title.set_fontsize(9)
    axes[0].legend(fontsize=6, loc="upper left")
    figure.suptitle(plain_text(title))
    figure.tight_layout()
    return _save(figure, out)


@dataclass(frozen=True)
class RankDiagram:
    """A critical-difference diagram's numbers (Demšar 2006), as `ranking.AcrossTasks.diagram` hands them over: average
    ranks best first, the Nemenyi critical difference, and the groups of methods within it of each other."""

    title: str  # may hold a line break
    ranks: tuple[tuple[str, float], ...]  # (method, average rank), best (lowest) first
    cd: float
    cliques: tuple[tuple[str, ...], ...]


def rank_figure(diagram: RankDiagram, out: Path) -> Path:
    """Demšar's critical-difference diagram: an axis of average ranks from 1 (best, left) to k, each method's name on
    a line from its rank (the better half to the left, the rest to the right), the CD as a bar above the axis, and a
    thick bar under the axis joining each group of methods whose ranks do not differ significantly."""
    from matplotlib.figure import Figure

    ranks = [rank for _, rank in diagram.ranks]
    low, high = 1, max(len(ranks), int(np.ceil(max(ranks))))
    n_left = (len(ranks) + 1) // 2
    labels = [f"{plain_text(method)} ({rank:.2f})" for method, rank in diagram.ranks]
    side = max(1.4, 0.3 + 0.065 * max(len(label) for label in labels))  # inches for the names on each side, at 8 pt
    width = max(7.5, 2 * side + 3.0)  # at least 3 inches of rank axis between them
    axis_y = 1.05 if "\n" in diagram.title else 0.85  # inches from the top, under the title, CD bar and tick labels
    bars_y = axis_y + 0.22  # the first clique bar
    names_y = bars_y + 0.14 * max(len(diagram.cliques), 1) + 0.1  # the first name line
    height = names_y + 0.26 * n_left + 0.15
    figure = Figure(figsize=(width, height), dpi=DPI)
    axis = figure.add_axes((side / width, 0.0, 1.0 - 2 * side / width, 1.0))  # x in ranks, y in inches from the top
    axis.set_xlim(low, high)
    axis.set_ylim(height, 0.0)
    axis.set_axis_off()
    per_inch = (high - low) / (width - 2 * side)  # ranks per inch along the axis

    def line(xs, ys, **style):
        axis.plot(xs, ys, color=style.pop("color", "black"), linewidth=style.pop("linewidth", 0.8), clip_on=False,
                  solid_capstyle="butt", **style)

    line([low, high], [axis_y, axis_y])
    for tick in np.arange(low, high + 0.25, 0.5):
        whole = float(tick).is_integer()
        line([tick, tick], [axis_y, axis_y - (0.1 if whole else 0.05)])
        if whole:
            axis.text(tick, axis_y - 0.13, f"{tick:g}", ha="center", va="bottom", fontsize=8)
    cd_y = axis_y - 0.45
    line([low, low + diagram.cd], [cd_y, cd_y])
    for end in (low, low + diagram.cd):
        line([end, end], [cd_y - 0.05, cd_y + 0.05])
    axis.text(low + diagram.cd / 2, cd_y - 0.06, f"CD = {diagram.cd:.2f}", ha="center", va="bottom", fontsize=8)
    for index, ((_, rank), label) in enumerate(zip(diagram.ranks, labels, strict=True)):
        left = index < n_left
        y = names_y + 0.26 * (index if left else len(ranks) - 1 - index)
        end = low - 0.15 * per_inch if left else high + 0.15 * per_inch
        line([rank, rank, end], [axis_y, y, y])
        axis.text(end - 0.05 * per_inch if left else end + 0.05 * per_inch, y, label,
                  ha="right" if left else "left", va="center", fontsize=8, clip_on=False)
    positions = dict(diagram.ranks)
    for index, clique in enumerate(diagram.cliques):
        y = bars_y + 0.14 * index
        line([positions[clique[0]] - 0.04 * per_inch, positions[clique[-1]] + 0.04 * per_inch], [y, y], linewidth=3.0)
    figure.suptitle(plain_text(diagram.title), fontsize=9, y=1.0 - 0.06 / height, va="top")
    return _save(figure, out)
