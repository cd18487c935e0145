"""One generic name -> object registry with lazy "module:attr" entries and did-you-mean errors."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from bnnbench.errors import unknown_choice

__all__ = ["Registry", "import_reference"]

T = TypeVar("T")


@dataclass(frozen=True)
class _Entry:
    target: object  # the object, or a "module:attr" string imported on first use
    summary: str
    origin: Any = None  # where an entry from outside bnnbench comes from (a plugin's distribution); None: built in


def import_reference(reference: str) -> Any:
    """The object a "module:attr" (or "module:attr.inner") reference names; import errors propagate."""
    module, _, attrs = reference.partition(":")
    return functools.reduce(getattr, attrs.split("."), importlib.import_module(module))


class Registry(Generic[T]):
    """Maps names to objects; heavy modules are named as "module:attr" so listing imports nothing.

    `discover(registry)`, when given, runs once before the first lookup (not at construction), so entries found
    elsewhere (installed plugins) cost nothing to a program that never looks a name up.
    """

    def __init__(self, kind: str, discover: Callable[[Registry[T]], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, _Entry] = {}
        self._discover = discover

    def _all(self) -> dict[str, _Entry]:
        if self._discover is not None:
            discover, self._discover = self._discover, None  # once, even if it registers nothing or raises
            discover(self)
        return self._entries

    def register(self, name: str, target: T | str, summary: str = "", origin: Any = None) -> None:
        """Add `target` (or a lazy "module:attr" path to it) under `name`; `origin` says where it comes from
        when it is not bnnbench's own."""
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = _Entry(target, summary, origin)

    def get(self, name: str, where: str = "") -> T:
        """The object registered as `name`; raises UsageError with close matches when unknown (prefixed by
        `where`, e.g. the task file that names it)."""
        entry = self._all().get(name)
        if entry is None:
            raise unknown_choice(self.kind, name, self._entries, where)
        if isinstance(entry.target, str) and ":" in entry.target:
            resolved = import_reference(entry.target)
            self._entries[name] = _Entry(resolved, entry.summary, entry.origin)
            return resolved
        return entry.target  # type: ignore[return-value]

    def summary(self, name: str) -> str:
        """The one-line description given at registration."""
        self.check(name)
        return self._entries[name].summary

    def origin(self, name: str) -> Any:
        """Where the entry comes from, as registered (None for bnnbench's own)."""
        self.check(name)
        return self._entries[name].origin

    def check(self, name: str, where: str = "") -> None:
        """Raise the did-you-mean error for an unknown name without importing anything."""
        if name not in self._all():
            raise unknown_choice(self.kind, name, self._entries, where)

    def names(self) -> list[str]:
        """All registered names, in registration order."""
        return list(self._all())

    def __contains__(self, name: object) -> bool:
        return name in self._all()
