"""Four fine-grained image sets in their publishers' layouts: Oxford-IIIT Pets, Oxford Flowers-102, FGVC-Aircraft
(its 100 variants) and the Describable Textures Dataset (DTD), one module for the four sources (`Config.source`).

Files are read under the data root in the folders torchvision's download makes, so a torchvision copy works
unchanged: `oxford-iiit-pet/{images,annotations}`, `flowers-102/{jpg,imagelabels.mat,setid.mat}`,
`fgvc-aircraft-2013b/data` and `dtd/dtd/{images,labels}` (torchvision unpacks DTD's archive, whose top folder is
`dtd`, into a folder `dtd`); `bnnbench data download NAME` fetches them. The split lists are read by torchvision's
dataset classes (`download=False`), so labels and splits mean what they mean to the protocol's code; Flowers-102's
class refuses .mat files other than the publisher's bytes (md5), so its two .mat files are read here, in a child
process (`files._read_mat_in_child`).

Protocol (BayesDLL, the score-VI authors' library, `datasets.prepare`): the publisher's training and validation
images are pooled (Pets ships them pooled, as `trainval`), `val_fraction` of the pool (half by default) is held out
as validation, and the official test split is the test split. BayesDLL draws the holdout with `random_split`;
bnnbench stratifies it by class, as for CIFAR, fixed by `split_seed` alone. Every image of every split goes through
the protocol's test transform, Resize(`resize`) of the shorter side (bilinear, PIL) then CenterCrop(`image_size`),
and is stored in [0, 1] as (N, 3, image_size, image_size); training augmentation happens later, on the device.
Images are decoded with PIL only, converted to RGB (the sets hold greyscale and CMYK JPEGs), in a thread pool.

The data's fingerprint covers the split and label files and every image read: hashing the ~10,000 images (0.3 to
2.8 GB per set) takes a second or two after loading has brought them into the page cache, and a re-encoded or
replaced image changes the data.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnnbench.data import LoadedData
from bnnbench.data import files as data_files
from bnnbench.data.cifar import stratified_holdout
from bnnbench.errors import UsageError, error_line
from bnnbench.types import DataBundle, Split

__all__ = ["SOURCES", "Config", "load", "shapes", "source_files"]


@dataclass(frozen=True)
class FineGrainedSet:
    """What bnnbench knows of one set before reading it: its folder under the data root (torchvision's name), its
    class count, the publisher's splits pooled for training and validation, and how a missing file is fixed."""

    folder: str
    classes: int
    pooled_splits: tuple[str, ...]
    what: str  # for `files.missing_file`: what to put under the data root


SOURCES = {
    "pets": FineGrainedSet("oxford-iiit-pet", 37, ("trainval",),
                           "the official oxford-iiit-pet folder (images/ and annotations/)"),
    "flowers": FineGrainedSet("flowers-102", 102, ("train", "val"),
                              "the official flowers-102 folder (jpg/, imagelabels.mat, setid.mat)"),
    "aircraft": FineGrainedSet("fgvc-aircraft-2013b", 100, ("train", "val"),
                               "the official fgvc-aircraft-2013b folder"),
    "dtd": FineGrainedSet("dtd/dtd", 47, ("train", "val"),
                          "the official dtd folder (images/ and labels/) inside a folder named dtd"),
}
DTD_PARTITIONS = range(1, 11)  # the publisher's ten train/val/test partitions of the same images
_SEED_LIMIT = 2**32  # scikit-learn's random_state takes 0 .. 2**32 - 1


@dataclass(frozen=True)
class Config:
    """`source` is pets, flowers, aircraft or dtd; `partition` (1..10) picks DTD's split files and must stay 1 for
    the other sets, which have one partition."""

    source: str = "pets"
    image_size: int = 224
    resize: int = 256  # shorter side before the centre crop
    val_fraction: float = 0.5  # of the pooled training and validation images
    split_seed: int = 0
    partition: int = 1

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown source '{self.source}'; valid choices: {', '.join(SOURCES)}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {self.image_size}")
        if self.resize < self.image_size:  # a crop larger than the image would pad it with black
            raise ValueError(f"resize must be at least image_size ({self.image_size}), got {self.resize}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.split_seed < _SEED_LIMIT:
            raise ValueError(f"split_seed must be in [0, 2**32), got {self.split_seed}")
        if self.partition not in DTD_PARTITIONS:
            raise ValueError(f"partition must be one of 1..10, got {self.partition}")
        if self.source != "dtd" and self.partition != 1:
            raise ValueError(f"partition applies to dtd only (its ten split files); {self.source} has one, "
                             f"got partition = {self.partition}")


@dataclass(frozen=True, eq=False)
class _Listing:
    """One publisher split: image paths, int64 labels in 0..classes-1, and the file that lists them."""

    images: list[Path]
    labels: np.ndarray
    listed_in: Path


# ------------------------------------------------------------------------------------------ split lists


def _require(root: Path, config: Config, *paths: Path) -> None:
    """One line naming the first of `paths` that is missing (the set's folder first, so an absent set says so)."""
    source = SOURCES[config.source]
    for path in (root / source.folder, *paths):
        if not path.exists():
            raise data_files.missing_file(path, root, config.source, source.what)


def _from_torchvision(make: Callable[[], Any], listed_in: Path, images_attribute: str) -> tuple[Any, _Listing]:
    """A torchvision dataset and its split as a `_Listing`. torchvision keeps a split's image paths and labels in
    private attributes (`_images` or `_image_files`, and `_labels`, in torchvision 0.29): a torchvision that
    renamed them is reported as such rather than read wrongly."""
    try:
        dataset = make()
    except KeyError as error:  # FGVC-Aircraft: a variant that variants.txt does not name
        raise UsageError(f"{listed_in}: names class {error.args[0]!r}, which is not one of the set's classes") from None
    except (OSError, ValueError, IndexError, RuntimeError) as error:  # a malformed line, an unreadable file
        raise UsageError(f"{listed_in}: not a split file of this set ({error_line(error)})") from None
    if not (hasattr(dataset, images_attribute) and hasattr(dataset, "_labels")):
        import torchvision

        raise RuntimeError(f"torchvision {torchvision.__version__}'s {type(dataset).__name__} has no "
                           f"{images_attribute} or _labels, which bnnbench reads its split lists from")
    images = [Path(path) for path in getattr(dataset, images_attribute)]
    return dataset, _Listing(images, np.asarray(dataset._labels, dtype=np.int64).reshape(len(images)), listed_in)


def _pets(config: Config, root: Path) -> dict[str, _Listing]:
    from torchvision.datasets import OxfordIIITPet

    folder = root / SOURCES["pets"].folder
    annotations = {split: folder / "annotations" / f"{split}.txt" for split in ("trainval", "test")}
    _require(root, config, folder / "images", *annotations.values())
    return {split: _from_torchvision(lambda split=split: OxfordIIITPet(root, split=split), path, "_images")[1]
            for split, path in annotations.items()}


def _aircraft(config: Config, root: Path) -> dict[str, _Listing]:
    from torchvision.datasets import FGVCAircraft

    data = root / SOURCES["aircraft"].folder / "data"
    lists = {split: data / f"images_variant_{split}.txt" for split in ("train", "val", "test")}
    variants = data / "variants.txt"
    _require(root, config, data / "images", variants, *lists.values())
    listings = {}
    for split, path in lists.items():
        dataset, listings[split] = _from_torchvision(
            lambda split=split: FGVCAircraft(root, split=split, annotation_level="variant"), path, "_image_files")
        if len(dataset.classes) != SOURCES["aircraft"].classes:
            raise UsageError(f"{variants}: {len(dataset.classes)} variants, where FGVC-Aircraft has "
                             f"{SOURCES['aircraft'].classes}")
    return listings


def _dtd(config: Config, root: Path) -> dict[str, _Listing]:
    from torchvision.datasets import DTD

    data = root / SOURCES["dtd"].folder
    lists = {split: data / "labels" / f"{split}{config.partition}.txt" for split in ("train", "val", "test")}
    _require(root, config, data / "images", *lists.values())
    listings = {}
    for split, path in lists.items():
        dataset, listings[split] = _from_torchvision(
            lambda split=split: DTD(root, split=split, partition=config.partition), path, "_image_files")
        # torchvision numbers the classes a split file names, in sorted order: the labels of two splits mean the
        # same only when each split names all 47
        if len(dataset.classes) != SOURCES["dtd"].classes:
            raise UsageError(f"{path}: names {len(dataset.classes)} classes, where DTD has {SOURCES['dtd'].classes} "
                             f"in every split")
    return listings


def _mat_integers(path: Path, name: str, array: np.ndarray, low: int, high: int) -> np.ndarray:
    """A .mat variable as int64 values in low..high (MATLAB may store whole numbers as doubles)."""
    values = array.reshape(-1)
    if values.dtype.kind not in "iuf" or not np.array_equal(values, np.round(values)):
        raise UsageError(f"{path}: {name!r} must hold whole numbers, got {values.dtype} {array.shape}")
    if values.size and (values.min() < low or values.max() > high):
        raise UsageError(f"{path}: {name!r} must lie in {low}..{high}, found {values.min():g}..{values.max():g}")
    return values.astype(np.int64)


@cache
def _cached_mat(path: str, size: int, mtime_ns: int, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Keyed by size and modification time, as the fingerprint's digests are: `load` and `source_files` read the
    same two files, each read costing a child interpreter (a third of a second)."""
    return data_files._read_mat_in_child(Path(path), names)


def _read_mat(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    status = path.stat()
    return _cached_mat(str(path.resolve()), status.st_size, status.st_mtime_ns, names)


def _flowers(config: Config, root: Path) -> dict[str, _Listing]:
    """Read here, not by torchvision's Flowers102, which accepts the publisher's .mat files only (md5)."""
    folder = root / SOURCES["flowers"].folder
    labels_file, setid_file = folder / "imagelabels.mat", folder / "setid.mat"
    _require(root, config, folder / "jpg", labels_file, setid_file)
    keys = {"train": "trnid", "val": "valid", "test": "tstid"}  # torchvision's Flowers102._splits_map
    with ThreadPoolExecutor(max_workers=2) as pool:  # two child interpreters at once
        labels_read = pool.submit(_read_mat, labels_file, ("labels",))
        ids_read = pool.submit(_read_mat, setid_file, tuple(keys.values()))
        labels_content, ids = labels_read.result(), ids_read.result()
    labels = _mat_integers(labels_file, "labels", labels_content["labels"], 1, SOURCES["flowers"].classes) - 1
    listings = {}
    for split, key in keys.items():
        numbers = _mat_integers(setid_file, key, ids[key], 1, len(labels))  # 1-based image numbers
        listings[split] = _Listing([folder / "jpg" / f"image_{number:05d}.jpg" for number in numbers],
                                   labels[numbers - 1], setid_file)
    return listings


_READERS: dict[str, Callable[[Config, Path], dict[str, _Listing]]] = {
    "pets": _pets, "flowers": _flowers, "aircraft": _aircraft, "dtd": _dtd}


def _listings(config: Config, root: Path) -> dict[str, _Listing]:
    """The publisher's splits of `config.source`, each checked for labels in range and images present."""
    listings = _READERS[config.source](config, Path(root))
    classes = SOURCES[config.source].classes
    for listing in listings.values():
        if listing.labels.size and (listing.labels.min() < 0 or listing.labels.max() >= classes):
            raise UsageError(f"{listing.listed_in}: labels must lie in 1..{classes}, found "
                             f"{listing.labels.min() + 1}..{listing.labels.max() + 1}")
        # Before any decoding, so a partial copy fails in a moment rather than after minutes of JPEGs.
        absent = next((path for path in listing.images if not path.is_file()), None)
        if absent is not None:
            raise data_files.missing_file(absent, root, config.source, SOURCES[config.source].what)
    return listings


# ------------------------------------------------------------------------------------------------ images


def _read_image(path: Path, config: Config, out: np.ndarray) -> None:
    """Decode `path`, resize its shorter side to `config.resize` and centre-crop it to `config.image_size`, as the
    protocol's test transform does with PIL, into `out` (3, size, size) in [0, 1]."""
    from PIL import Image
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")  # decodes the whole file; greyscale, CMYK and palette images become RGB
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:  # PIL's failures
        raise UsageError(f"{path}: not a readable image ({error_line(error)})") from None
    resized = F.resize(rgb, [config.resize], interpolation=InterpolationMode.BILINEAR, antialias=True)
    cropped = F.center_crop(resized, [config.image_size, config.image_size])
    # In numpy, not torch: a small torch op started from many threads at once waits on torch's own thread pool
    # (13 ms for one 224 px image on two cores, against 0.15 ms here); the same float32 division as torch's.
    np.divide(np.asarray(cropped).transpose(2, 0, 1), 255, out=out, dtype=np.float32)


def _read_images(paths: Sequence[Path], config: Config) -> torch.Tensor:
    """(N, 3, size, size) float32, written in place image by image (no second full-size copy); PIL releases the
    GIL while it decodes and resizes, so threads use every core."""
    out = torch.empty((len(paths), 3, config.image_size, config.image_size), dtype=torch.float32)
    pixels = out.numpy()  # the same memory
    with ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(_read_image, path, config, pixels[row]) for row, path in enumerate(paths)]
        try:
            for future in futures:
                future.result()
        except BaseException:  # the first bad image is the error: the images still queued are not decoded
            for future in futures:
                future.cancel()
            raise
    return out


def _split(listing: _Listing, rows: np.ndarray, config: Config) -> Split:
    return Split(_read_images([listing.images[row] for row in rows], config), torch.from_numpy(listing.labels[rows]))


def _pooled(listings: dict[str, _Listing], splits: tuple[str, ...]) -> _Listing:
    """The publisher's training and validation splits as one, in file order (training first)."""
    parts = [listings[split] for split in splits]
    return _Listing([path for part in parts for path in part.images],
                    np.concatenate([part.labels for part in parts]), parts[0].listed_in)


# ------------------------------------------------------------------------------------------ the source API


def shapes(config: Config) -> tuple[tuple[int, ...], int]:
    """The bundle's input shape and classes, known without reading the files."""
    return (3, config.image_size, config.image_size), SOURCES[config.source].classes


def source_files(config: Config, root: Path) -> list[Path]:
    """Every file `load` reads, for the data's fingerprint: the split and label files and each image."""
    listings = _listings(config, root)
    files = {listing.listed_in for listing in listings.values()}
    if config.source == "flowers":
        files.add(root / SOURCES["flowers"].folder / "imagelabels.mat")
    if config.source == "aircraft":
        files.add(root / SOURCES["aircraft"].folder / "data" / "variants.txt")
    images = {path for listing in listings.values() for path in listing.images}
    return sorted(files | images)


def load(config: Config, root: Path) -> LoadedData:
    """Train (the pool less the holdout), validation (a stratified `val_fraction` of the pool) and the official
    test split, as float tensors in [0, 1] of shape (N, 3, image_size, image_size)."""
    source = SOURCES[config.source]
    listings = _listings(config, root)
    pool = _pooled(listings, source.pooled_splits)
    train_rows, val_rows = stratified_holdout(pool.labels, config.val_fraction, config.split_seed)
    test = listings["test"]
    input_shape, num_outputs = shapes(config)
    bundle = DataBundle(train=_split(pool, train_rows, config), val=_split(pool, val_rows, config),
                        num_outputs=num_outputs, input_shape=input_shape)
    info = {"data_root": str(root), "classes": num_outputs,
            "split_sizes": {"train": len(train_rows), "val": len(val_rows), "test": len(test.images)},
            "publisher_split_sizes": {split: len(listing.images) for split, listing in listings.items()},
            "pooled_splits": list(source.pooled_splits)}
    if config.source == "dtd":
        info["partition"] = config.partition
    return LoadedData(bundle=bundle, test=_split(test, np.arange(len(test.images)), config), info=info)
