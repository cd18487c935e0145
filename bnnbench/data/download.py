"""`bnnbench data download`: fetch a data set's official files, check the publisher's MD5 sum, unpack.

Archives are extracted next to the target first and moved into place with `os.replace`, so an interrupted
download never leaves a half-written data set that later reads would accept.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from bnnbench import atomic
from bnnbench.errors import UsageError, unknown_choice

__all__ = ["ARCHIVES", "Archive", "download"]

# ------------------------------------------------------------------------------------------- downloads


@dataclass(frozen=True)
class Archive:
    """A file to fetch: `filename` is its name under root/.download while in transit; `extracts_to` is the
    path relative to the data root it ends up as (the folder a tar holds, or the file itself otherwise)."""

    url: str
    md5: str
    filename: str
    extracts_to: str


ARCHIVES: dict[str, Archive] = {
    # md5 as published on https://www.cs.toronto.edu/~kriz/cifar.html ("CIFAR-10 python version") and in
    # torchvision/datasets/cifar.py (CIFAR10.tgz_md5, torchvision 0.29).
    "cifar10": Archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                       "c58f30108f718f92721af3b95e74349a", "cifar-10-python.tar.gz", "cifar-10-batches-py"),
    # md5 from https://www.cs.toronto.edu/~kriz/cifar.html ("CIFAR-100 python version") and
    # torchvision/datasets/cifar.py (CIFAR100.tgz_md5).
    "cifar100": Archive("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                        "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python.tar.gz", "cifar-100-python"),
    # md5 as listed on the Zenodo record (https://zenodo.org/records/2535967, v1, CIFAR-10-C.tar, 2.9 GB) and
    # used by public CIFAR-10-C loaders (e.g. the C10C/CIFAR10C VisionDataset classes that download it).
    "cifar10c": Archive("https://zenodo.org/records/2535967/files/CIFAR-10-C.tar?download=1",
                        "56bf5dcef84df0e2308c6dcbcbbd8499", "CIFAR-10-C.tar", "CIFAR-10-C"),
    # Not an archive: the .mat file itself. md5 from torchvision/datasets/svhn.py (SVHN.split_list["test"]).
    "svhn": Archive("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
                    "eb5a983be6a315427106f1b164d9cef3", "test_32x32.mat", "svhn/test_32x32.mat"),
}

_CHUNK = 1 << 20
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _progress_bar(label: str, total: int | None, show: bool) -> Iterator[Callable[[int], None]]:
    """A function to report bytes received; draws a rich bar on stderr when `show`, else does nothing."""
    if not show:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)


def _fetch(archive: Archive, dest: Path, progress: bool) -> None:
    """Stream `archive.url` to `dest`, hashing as it arrives; `dest` appears only once its md5 matches."""

    def stream(out: BinaryIO) -> None:
        digest = hashlib.md5(usedforsecurity=False)
        with urllib.request.urlopen(archive.url, timeout=60) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with _progress_bar(archive.filename, total, progress) as advance:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    advance(len(chunk))
        got = digest.hexdigest()
        if got != archive.md5:  # raised inside the write, so the temporary file goes with it
            raise UsageError(f"{archive.url}: md5 checksum mismatch (expected {archive.md5}, got {got}); the "
                             f"download was deleted, try again")

    try:
        atomic.write_with(dest, stream)
    except (OSError, http.client.HTTPException) as error:  # URLError and socket errors are OSErrors
        if isinstance(error, urllib.error.HTTPError):
            reason: object = f"HTTP {error.code} {error.reason}"
        else:
            reason = error.reason if isinstance(error, urllib.error.URLError) else error
        raise UsageError(f"cannot download {archive.url}: {reason}; on a machine without network, copy the file "
                         f"to {dest} yourself") from None


def _check_members(tar: tarfile.TarFile, path: Path) -> list[tarfile.TarInfo]:
    """The archive's members, refusing any that would land outside the extraction folder."""
    members = tar.getmembers()
    for member in members:
        parts = PurePosixPath(member.name).parts
        if member.name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", member.name) or ".." in parts:
            raise UsageError(f"{path}: refusing to extract member {member.name!r} (absolute path or '..')")
        # Without tarfile's "data" filter (Python < 3.10.12 / 3.11.4) links are not checked: refuse them.
        if not hasattr(tarfile, "data_filter") and not (member.isfile() or member.isdir()):
            raise UsageError(f"{path}: refusing to extract member {member.name!r} (not a plain file or folder)")
    return members


def _data_filter_under_umask(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    """tarfile's "data" filter, with file modes masked by the umask as `tar` does for an ordinary user."""
    member = tarfile.data_filter(member, path)
    return member if member.mode is None else member.replace(mode=member.mode & ~atomic.umask(), deep=False)


def _extract(archive_path: Path, archive: Archive, target: Path) -> None:
    """Unpack into a staging folder beside `target`, then move `extracts_to` into place in one rename."""
    tmp = atomic.staging_directory(target)
    try:
        try:
            with tarfile.open(archive_path, "r:*") as tar:
                members = _check_members(tar, archive_path)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter=_data_filter_under_umask)
                else:
                    tar.extractall(tmp, members=members)  # members checked above
        except tarfile.TarError as error:
            raise UsageError(f"{archive_path}: cannot extract ({error})") from None
        extracted = tmp / archive.extracts_to
        if not extracted.is_dir():
            raise UsageError(f"{archive_path}: holds no folder {archive.extracts_to!r}")
        os.replace(extracted, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download(name: str, root: Path, *, archives: Mapping[str, Archive] = ARCHIVES, progress: bool = True) -> Path:
    """Fetch data set `name` under `root` (checked against its md5) and return its path there.

    A target already present is returned untouched, without network. A file already at
    root/.download/FILENAME (copied there by hand on a machine without network) is used instead of
    fetching, once its md5 matches.
    """
    if name not in archives:
        raise unknown_choice("data set to download", name, archives)
    archive = archives[name]
    root = Path(root)
    target = root / archive.extracts_to
    if target.exists():
        return target
    staging = root / ".download"
    staging.mkdir(parents=True, exist_ok=True)
    dest = staging / archive.filename
    try:
        if dest.is_file():
            got = _md5(dest)
            if got != archive.md5:  # someone else's file: report it rather than delete it
                raise UsageError(f"{dest}: md5 checksum mismatch (expected {archive.md5}, got {got}); it is not "
                                 f"the official {archive.filename}: delete or replace it")
        else:
            _fetch(archive, dest, progress)
        # On failure the verified file stays in .download, so a retry (after freeing disk space, say) needs
        # no network; on success it has served its purpose.
        if archive.filename.endswith(_TAR_SUFFIXES):
            _extract(dest, archive, target)
            dest.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(dest, target)
    finally:
        with suppress(OSError):  # not empty: a kept file, or another download in flight
            staging.rmdir()
    return target
