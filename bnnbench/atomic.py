"""Atomic writes: a file or directory appears under its name whole or not at all, with the mode a plain `open` or
`mkdir` would give it under the process umask.

Temporary files and staging directories are hidden siblings of their target, named `.NAME.PID-MACHINE.RANDOM`, so
the next write of NAME removes what a killed writer left there; a writer that still runs, or runs on another
machine or in another PID namespace (where its pid means nothing here), is left alone. Nothing is fsynced, as
before this module: a write survives a killed process, not a power cut.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import cache
from pathlib import Path
from typing import IO

__all__ = ["replace_directory", "staged_file", "staging_directory", "umask", "write_bytes", "write_directory",
           "write_text", "write_with"]

_LEFT = re.compile(r"(?:old\.)?(?P<pid>\d+)-(?P<machine>[0-9a-f]{8})\.[a-z0-9_]{8}")  # after ".NAME."


def umask() -> int:
    """The process umask, read from /proc where it can be: `os.umask` can only read it by changing it for a
    moment, and a file another thread creates in that moment gets the wrong mode."""
    with suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o077)  # what another thread creates meanwhile comes out private rather than world-writable
    os.umask(old)
    return old


@cache
def _machine() -> str:
    """Eight hex digits naming this host and PID namespace: where a staging name's pid can be checked."""
    namespace = ""
    with suppress(OSError):
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    return hashlib.sha256(f"{os.uname().nodename}:{namespace}".encode()).hexdigest()[:8]


def _prefix(path: Path, kind: str = "") -> str:
    return f".{path.name}.{kind}{os.getpid()}-{_machine()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process, alive
        return True
    return True


def _remove_stale(path: Path) -> None:
    """Delete the temporary files and staging directories that writers of `path` on this machine, now dead,
    left beside it."""
    start = f".{path.name}."
    try:
        with os.scandir(path.parent) as entries:
            names = [entry.name for entry in entries if entry.name.startswith(start)]
    except OSError:
        return
    for name in names:
        match = _LEFT.fullmatch(name[len(start):])
        if match is None or match["machine"] != _machine() or _alive(int(match["pid"])):
            continue
        stale = path.parent / name
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextmanager
def staged_file(path: Path, write: Callable[[IO[bytes]], object]) -> Iterator[Callable[[], None]]:
    """A hidden temporary file beside `path` holding what `write(handle)` wrote; the context gives the function
    that renames it to `path`, and the file is removed on leaving if that was not called."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    descriptor, name = tempfile.mkstemp(prefix=_prefix(path), dir=path.parent)
    temporary = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~umask())  # mkstemp's own mode is 0600
            write(handle)
        yield lambda: os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_with(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Atomically replace `path` by what `write(binary_handle)` writes (`np.save`, `np.savez`, a stream)."""
    with staged_file(path, write) as commit:
        commit()


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically replace `path` by `data`."""
    write_with(path, lambda handle: handle.write(data))


def write_text(path: Path, text: str) -> None:
    """Atomically replace `path` by `text` in UTF-8."""
    write_bytes(path, text.encode("utf-8"))


def staging_directory(path: Path) -> Path:
    """A new empty hidden directory beside `path`, with the mode `mkdir` would give, to build `path`'s new content
    in; what dead writers of `path` left is cleared first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _restore_interrupted(path)  # before the clearing, which would delete a run set aside by a killed writer
    _remove_stale(path)
    staging = Path(tempfile.mkdtemp(prefix=_prefix(path), dir=path.parent))
    staging.chmod(0o777 & ~umask())  # mkdtemp's own mode is 0700
    return staging


@contextmanager
def write_directory(directory: Path) -> Iterator[Path]:
    """A staging directory to fill; leaving the context replaces `directory` by it whole (`replace_directory`),
    and an error removes it instead."""
    staging = staging_directory(directory)
    try:
        yield staging
        replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


_RENAME_EXCHANGE = 2  # linux/fs.h: swap two paths atomically


@cache
def _renameat2():
    """glibc's renameat2 (Linux 3.15+, glibc 2.28+), or None where the C library lacks it."""
    import ctypes
    import ctypes.util

    try:
        function = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic rename; False where the system or filesystem cannot."""
    import ctypes

    function = _renameat2()
    if function is None:
        return False
    at_fdcwd = -100
    if function(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def replace_directory(staging: Path, directory: Path) -> None:
    """Move the finished `staging` directory to `directory` (a sibling) in one atomic rename, then drop what it
    replaced: readers see the old content or the new, never neither and never a mix, even if the process is
    killed at any point, and concurrent writers of the same directory each land whole (the last one wins).

    A directory cannot be renamed over a non-empty one, so an existing one is swapped with the staging
    directory (renameat2 RENAME_EXCHANGE) and the old content, now under the hidden staging name, is deleted.
    Where the filesystem cannot exchange, the old directory is set aside first; a kill between the two renames
    then leaves it under `.NAME.old.*`, which the next write of NAME restores (`_restore_interrupted`)."""
    directory, staging = Path(directory), Path(staging)
    _restore_interrupted(directory)
    while True:
        if directory.exists():
            if _exchange(staging, directory):
                shutil.rmtree(staging, ignore_errors=True)
                return
            retired = Path(tempfile.mkdtemp(prefix=_prefix(directory, "old."), dir=directory.parent))
            try:
                os.replace(directory, retired / "old")
            except FileNotFoundError:  # another writer moved it first: try again
                retired.rmdir()
                continue
            try:
                os.replace(staging, directory)
            except OSError:  # another writer landed in between: put ours aside, theirs stays
                shutil.rmtree(retired, ignore_errors=True)
                continue
            shutil.rmtree(retired, ignore_errors=True)
            return
        try:
            os.replace(staging, directory)
            return
        except OSError as error:  # a concurrent writer created it since the check: exchange with theirs
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise


def _restore_interrupted(directory: Path) -> None:
    """Put back a directory that a killed two-rename replacement left aside (see `replace_directory`)."""
    if directory.exists():
        return
    for retired in sorted(directory.parent.glob(f".{directory.name}.old.*/old")):
        try:
            os.replace(retired, directory)
        except OSError:
            continue
        shutil.rmtree(retired.parent, ignore_errors=True)
        return
