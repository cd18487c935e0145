"""`bnnbench data download`: fetch a data set's official files, check the publisher's MD5 sum, unpack.

A data set is one file or several (Oxford-IIIT Pets ships its images and annotations apart, Flowers-102 a JPEG
archive and two .mat files); each is fetched, checked and put in place on its own, so a retry fetches only what is
still missing. Archives are extracted next to the target first and moved into place with `os.replace`, so an
interrupted download never leaves a half-written data set that later reads would accept.
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

__all__ = ["ARCHIVES", "Archive", "DataSetFiles", "download", "parts"]

# ------------------------------------------------------------------------------------------- downloads


@dataclass(frozen=True)
class Archive:
    """A file to fetch: `filename` is its name under root/.download while in transit; `extracts_to` is the
    path relative to the data root it ends up as: for a tar, the folder `folder_in_archive` it holds (by default
    a folder of that same path), otherwise the file itself."""

    url: str
    md5: str
    filename: str
    extracts_to: str
    folder_in_archive: str = ""


# One data set: its one file, or the several files that make it up, each put in place on its own.
DataSetFiles = Archive | tuple[Archive, ...]

_VGG = "https://www.robots.ox.ac.uk/~vgg/data"
ARCHIVES: dict[str, DataSetFiles] = {
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
    # The fine-grained sets land where torchvision's download puts them (bnnbench.data.finegrained reads them there).
    # URLs and md5s from torchvision/datasets/oxford_iiit_pet.py (OxfordIIITPet._RESOURCES, torchvision 0.29); both
    # archives unpack into oxford-iiit-pet/.
    "pets": (Archive(f"{_VGG}/pets/data/images.tar.gz", "5c4f3ee8e5d25df40f4fd59a7f44e54c", "images.tar.gz",
                     "oxford-iiit-pet/images", "images"),
             Archive(f"{_VGG}/pets/data/annotations.tar.gz", "95a8c909bbe2e81eed6a22bccdf3f68f",
                     "annotations.tar.gz", "oxford-iiit-pet/annotations", "annotations")),
    # URLs and md5s from torchvision/datasets/flowers102.py (Flowers102._download_url_prefix and _file_dict).
    "flowers": (Archive(f"{_VGG}/flowers/102/102flowers.tgz", "52808999861908f626f3c1f4e79d11fa", "102flowers.tgz",
                        "flowers-102/jpg", "jpg"),
                Archive(f"{_VGG}/flowers/102/imagelabels.mat", "e0620be6f572b9609742df49c70aed4d", "imagelabels.mat",
                        "flowers-102/imagelabels.mat"),
                Archive(f"{_VGG}/flowers/102/setid.mat", "a5357ecc9cb78c4bef273ce3793fc85c", "setid.mat",
                        "flowers-102/setid.mat")),
    # URL from torchvision/datasets/fgvc_aircraft.py (FGVCAircraft._URL). torchvision checks no md5 for it: this one is
    # the sum that public loaders which check the archive agree on (e.g. the R torchvision port's
    # fgvc_aircraft_dataset); not checked here against the publisher's own page (archives/fgvc-aircraft-2013b.html).
    "aircraft": Archive(f"{_VGG}/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                        "d4acdd33327262359767eeaa97a4f732", "fgvc-aircraft-2013b.tar.gz", "fgvc-aircraft-2013b"),
    # URL and md5 from torchvision/datasets/dtd.py (DTD._URL, DTD._MD5); torchvision unpacks the archive's dtd/ folder
    # into a folder dtd, hence dtd/dtd.
    "dtd": Archive(f"{_VGG}/dtd/download/dtd-r1.0.1.tar.gz", "fff73e5086ae6bdbea199a49dfb8a4c1", "dtd-r1.0.1.tar.gz",
                   "dtd/dtd", "dtd"),
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


def _fetch(name: str, archive: Archive, dest: Path, progress: bool) -> None:
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
        raise UsageError(f"cannot download {archive.url}: {reason}; on a machine without network, copy that file "
                         f"to {dest} yourself and run `bnnbench data download {name}` again") from None


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
        folder = archive.folder_in_archive or archive.extracts_to
        extracted = tmp / folder
        if not extracted.is_dir():
            raise UsageError(f"{archive_path}: holds no folder {folder!r}")
        os.replace(extracted, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parts(files: DataSetFiles) -> tuple[Archive, ...]:
    """The files of one data set, one or several."""
    return (files,) if isinstance(files, Archive) else files


def download(name: str, root: Path, *, archives: Mapping[str, DataSetFiles] = ARCHIVES, progress: bool = True,
             ) -> Path:
    """Fetch data set `name` under `root` (each file checked against its md5) and return its path there: the
    file or folder of a one-file set, the folder that holds all the parts of one of several files.

    Parts already present are left untouched, without network. A file already at root/.download/FILENAME (copied
    there by hand on a machine without network) is used instead of fetching, once its md5 matches. A part that
    fails does not stop the others; the error then has one line per failed part.
    """
    if name not in archives:
        raise unknown_choice("data set to download", name, archives)
    files = parts(archives[name])
    root = Path(root)
    failures = []
    for archive in files:
        try:
            _download_part(name, archive, root, progress)
        except UsageError as error:
            failures.append(str(error))
    if failures:
        raise UsageError("\n".join(failures))
    return root / os.path.commonpath([archive.extracts_to for archive in files])


def _download_part(name: str, archive: Archive, root: Path, progress: bool) -> None:
    target = root / archive.extracts_to
    if target.exists():
        return
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
            _fetch(name, archive, dest, progress)
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
