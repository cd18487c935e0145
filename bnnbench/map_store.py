"""The MAP checkpoint store: a MAP trained once is reused by every run that would train the same one.

Laplace (all four), SWAG's warm start and temperature scaling fit on a MAP, and a study of such a method trains
the same MAP in every trial. `train_map` asks the store first. The key is a content address: a sha256 over
everything the trained weights depend on, the task's tables (`scope`, set by the runner: task name and version,
its data, model and train tables, bnnbench's and torch's versions, the device and its thread count, which change
float results), the model's class and initial weights and buffers, the training rows, the training settings and
budget, the prior and temperature, the seed and the global random state at the start (dropout draws from it).
Two runs that reach `train_map` with the same key would train bit-equal weights, so a hit loads them, and the
global random state as training left it, and the run goes on exactly as if it had trained.

Files: `<dir>/<key>.pt` (the state dict and random states, written atomically, read with
`torch.load(weights_only=True)` and nothing else: a store is data, never code) and `<key>.json` (what was trained,
the loop's record and the seconds it took). A run records each lookup in run.json (`map_store`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnnbench import atomic

__all__ = ["MapStore", "STORE_DIRECTORY"]

STORE_DIRECTORY = "map-store"  # under a results directory
FORMAT = 1


def _digest_tensors(digest: Any, tensors: dict[str, torch.Tensor]) -> None:
    for name, value in tensors.items():
        value = value.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}\0".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")


def _random_states(device: torch.device) -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


@dataclass
class MapStore:
    """A store directory and the scope the runner gives it (see the module docstring); `events` is what this
    run's lookups did, for run.json."""

    directory: Path
    scope: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)

    def key(self, model: nn.Module, train: Any, config: Any, budget: Any, prior: str, temperature: float,
            seed: int, device: torch.device) -> str:
        """The content address of one MAP training (None-free: every argument enters)."""
        digest = hashlib.sha256()
        settings = {"format": FORMAT, "scope": self.scope, "model": type(model).__qualname__,
                    "config": dataclasses.asdict(config), "budget": dataclasses.asdict(budget), "prior": prior,
                    "temperature": temperature, "seed": seed, "device": str(device),
                    "threads": torch.get_num_threads()}
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
        _digest_tensors(digest, dict(model.state_dict()))
        _digest_tensors(digest, {"x": train.x, "y": train.y})
        _digest_tensors(digest, _random_states(device))
        return digest.hexdigest()

    def load(self, key: str, model: nn.Module, device: torch.device) -> dict[str, Any] | None:
        """On a hit, the stored weights into `model`, the random states restored, and the stored record returned;
        None on a miss (or a file that does not read back, which is trained again and replaced)."""
        weights, meta = self.directory / f"{key}.pt", self.directory / f"{key}.json"
        if not (weights.is_file() and meta.is_file()):
            return None
        start = time.perf_counter()
        try:
            record = json.loads(meta.read_text())
            saved = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(saved["state"])
        except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError):  # incl. anything not plain data
            return None
        torch.set_rng_state(saved["random"]["cpu"])
        if "cuda" in saved["random"] and device.type == "cuda":
            torch.cuda.set_rng_state(saved["random"]["cuda"], device)
        self.events.append({"key": key, "reused": True, "train_seconds": record["seconds"],
                            "load_seconds": time.perf_counter() - start, "description": record["description"]})
        return record

    def save(self, key: str, model: nn.Module, device: torch.device, record: dict[str, Any]) -> None:
        """The trained weights and the random states after training, then the record (the pair is complete once
        the record exists: `load` needs both)."""
        buffer = io.BytesIO()
        state = {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}
        torch.save({"state": state, "random": _random_states(device)}, buffer)
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(self.directory / f"{key}.pt", buffer.getvalue())
        atomic.write_text(self.directory / f"{key}.json", json.dumps(record, indent=1) + "\n")
        self.events.append({"key": key, "reused": False, "train_seconds": record["seconds"],
                            "description": record["description"]})
