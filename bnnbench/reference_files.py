"""The files of an HMC reference predictive (`bnnbench reference hmc`): `<task>.v<version>.npz` with its JSON
beside it, and `<task>.v<version>.draws.npz`, thinned per-draw predictives from which anyone can recompute the
reference's R̂, ESS and split-half resolution. Their naming, writer and reader live here, apart from the sampler
(`bnnbench.hmc`) that makes them and the evaluator's side (`bnnbench.reference`) that finds and scores against them,
so both use one format.

The draws sit in a file of their own because a run's identity holds the sha256 of the scored file (the predictive
a method is compared with): the evidence about that predictive, added or thinned differently, must not make every
result of the task incomparable with its baseline."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from bnnbench import atomic
from bnnbench.errors import UsageError
from bnnbench.types import TaskSpec

__all__ = ["DRAW_ARRAYS", "FORMAT", "draws_path", "load_reference", "load_reference_draws", "reference_paths",
           "recorded_resolution", "reference_resolutions", "save_reference", "task_posterior_key"]

FORMAT = 1  # of the saved reference files; bump on any change a reader must know about


def task_posterior_key(task: TaskSpec) -> str:
    """sha256 of everything that decides a task's posterior predictive: likelihood, data, model and prior. A
    reference whose key differs was sampled from another posterior."""
    decisive = {"likelihood": task.likelihood, "likelihood_options": task.likelihood_options, "data": task.data,
                "model": task.model, "posterior": task.posterior}
    return hashlib.sha256(json.dumps(decisive, sort_keys=True, default=str).encode()).hexdigest()


DRAW_ARRAYS = ("draw_probs", "draw_mean", "draw_var")  # kept in the .draws.npz beside the scored arrays


def reference_paths(out_dir: str | Path, task_name: str, task_version: int) -> tuple[Path, Path]:
    """(`<out_dir>/<task>.v<version>.npz`, the `.json` beside it)."""
    stem = f"{task_name}.v{task_version}"
    return Path(out_dir) / f"{stem}.npz", Path(out_dir) / f"{stem}.json"


def draws_path(npz_path: str | Path) -> Path:
    """The `.draws.npz` beside a reference's `.npz`."""
    return Path(npz_path).with_name(Path(npz_path).name.removesuffix(".npz") + ".draws.npz")


def load_reference_draws(npz_path: str | Path) -> dict[str, np.ndarray]:
    """The thinned per-draw predictives beside a reference (without pickle); UsageError when there are none."""
    path = draws_path(npz_path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read the reference's draws '{path}': {error}") from None


def save_reference(out_dir: str | Path, task: TaskSpec, arrays: dict[str, np.ndarray],
                   meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write `<out_dir>/<task>.v<version>.npz` (the arrays) and `.json` (meta). Both are written in full under
    temporary names first; then the old JSON goes, the npz is renamed into place and the JSON last, so a JSON on
    disk always describes the npz beside it (a crash between renames leaves an npz without JSON, which
    `load_reference` refuses) and nothing half-written is ever visible."""
    from bnnbench.results import json_safe

    npz_path, json_path = reference_paths(out_dir, task.name, task.version)
    text = json.dumps(json_safe(meta), indent=2, sort_keys=True) + "\n"
    draws = {name: array for name, array in arrays.items() if name in DRAW_ARRAYS}
    scored = {name: array for name, array in arrays.items() if name not in DRAW_ARRAYS}
    with atomic.staged_file(npz_path, lambda handle: np.savez(handle, **scored)) as commit_npz, \
            atomic.staged_file(draws_path(npz_path), lambda handle: np.savez(handle, **draws)) as commit_draws, \
            atomic.staged_file(json_path, lambda handle: handle.write(text.encode())) as commit_json:
        json_path.unlink(missing_ok=True)
        draws_path(npz_path).unlink(missing_ok=True)
        commit_npz()
        if draws:
            commit_draws()
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


def recorded_resolution(record: Any) -> dict[str, float] | None:
    """{measure: resolution} (`tv`, `agreement` or `w2`) of the HMC reference a run's `hmc_reference` record names:
    the record's own copy, or, for runs written before references carried one, the JSON beside the recorded file
    when that file is still the one the run scored against (same sha256). None when neither says."""
    if not isinstance(record, dict):
        return None
    found = record.get("resolution")
    if not isinstance(found, dict):
        npz_path = Path(str(record.get("path", "")))
        try:
            if hashlib.sha256(npz_path.read_bytes()).hexdigest() != record.get("sha256"):
                return None
            found = json.loads(npz_path.with_name(npz_path.name.removesuffix(".npz") + ".json").read_text())
        except (OSError, ValueError):
            return None
        found = found.get("resolution") if isinstance(found, dict) else None
    if not isinstance(found, dict):
        return None
    return {key: float(value) for key, value in found.items() if key in ("tv", "agreement", "w2")
            and isinstance(value, int | float)}


def reference_resolutions(runs) -> dict[tuple, dict[str, float]]:
    """{(task, version, variant): {measure: resolution}} of the fidelity tasks among `runs` (`load_results`' runs
    frame) whose runs name their HMC reference: what `comparison.leaderboard` takes as `resolution`."""
    from bnnbench.comparison import TASK_KEY, with_variant

    if "hmc_reference" not in runs:
        return {}
    found = {}
    for key, rows in with_variant(runs).groupby(TASK_KEY):
        resolution = next((value for value in map(recorded_resolution, rows["hmc_reference"]) if value), None)
        if resolution:
            found[key] = resolution
    return found
