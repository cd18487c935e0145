"""The files of an HMC reference predictive (`bnnbench reference hmc`): `<task>.v<version>.npz` with its JSON
beside it. Their naming, writer and reader live here, apart from the sampler (`bnnbench.hmc`) that makes them and
the evaluator's side (`bnnbench.reference`) that finds and scores against them, so both use one format."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from bnnbench import atomic
from bnnbench.errors import UsageError
from bnnbench.types import TaskSpec

__all__ = ["FORMAT", "load_reference", "reference_paths", "save_reference", "task_posterior_key"]

FORMAT = 1  # of the saved reference files; bump on any change a reader must know about


def task_posterior_key(task: TaskSpec) -> str:
    """sha256 of everything that decides a task's posterior predictive: likelihood, data, model and prior. A
    reference whose key differs was sampled from another posterior."""
    decisive = {"likelihood": task.likelihood, "likelihood_options": task.likelihood_options, "data": task.data,
                "model": task.model, "posterior": task.posterior}
    return hashlib.sha256(json.dumps(decisive, sort_keys=True, default=str).encode()).hexdigest()


def reference_paths(out_dir: str | Path, task_name: str, task_version: int) -> tuple[Path, Path]:
    """(`<out_dir>/<task>.v<version>.npz`, the `.json` beside it)."""
    stem = f"{task_name}.v{task_version}"
    return Path(out_dir) / f"{stem}.npz", Path(out_dir) / f"{stem}.json"


def save_reference(out_dir: str | Path, task: TaskSpec, arrays: dict[str, np.ndarray],
                   meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write `<out_dir>/<task>.v<version>.npz` (the arrays) and `.json` (meta). Both are written in full under
    temporary names first; then the old JSON goes, the npz is renamed into place and the JSON last, so a JSON on
    disk always describes the npz beside it (a crash between renames leaves an npz without JSON, which
    `load_reference` refuses) and nothing half-written is ever visible."""
    from bnnbench.results import json_safe

    npz_path, json_path = reference_paths(out_dir, task.name, task.version)
    text = json.dumps(json_safe(meta), indent=2, sort_keys=True) + "\n"
    with atomic.staged_file(npz_path, lambda handle: np.savez(handle, **arrays)) as commit_npz, \
            atomic.staged_file(json_path, lambda handle: handle.write(text.encode())) as commit_json:
        json_path.unlink(missing_ok=True)
        commit_npz()
        commit_json()
    return npz_path, json_path


def load_reference(path_npz: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, meta) of a saved reference; raises UsageError for a missing or unreadable pair. Arrays are
    loaded without pickle: a data file must never run code."""
    npz_path = Path(path_npz)
    json_path = npz_path.with_name(npz_path.name.removesuffix(".npz") + ".json")
    try:
        with np.load(npz_path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(json_path.read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read the reference '{npz_path}' and its JSON: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UsageError(f"reference '{json_path}' is not format {FORMAT} (found {meta.get('format')!r})"
                         if isinstance(meta, dict) else f"reference '{json_path}' is not a JSON object")
    return arrays, meta
