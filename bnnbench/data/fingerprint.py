"""The identity of the data files a run reads: a sha256 over their names and contents.

It goes into run.json and into the run id's hash, so a run on other files (a re-downloaded CIFAR-10-C, an
edited LTSF CSV) is another experiment with another id, never a silent replacement of the first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["fingerprint"]

CHUNK = 1 << 20


@cache
def _content_digest(path: str, size: int, mtime_ns: int) -> str:  # size and mtime key the cache, not the hash
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, computed once per process for an unchanged file."""
    status = Path(path).stat()
    return _content_digest(str(Path(path).resolve()), status.st_size, status.st_mtime_ns)


def fingerprint(paths: Iterable[Path], root: Path) -> dict[str, Any]:
    """{'sha256': digest over (name under root, content digest) of every file, 'files': how many}; names are
    relative to the data root, so the same files under another root give the same fingerprint."""
    root = Path(root).resolve()
    entries = sorted((_name(Path(path).resolve(), root), file_digest(path)) for path in paths)
    digest = hashlib.sha256()
    for name, content in entries:
        digest.update(f"{name}\0{content}\n".encode())
    return {"sha256": digest.hexdigest(), "files": len(entries)}


def _name(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else path.name
