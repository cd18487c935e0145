"""One generic name -> object registry with lazy "module:attr" entries and did-you-mean errors."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Generic, TypeVar

from bnnbench.errors import unknown_choice

__all__ = ["Registry"]

T = TypeVar("T")


@dataclass(frozen=True)
class _Entry:
    target: object  # the object, or a "module:attr" string imported on first use
    summary: str


class Registry(Generic[T]):
    """Maps names to objects; heavy modules are named as "module:attr" so listing imports nothing."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, _Entry] = {}

    def register(self, name: str, target: T | str, summary: str = "") -> None:
        """Add `target` (or a lazy "module:attr" path to it) under `name`."""
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = _Entry(target, summary)

    def get(self, name: str) -> T:
        """The object registered as `name`; raises UsageError with close matches when unknown."""
        entry = self._entries.get(name)
        if entry is None:
            raise unknown_choice(self.kind, name, self._entries)
        if isinstance(entry.target, str) and ":" in entry.target:
            module, attr = entry.target.split(":")
            resolved = getattr(importlib.import_module(module), attr)
            self._entries[name] = _Entry(resolved, entry.summary)
            return resolved
        return entry.target  # type: ignore[return-value]

    def summary(self, name: str) -> str:
        """The one-line description given at registration."""
        self.check(name)
        return self._entries[name].summary

    def check(self, name: str) -> None:
        """Raise the did-you-mean error for an unknown name without importing anything."""
        if name not in self._entries:
            raise unknown_choice(self.kind, name, self._entries)

    def names(self) -> list[str]:
        """All registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
