"""Data sets of random pixels written in the publishers' real on-disk formats: CIFAR-10/100 python pickles, the
SVHN test .mat and CIFAR-10-C .npy files, and the JPEG folders with split and label files of Oxford-IIIT Pets,
Flowers-102, FGVC-Aircraft and DTD. The readers cannot tell them from the real files, so code that reads data (the
tests, `bnnbench doctor --gpu`) runs the real paths without a download.

`write_image_sets(root, sizes)` writes everything a cifar10 task reads, at the real sizes (`REAL_SIZES`) or a few
images each (`TINY_SIZES`); `write_fake_finegrained(root, source)` writes one fine-grained set with every class,
a few small JPEGs each; the single-set writers are what the tests build their cases from.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnnbench.data.cifar_c import CIFAR10C_CORRUPTIONS, cifar10c_dir

__all__ = ["CIFAR10_CLASSES", "DTD_CLASSES", "PETS_BREEDS", "REAL_SIZES", "TINY_SIZES", "ImageSetSizes", "pickle_file",
           "random_images", "rows", "write_cifar10", "write_cifar100", "write_cifar10c", "write_fake_aircraft",
           "write_fake_dtd", "write_fake_finegrained", "write_fake_flowers", "write_fake_pets", "write_image_sets",
           "write_svhn_test"]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Protocol 4, stated: the default becomes 5 in Python 3.14, whose numpy arrays pickle through a global
# (`_frombuffer`) that the data-only reader refuses, as it should.
PICKLE_PROTOCOL = 4


@dataclass(frozen=True)
class ImageSetSizes:
    """Images per file of what `write_image_sets` writes."""

    cifar10_batches: int  # training batches data_batch_1.. (the official set has 5)
    cifar10_per_batch: int
    cifar10_test: int  # also the images per corruption and severity of CIFAR-10-C
    cifar100_train: int  # read by the loader but unused by a cifar10 task (CIFAR-100 is only its OOD test set)
    cifar100_test: int
    svhn_test: int

    @property
    def cifar10c(self) -> int:
        """Images in the CIFAR-10-C files: 15 corruptions x 5 severities x the test set."""
        return len(CIFAR10C_CORRUPTIONS) * 5 * self.cifar10_test


REAL_SIZES = ImageSetSizes(cifar10_batches=5, cifar10_per_batch=10_000, cifar10_test=10_000, cifar100_train=100,
                           cifar100_test=10_000, svhn_test=26_032)
# 100 training images: a stratified 10% validation split needs one image of each of the 10 classes.
TINY_SIZES = ImageSetSizes(cifar10_batches=1, cifar10_per_batch=100, cifar10_test=20, cifar100_train=10,
                           cifar100_test=10, svhn_test=12)


def pickle_file(path: Path, content: dict) -> None:
    path.write_bytes(pickle.dumps(content, protocol=PICKLE_PROTOCOL))


def rows(images: np.ndarray) -> np.ndarray:
    """HWC images as the files store them: channel-major rows of 3072 bytes."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def random_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def write_cifar10(root: Path, batches: tuple[int, ...] = (1, 2), n: int = 4, n_test: int | None = None,
                  ) -> dict[str, np.ndarray]:
    """`batches` training batches of `n` images and a test batch of `n_test` (default `n`)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    # Class names as bytes: the official files are Python 2 pickles, read back with encoding="bytes".
    pickle_file(folder / "batches.meta", {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072})
    written = {}
    for number in batches:
        images, labels = random_images(n, number), [(number + i) % 10 for i in range(n)]
        pickle_file(folder / f"data_batch_{number}", {b"data": rows(images), b"labels": labels,
                                                      b"batch_label": f"training batch {number} of 5".encode()})
        written[f"images{number}"], written[f"labels{number}"] = images, np.array(labels)
    n_test = n if n_test is None else n_test
    test_images, test_labels = random_images(n_test, 99), [(9 - i) % 10 for i in range(n_test)]
    pickle_file(folder / "test_batch", {b"data": rows(test_images), b"labels": test_labels})
    written["test_images"], written["test_labels"] = test_images, np.array(test_labels)
    return written


def write_cifar100(root: Path, train: np.ndarray, train_labels: list[int], test: np.ndarray,
                   test_labels: list[int]) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    names = [f"class{i}".encode() for i in range(100)]
    pickle_file(folder / "meta", {b"fine_label_names": names, b"coarse_label_names": names[:20]})
    pickle_file(folder / "train", {b"data": rows(train), b"fine_labels": train_labels,
                                   b"coarse_labels": [label // 5 for label in train_labels]})
    pickle_file(folder / "test", {b"data": rows(test), b"fine_labels": test_labels,
                                  b"coarse_labels": [label // 5 for label in test_labels]})


def write_svhn_test(root: Path, images: np.ndarray, labels: list[int]) -> None:
    """The official layout: X is (32, 32, 3, N), y is (N, 1) with 10 standing for the digit 0."""
    (root / "svhn").mkdir(parents=True)
    import scipy.io

    scipy.io.savemat(root / "svhn" / "test_32x32.mat", {"X": images.transpose(1, 2, 3, 0),
                                                         "y": np.array(labels, np.uint8)[:, None]})


def write_cifar10c(root: Path, names: list[str], n: int = 3, labels: np.ndarray | None = None,
                   seed: int | None = None) -> Path:
    """`<name>.npy` (5 x n images: severities 1..5 stacked) for each name, and labels.npy: `labels` (default
    0..n-1) are the test labels, repeated for the 5 severities. Severity s of corruption number k is filled with
    10 * s + k, so a slicing mistake shows up as a wrong value; with a `seed` the images are random pixels."""
    folder = cifar10c_dir(root)
    folder.mkdir(parents=True)
    generator = None if seed is None else np.random.default_rng(seed)
    for offset, name in enumerate(names):
        # Written through a memory map one severity at a time: the real files are 150 MB each.
        images = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.uint8, shape=(5 * n, 32, 32, 3))
        for severity in range(1, 6):
            block = images[(severity - 1) * n:severity * n]
            if generator is None:
                block[:] = 10 * severity + offset
            else:
                block[:] = generator.integers(0, 256, size=block.shape, dtype=np.uint8)
        images.flush()
        del images
    labels = np.arange(n) if labels is None else labels
    np.save(folder / "labels.npy", np.tile(labels.astype(np.uint8), 5))
    return folder


def write_image_sets(root: Path, sizes: ImageSetSizes = REAL_SIZES, seed: int = 0) -> None:
    """CIFAR-10 (training batches and test set), the 15 official CIFAR-10-C corruptions, CIFAR-100 and the SVHN
    test set under `root`, random pixels from generators seeded by `seed`: what a cifar10 task reads, so its
    evaluation takes the official-file path for CIFAR-10-C (no generation cost) and scores both OOD sets."""
    written = write_cifar10(root, tuple(range(1, sizes.cifar10_batches + 1)), sizes.cifar10_per_batch,
                            sizes.cifar10_test)
    write_cifar10c(root, list(CIFAR10C_CORRUPTIONS), sizes.cifar10_test, written["test_labels"], seed=seed)
    write_cifar100(root, random_images(sizes.cifar100_train, seed + 1), [i % 100 for i in range(sizes.cifar100_train)],
                   random_images(sizes.cifar100_test, seed + 2), [i % 100 for i in range(sizes.cifar100_test)])
    write_svhn_test(root, random_images(sizes.svhn_test, seed + 3), [1 + i % 10 for i in range(sizes.svhn_test)])


# ------------------------------------------------------------------------------ fine-grained image folders

# Oxford-IIIT Pets' 37 breeds as its file names spell them: cats capitalised, dogs in lower case. The official
# class ids number them alphabetically, case ignored; breed ids number them within their species.
PETS_BREEDS = (
    "Abyssinian", "Bengal", "Birman", "Bombay", "British_Shorthair", "Egyptian_Mau", "Maine_Coon", "Persian",
    "Ragdoll", "Russian_Blue", "Siamese", "Sphynx", "american_bulldog", "american_pit_bull_terrier", "basset_hound",
    "beagle", "boxer", "chihuahua", "english_cocker_spaniel", "english_setter", "german_shorthaired",
    "great_pyrenees", "havanese", "japanese_chin", "keeshond", "leonberger", "miniature_pinscher", "newfoundland",
    "pomeranian", "pug", "saint_bernard", "samoyed", "scottish_terrier", "shiba_inu", "staffordshire_bull_terrier",
    "wheaten_terrier", "yorkshire_terrier")
DTD_CLASSES = (
    "banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked", "crosshatched",
    "crystalline", "dotted", "fibrous", "flecked", "freckled", "frilly", "gauzy", "grid", "grooved", "honeycombed",
    "interlaced", "knitted", "lacelike", "lined", "marbled", "matted", "meshed", "paisley", "perforated", "pitted",
    "pleated", "polka-dotted", "porous", "potholed", "scaly", "smeared", "spiralled", "sprinkled", "stained",
    "stratified", "striped", "studded", "swirly", "veined", "waffled", "woven", "wrinkled", "zigzagged")
FLOWERS_CLASSES, AIRCRAFT_VARIANTS = 102, 100
_SPLITS = ("train", "val", "test")


class _FakeJpegs:
    """Random-pixel JPEGs of 20-40 px a side, every 7th greyscale and every 11th CMYK (the real sets hold both)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.written = 0

    def write(self, path: Path) -> None:
        from PIL import Image

        height, width = (int(side) for side in self.rng.integers(20, 41, size=2))
        mode = "L" if self.written % 7 == 3 else "CMYK" if self.written % 11 == 5 else "RGB"
        pixels = self.rng.integers(0, 256, size=(height, width, len(mode)), dtype=np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(path, format="JPEG")
        self.written += 1


def write_fake_pets(root: Path, per_class_per_split: int = 1, seed: int = 0) -> Path:
    """`oxford-iiit-pet/`: images/<Breed>_<n>.jpg and annotations/{trainval,test}.txt, lines
    "<image> <class id> <species: 1 cat, 2 dog> <breed id>"; trainval holds 2 x `per_class_per_split` images of each
    breed (the publisher's train and val, pooled as it ships them), test `per_class_per_split`."""
    folder = Path(root) / "oxford-iiit-pet"
    jpegs = _FakeJpegs(seed)
    class_ids = {breed: number for number, breed in enumerate(sorted(PETS_BREEDS, key=str.lower), 1)}
    cats = [breed for breed in PETS_BREEDS if breed[0].isupper()]
    dogs = [breed for breed in PETS_BREEDS if breed[0].islower()]
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    for breed in sorted(PETS_BREEDS, key=str.lower):
        species, breed_id = (1, cats.index(breed) + 1) if breed in cats else (2, dogs.index(breed) + 1)
        for number in range(1, 3 * per_class_per_split + 1):
            image = f"{breed}_{number}"
            jpegs.write(folder / "images" / f"{image}.jpg")
            split = "trainval" if number <= 2 * per_class_per_split else "test"
            lines[split].append(f"{image} {class_ids[breed]} {species} {breed_id}")
    (folder / "annotations").mkdir(parents=True)
    for split, split_lines in lines.items():
        (folder / "annotations" / f"{split}.txt").write_text("".join(f"{line}\n" for line in split_lines))
    return folder


def write_fake_flowers(root: Path, per_class_per_split: int = 1, seed: int = 0) -> Path:
    """`flowers-102/`: jpg/image_<nnnnn>.jpg, imagelabels.mat ('labels', 1..102, shape (1, N)) and setid.mat
    ('trnid', 'valid', 'tstid': 1-based image numbers, shape (1, n)); image numbers are shuffled across splits and
    classes, as the publisher's are."""
    import scipy.io

    folder = Path(root) / "flowers-102"
    jpegs = _FakeJpegs(seed)
    per_class = len(_SPLITS) * per_class_per_split
    count = FLOWERS_CLASSES * per_class
    numbers = jpegs.rng.permutation(count) + 1  # the k-th image of the listing below is image_<numbers[k]>
    labels = np.zeros(count, np.uint8)
    ids: dict[str, list[int]] = {split: [] for split in _SPLITS}
    for k, number in enumerate(numbers):
        labels[number - 1] = k // per_class + 1
        ids[_SPLITS[k % per_class // per_class_per_split]].append(int(number))
    for number in range(1, count + 1):
        jpegs.write(folder / "jpg" / f"image_{number:05d}.jpg")
    scipy.io.savemat(folder / "imagelabels.mat", {"labels": labels[None]})
    scipy.io.savemat(folder / "setid.mat", {key: np.array(ids[split], np.uint16)[None]
                                             for split, key in zip(_SPLITS, ("trnid", "valid", "tstid"), strict=True)})
    return folder


def write_fake_aircraft(root: Path, per_class_per_split: int = 1, seed: int = 0) -> Path:
    """`fgvc-aircraft-2013b/data/`: images/<7-digit id>.jpg, variants.txt (100 names, with spaces) and
    images_variant_{train,val,test}.txt, lines "<id> <variant name>"."""
    data = Path(root) / "fgvc-aircraft-2013b" / "data"
    jpegs = _FakeJpegs(seed)
    variants = [f"Model {number:03d}-{number % 7}00 ER" for number in range(1, AIRCRAFT_VARIANTS + 1)]
    image_ids = jpegs.rng.choice(10**7, size=AIRCRAFT_VARIANTS * len(_SPLITS) * per_class_per_split, replace=False)
    lines: dict[str, list[str]] = {split: [] for split in _SPLITS}
    for k, image_id in enumerate(image_ids):
        jpegs.write(data / "images" / f"{image_id:07d}.jpg")
        variant, split = divmod(k, len(_SPLITS) * per_class_per_split)
        lines[_SPLITS[split // per_class_per_split]].append(f"{image_id:07d} {variants[variant]}")
    (data / "variants.txt").write_text("".join(f"{name}\n" for name in variants))
    for split, split_lines in lines.items():
        (data / f"images_variant_{split}.txt").write_text("".join(f"{line}\n" for line in split_lines))
    return data.parent


def write_fake_dtd(root: Path, per_class_per_split: int = 1, seed: int = 0) -> Path:
    """`dtd/dtd/` (torchvision unpacks the archive's `dtd` folder into `dtd`): images/<class>/<class>_<nnnn>.jpg and
    labels/{train,val,test}{1..10}.txt, lines "<class>/<file>.jpg"; partition p rotates the splits by p - 1, so
    every partition splits the same images differently."""
    data = Path(root) / "dtd" / "dtd"
    jpegs = _FakeJpegs(seed)
    lines: dict[tuple[str, int], list[str]] = {(split, p): [] for split in _SPLITS for p in range(1, 11)}
    for name in DTD_CLASSES:
        for k in range(len(_SPLITS) * per_class_per_split):
            image = f"{name}/{name}_{k + 1:04d}.jpg"
            jpegs.write(data / "images" / image)
            for partition in range(1, 11):
                lines[_SPLITS[(k // per_class_per_split + partition - 1) % len(_SPLITS)], partition].append(image)
    (data / "labels").mkdir(parents=True)
    for (split, partition), split_lines in lines.items():
        (data / "labels" / f"{split}{partition}.txt").write_text("".join(f"{line}\n" for line in split_lines))
    return data.parent


def write_fake_finegrained(root: Path, source: str, per_class_per_split: int = 1, seed: int = 0) -> Path:
    """The whole tree of fine-grained source `source` (pets, flowers, aircraft or dtd) under `root`, every class with
    `per_class_per_split` images in each of the publisher's train, val and test splits; returns the set's folder."""
    writers = {"pets": write_fake_pets, "flowers": write_fake_flowers, "aircraft": write_fake_aircraft,
               "dtd": write_fake_dtd}
    if source not in writers:
        raise ValueError(f"unknown fine-grained source '{source}'; valid choices: {', '.join(writers)}")
    return writers[source](root, per_class_per_split, seed)
