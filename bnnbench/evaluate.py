"""The evaluator: one code path that scores every method's predictive on every evaluation split.

For each split it asks the Predictive for S per-sample log-probabilities, forms the mixture
predictive in log space, and calls the metrics registry. Aggregates over corruptions (mean of each
metric over corruption types, per severity and over all severities) are added as rows with
`corruption = "mean"`; severity 0 on such a row means "all severities".
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bnnbench.data.splits import EvalPlan
from bnnbench.likelihoods import mixture_log_predictive
from bnnbench.metrics import METRICS
from bnnbench.train import progress_bar
from bnnbench.types import EvalSplit, Predictive, Split

__all__ = ["Evaluation", "evaluate", "predict_mixture"]


@dataclass
class Evaluation:
    """Metric rows (split, corruption, severity, metric, value), the clean test predictive, seconds."""

    rows: list[dict]
    test_probs: np.ndarray
    test_labels: np.ndarray
    seconds: float


def predict_mixture(predictive: Predictive, data: Split, n_samples: int, batch_size: int,
                    device: torch.device) -> np.ndarray:
    """Mixture predictive log-probabilities (N, C), float64, computed in batches on `device`."""
    parts = []
    with torch.no_grad():
        for begin in range(0, len(data), batch_size):
            x = data.x[begin:begin + batch_size].to(device, non_blocking=True)
            parts.append(mixture_log_predictive(predictive.predict(x, n_samples)).cpu())
    return torch.cat(parts).numpy()


def evaluate(predictive: Predictive, splits: EvalPlan | Sequence[EvalSplit], metric_names: list[str],
             n_samples: int, batch_size: int, device: torch.device, show_progress: bool = True) -> Evaluation:
    """Score `predictive` on each split of `splits`."""
    metrics = [METRICS.get(name) for name in metric_names]
    rows: list[dict] = []
    test_probs = test_labels = None
    start = time.perf_counter()
    with progress_bar(show_progress) as progress:
        bar = progress.add_task("evaluate", total=len(splits), status="")
        for split in splits:
            log_probs = predict_mixture(predictive, split.data, n_samples, batch_size, device)
            labels = split.data.y.numpy()
            for metric in metrics:
                rows.append({"split": split.split, "corruption": split.corruption, "severity": split.severity,
                             "metric": metric.name, "value": metric.fn(log_probs, labels)})
            if (split.split, split.corruption) == ("test", "none"):
                test_probs, test_labels = np.exp(log_probs).astype(np.float32), labels.astype(np.int64)
            progress.update(bar, advance=1, status=f"{split.corruption} {split.severity}")
    rows += _corruption_means(rows)
    return Evaluation(rows, test_probs, test_labels, time.perf_counter() - start)


def _corruption_means(rows: list[dict]) -> list[dict]:
    corrupted = [row for row in rows if row["split"] == "test" and row["corruption"] != "none"]
    if not corrupted:
        return []
    means = []
    metrics = dict.fromkeys(row["metric"] for row in corrupted)
    severities = sorted({row["severity"] for row in corrupted})
    for metric in metrics:
        for severity in [*severities, 0]:
            values = [row["value"] for row in corrupted
                      if row["metric"] == metric and severity in (0, row["severity"])]
            means.append({"split": "test", "corruption": "mean", "severity": severity, "metric": metric,
                          "value": float(np.mean(values))})
    return means
