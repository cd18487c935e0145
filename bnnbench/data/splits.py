"""The evaluator's data: validation, clean test, corrupted copies of the test split, and OOD sets.

Corrupted copies come from a published set (CIFAR-10-C files) when the data source offers one and the
task's `eval.corruption_source` allows it ("auto": the files when every corruption asked for is there;
"official": the files or an error; "generated": always bnnbench's own). Generated copies are made once
per (test images, corruption, severity, seed, corruption code) and cached on disk under $BNNBENCH_CACHE
(default ~/.cache/bnnbench), so every method and seed is scored on identical images and later runs skip
the work. They are yielded one at a time so CIFAR-sized sets
(75 copies of the test split) never sit in memory together.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnnbench import atomic
from bnnbench.data import LoadedData
from bnnbench.errors import UsageError, unknown_choice
from bnnbench.types import EvalSplit, Split

__all__ = ["EvalPlan", "cache_dir", "check_eval_config", "corrupted_images", "eval_plan",
           "images_digest"]

CACHE_ENV = "BNNBENCH_CACHE"


def cache_dir() -> Path:
    """Where derived data (corrupted test sets) is cached."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "bnnbench")


def _corruption_names(setting: Any, where: str) -> list[str]:
    from bnnbench.data.corruptions import CORRUPTIONS

    if setting == "all":
        return list(CORRUPTIONS)
    if setting == "none":
        return []
    if not isinstance(setting, list):
        raise UsageError(f"{where}: key 'eval.corruptions' must be \"all\", \"none\" or a list, got {setting!r}")
    for name in setting:
        if name not in CORRUPTIONS:
            raise unknown_choice("corruption in eval.corruptions", name, CORRUPTIONS, where)
    return list(setting)


def _severities(setting: Any, where: str) -> list[int]:
    if not isinstance(setting, list) or not setting or any(s not in (1, 2, 3, 4, 5) for s in setting):
        raise UsageError(f"{where}: key 'eval.severities' must be a list drawn from 1..5, got {setting!r}")
    return list(setting)


CORRUPTION_SOURCES = ("auto", "official", "generated")


def check_eval_config(eval_config: dict[str, Any], where: str) -> None:
    """Raise UsageError for an unknown corruption or source, or a severity outside 1..5."""
    _corruption_names(eval_config.get("corruptions", "none"), where)
    _severities(eval_config.get("severities", [1, 2, 3, 4, 5]), where)
    source = eval_config.get("corruption_source", "auto")
    if source not in CORRUPTION_SOURCES:
        raise unknown_choice("eval.corruption_source", source, CORRUPTION_SOURCES, where)


@cache
def _corruption_code_hash() -> str:
    from bnnbench.data import corruptions

    return hashlib.sha256(Path(corruptions.__file__).read_bytes()).hexdigest()


def images_digest(images: np.ndarray) -> str:
    """sha256 of an image array's bytes and shape: the cache key part that names the test set."""
    return hashlib.sha256(images.tobytes() + str(images.shape).encode()).hexdigest()


def corrupted_images(images: np.ndarray, name: str, severity: int, seed: int, digest: str | None = None) -> np.ndarray:
    """`corrupt(images, name, severity)` with a fixed seed, read from the disk cache when present.

    `digest` is `images_digest(images)`, passed in by callers that corrupt one set many times (a CIFAR
    test set is 30 MB: hashing it 75 times would cost seconds).
    """
    from bnnbench.data.corruptions import CORRUPTIONS, corrupt

    key = hashlib.sha256()
    for part in (digest or images_digest(images), name, str(severity), str(seed), _corruption_code_hash()):
        key.update(part.encode())
    path = cache_dir() / "corruptions" / f"{name}-s{severity}-{key.hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path)
    rng = np.random.default_rng([seed, CORRUPTIONS.index(name), severity])
    result = corrupt(images, name, severity, rng)
    atomic.write_with(path, lambda handle: np.save(handle, result))
    return result


@dataclass(frozen=True)
class EvalPlan:
    """The ordered evaluation splits of a task; iterate to get each `EvalSplit`: val, clean test, each
    corruption x severity of the test split, then each OOD set (split "ood", corruption = its name).

    `corruption_source` is "official" (published files), "generated" or "none" (no corruptions).
    """

    loaded: LoadedData
    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    seed: int
    corruption_source: str = "generated"
    validation_only: bool = False  # `bnnbench tune`: the validation split alone; the test split is never touched

    @property
    def variant(self) -> str:
        """What makes these results incomparable with other runs of the task: official vs generated copies
        of a published corrupted set ("cifar10c-official", "cifar10c-generated"); else "standard"."""
        official = self.loaded.official_corruptions
        if official is None or self.corruption_source == "none":
            return "standard"
        return f"{official.label}-{self.corruption_source}"

    def __len__(self) -> int:
        if self.validation_only:
            return 1
        return 2 + len(self.corruptions) * len(self.severities) + len(self.loaded.ood)

    def __iter__(self) -> Iterator[EvalSplit]:
        yield EvalSplit("val", "none", 0, self.loaded.bundle.val)
        if self.validation_only:
            return
        test = self.loaded.test
        yield EvalSplit("test", "none", 0, test)
        if self.corruptions:
            yield from self._corrupted(test)
        for name, split in self.loaded.ood.items():
            yield EvalSplit("ood", name, 0, split)

    def _corrupted(self, test: Split) -> Iterator[EvalSplit]:
        official = self.loaded.official_corruptions
        if self.corruption_source == "official":
            def read(name: str, severity: int) -> np.ndarray:
                return official.read(name, severity)
        else:
            images = np.round(test.x.permute(0, 2, 3, 1).numpy() * 255.0).astype(np.uint8)
            digest = images_digest(images)

            def read(name: str, severity: int) -> np.ndarray:
                return corrupted_images(images, name, severity, self.seed, digest)
        for name in self.corruptions:
            for severity in self.severities:
                x = torch.from_numpy(read(name, severity)).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
                yield EvalSplit("test", name, severity, Split(x, test.y))


def eval_plan(eval_config: dict[str, Any], loaded: LoadedData, where: str = "task",
              validation_only: bool = False) -> EvalPlan:
    """The splits a task's [eval] table asks for, with the corruption source resolved against the files
    at hand; raises UsageError when "official" files are asked for and some are missing. `validation_only`:
    the validation split alone (what tuning scores)."""
    check_eval_config(eval_config, where)
    corruptions = tuple(_corruption_names(eval_config.get("corruptions", "none"), where))
    wanted = eval_config.get("corruption_source", "auto")
    official = loaded.official_corruptions
    missing = [name for name in corruptions if official is None or name not in official.names]
    if not corruptions:
        source = "none"
    elif wanted == "official" and missing:
        what = f"{official.label} files" if official else "published corrupted files for this data set"
        raise UsageError(f"{where}: eval.corruption_source is \"official\" but {what} are missing for "
                         f"{', '.join(missing)}; get them with `bnnbench data download cifar10c` or set "
                         "eval.corruption_source = \"generated\"")
    else:
        source = "official" if wanted != "generated" and not missing else "generated"
    return EvalPlan(loaded=loaded, corruptions=corruptions,
                    severities=tuple(_severities(eval_config.get("severities", [1, 2, 3, 4, 5]), where)),
                    seed=int(eval_config.get("corruption_seed", 0)), corruption_source=source,
                    validation_only=validation_only)
