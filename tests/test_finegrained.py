"""The fine-grained sources (pets, flowers, aircraft, dtd) on tiny trees in the publishers' real layouts, written by
`bnnbench.data.synthetic_files`: the pooled-then-halved protocol, pixels against an independent PIL resize and crop
and against torchvision's own classes and transforms on the same tree, one-line errors for missing or damaged
files, the fingerprint, and `bnnbench data download` for data sets of several files (file:// URLs, no network)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from bnnbench.data import check_data_config, declared_shapes, finegrained, load_data
from bnnbench.data import download as download_module
from bnnbench.data.download import Archive
from bnnbench.data.synthetic_files import write_fake_finegrained
from bnnbench.errors import UsageError

SOURCES = ("pets", "flowers", "aircraft", "dtd")
CLASSES = {"pets": 37, "flowers": 102, "aircraft": 100, "dtd": 47}
SMALL = {"image_size": 12, "resize": 14}  # upscaled from the fake 20-40 px images would be slower and no truer


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> Path:
    """One data root holding all four fake sets, one image per class per publisher split; tests that damage a tree
    copy it first (`own_tree`)."""
    root = tmp_path_factory.mktemp("finegrained")
    for source in SOURCES:
        write_fake_finegrained(root, source)
    return root


def own_tree(trees: Path, tmp_path: Path, source: str) -> Path:
    root = tmp_path / "data"
    folder = finegrained.SOURCES[source].folder
    shutil.copytree(trees / folder, root / folder)
    return root


def official_test_split(root: Path, source: str) -> tuple[list[Path], list[int]]:
    """The test images and 0-based labels, parsed here from the publisher's files (not by the code under test)."""
    if source == "pets":
        folder = root / "oxford-iiit-pet"
        lines = [line.split() for line in (folder / "annotations" / "test.txt").read_text().splitlines()]
        return [folder / "images" / f"{image}.jpg" for image, *_ in lines], [int(label) - 1 for _, label, *_ in lines]
    if source == "flowers":
        folder = root / "flowers-102"
        labels = scipy.io.loadmat(folder / "imagelabels.mat")["labels"].ravel().astype(int)
        numbers = scipy.io.loadmat(folder / "setid.mat")["tstid"].ravel().astype(int)
        return [folder / "jpg" / f"image_{n:05d}.jpg" for n in numbers], [labels[n - 1] - 1 for n in numbers]
    if source == "aircraft":
        data = root / "fgvc-aircraft-2013b" / "data"
        variants = (data / "variants.txt").read_text().splitlines()
        lines = [line.split(" ", 1) for line in (data / "images_variant_test.txt").read_text().splitlines()]
        return [data / "images" / f"{image}.jpg" for image, _ in lines], [variants.index(name) for _, name in lines]
    data = root / "dtd" / "dtd"
    lines = (data / "labels" / "test1.txt").read_text().splitlines()
    names = sorted({line.split("/")[0] for line in lines})
    return [data / "images" / line for line in lines], [names.index(line.split("/")[0]) for line in lines]


def resized_and_cropped(path: Path, resize: int, size: int) -> torch.Tensor:
    """The protocol's Resize(resize) + CenterCrop(size), written out with PIL alone, as (3, size, size) in [0, 1]."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    if width <= height:
        new_width, new_height = resize, int(resize * height / width)
    else:
        new_width, new_height = int(resize * width / height), resize
    image = image.resize((new_width, new_height), Image.BILINEAR)
    top, left = int(round((new_height - size) / 2)), int(round((new_width - size) / 2))
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255
    return torch.from_numpy(pixels).permute(2, 0, 1)


def one_line(error: pytest.ExceptionInfo, *parts: object) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    for part in parts:
        assert str(part) in message, message
    return message


# --------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("source", SOURCES)
def test_pooled_then_halved_with_the_official_test_split(trees, source):
    loaded = load_data({"source": source, **SMALL}, root=trees)
    bundle, classes = loaded.bundle, CLASSES[source]
    assert bundle.input_shape == (3, 12, 12) and bundle.num_outputs == classes
    # one image per class in each publisher split: the pool holds two per class, half of them held out per class
    assert (len(bundle.train), len(bundle.val), len(loaded.test)) == (classes, classes, classes)
    assert sorted(bundle.train.y.tolist()) == sorted(bundle.val.y.tolist()) == list(range(classes))
    assert loaded.info["split_sizes"] == {"train": classes, "val": classes, "test": classes}
    assert loaded.ood == {} and loaded.official_corruptions is None
    for split in (bundle.train, bundle.val, loaded.test):
        assert split.x.dtype == torch.float32 and split.x.shape[1:] == (3, 12, 12)
        assert split.y.dtype == torch.int64 and split.x.min() >= 0 and split.x.max() <= 1
    # every image once: 3 x classes distinct images (random pixels) across the three splits, none twice
    pixels = torch.cat([bundle.train.x, bundle.val.x, loaded.test.x]).flatten(1)
    assert len(torch.unique(pixels, dim=0)) == 3 * classes
    paths, labels = official_test_split(trees, source)
    assert loaded.test.y.tolist() == labels  # the official test split, in file order
    torch.testing.assert_close(loaded.test.x[-1], resized_and_cropped(paths[-1], 14, 12), rtol=0, atol=0)


@pytest.mark.parametrize("source", ["pets", "flowers"])
def test_the_holdout_is_fixed_by_split_seed_alone(trees, source):
    first, again = (load_data({"source": source, **SMALL}, root=trees).bundle for _ in range(2))
    other = load_data({"source": source, "split_seed": 1, **SMALL}, root=trees).bundle
    assert torch.equal(first.val.x, again.val.x) and torch.equal(first.train.y, again.train.y)
    assert not torch.equal(first.val.x, other.val.x)
    assert sorted(other.val.y.tolist()) == list(range(CLASSES[source]))  # still one of each class


@pytest.mark.parametrize(("source", "size"), [(source, (12, 14)) for source in SOURCES] + [("dtd", (224, 256))])
def test_pixels_are_the_protocols_pil_resize_and_centre_crop(trees, source, size):
    image_size, resize = size
    loaded = load_data({"source": source, "image_size": image_size, "resize": resize}, root=trees)
    assert loaded.test.x.shape[1:] == (3, image_size, image_size)
    paths, _ = official_test_split(trees, source)
    modes = {Image.open(path).mode for path in paths}
    assert {"RGB", "L"} <= modes  # greyscale JPEGs are converted too (and CMYK ones where the split has one)
    expected = torch.stack([resized_and_cropped(path, resize, image_size) for path in paths])
    torch.testing.assert_close(loaded.test.x, expected, rtol=0, atol=0)


def test_cmyk_jpegs_become_rgb(trees):
    paths, _ = official_test_split(trees, "flowers")
    cmyk = [row for row, path in enumerate(paths) if Image.open(path).mode == "CMYK"]
    assert cmyk
    loaded = load_data({"source": "flowers", **SMALL}, root=trees)
    torch.testing.assert_close(loaded.test.x[cmyk[0]], resized_and_cropped(paths[cmyk[0]], 14, 12), rtol=0, atol=0)


def _torchvision_test_split(root: Path, source: str, monkeypatch):
    """torchvision's own class on the same tree, with the protocol's test transform (torchvision.transforms)."""
    import torchvision.datasets as datasets
    from torchvision import transforms

    transform = transforms.Compose([transforms.Resize(14), transforms.CenterCrop(12), transforms.ToTensor()])
    if source == "pets":
        return datasets.OxfordIIITPet(root, split="test", transform=transform)
    if source == "aircraft":
        return datasets.FGVCAircraft(root, split="test", annotation_level="variant", transform=transform)
    if source == "dtd":
        return datasets.DTD(root, split="test", partition=1, transform=transform)
    # Flowers102 checks the .mat files' md5 against the publisher's: the fake files differ, the layout is the same
    monkeypatch.setattr(datasets.flowers102, "check_integrity", lambda *args, **kwargs: True)
    return datasets.Flowers102(root, split="test", transform=transform)


@pytest.mark.parametrize("source", SOURCES)
def test_torchvision_reads_the_same_tree_to_the_same_tensors(trees, source, monkeypatch):
    """The folders are torchvision's: its class finds the fake tree, and gives the same labels and pixels."""
    loaded = load_data({"source": source, **SMALL}, root=trees)
    dataset = _torchvision_test_split(trees, source, monkeypatch)
    assert len(dataset) == len(loaded.test)
    for row in (0, len(dataset) - 1):
        image, label = dataset[row]
        assert label == loaded.test.y[row].item()
        torch.testing.assert_close(loaded.test.x[row], image, rtol=0, atol=0)


def test_dtd_partitions_split_the_same_images_differently(trees):
    first = load_data({"source": "dtd", **SMALL}, root=trees)
    second = load_data({"source": "dtd", "partition": 2, **SMALL}, root=trees)
    assert second.info["partition"] == 2 and len(second.test) == 47
    assert not torch.equal(first.test.x, second.test.x)
    everything = [torch.cat([loaded.bundle.train.x, loaded.bundle.val.x, loaded.test.x]).flatten(1)
                  for loaded in (first, second)]
    assert torch.equal(*(torch.unique(pixels, dim=0) for pixels in everything))


def test_shapes_are_known_without_files_and_the_config_is_checked():
    for source, classes in CLASSES.items():
        assert declared_shapes({"source": source}) == ((3, 224, 224), classes)
    assert declared_shapes({"source": "pets", "image_size": 96, "resize": 110}) == ((3, 96, 96), 37)
    bad = [({"source": "birds"}, "'birds'"), ({"source": "pets", "resize": 200}, "resize"),
           ({"source": "pets", "val_fraction": 1.0}, "val_fraction"), ({"source": "dtd", "partition": 11}, "11"),
           ({"source": "pets", "partition": 2}, "dtd only"), ({"source": "pets", "image_size": 0}, "image_size"),
           ({"source": "flowers", "split_seed": -1}, "split_seed"), ({"source": "pets", "ood": "auto"}, "ood")]
    for table, part in bad:
        with pytest.raises(UsageError) as error:
            check_data_config(table, "task.toml")
        one_line(error, part)


def test_the_fingerprint_covers_the_split_files_and_every_image(trees, tmp_path):
    root = own_tree(trees, tmp_path, "aircraft")
    config = finegrained.Config(source="aircraft", **SMALL)
    files = finegrained.source_files(config, root)
    data = root / "fgvc-aircraft-2013b" / "data"
    assert {data / "variants.txt", data / "images_variant_train.txt", data / "images_variant_test.txt"} <= set(files)
    assert len(files) == 4 + 300
    before = load_data({"source": "aircraft", **SMALL}, root=root).info["data_fingerprint"]
    image = sorted((data / "images").iterdir())[0]
    Image.open(image).transpose(Image.FLIP_LEFT_RIGHT).save(image, format="JPEG")
    after = load_data({"source": "aircraft", **SMALL}, root=root).info["data_fingerprint"]
    assert before["files"] == after["files"] == 304 and before["sha256"] != after["sha256"]


# ---------------------------------------------------------------------------------- missing or damaged files


@pytest.mark.parametrize(("source", "removed"), [
    ("pets", "oxford-iiit-pet/annotations/test.txt"), ("pets", "oxford-iiit-pet/images"),
    ("flowers", "flowers-102/setid.mat"), ("flowers", "flowers-102/imagelabels.mat"),
    ("aircraft", "fgvc-aircraft-2013b/data/images_variant_val.txt"),
    ("aircraft", "fgvc-aircraft-2013b/data/variants.txt"),
    ("dtd", "dtd/dtd/labels/test1.txt"), ("dtd", "dtd/dtd/images")])
def test_a_missing_file_is_one_line_naming_it_and_the_download(trees, tmp_path, source, removed):
    root = own_tree(trees, tmp_path, source)
    path = root / removed
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(UsageError) as error:
        load_data({"source": source, **SMALL}, root=root)
    one_line(error, f"{path} not found", f"bnnbench data download {source}")


@pytest.mark.parametrize("source", SOURCES)
def test_an_absent_set_names_its_folder(tmp_path, source):
    with pytest.raises(UsageError) as error:
        load_data({"source": source}, root=tmp_path)
    one_line(error, f"{tmp_path / finegrained.SOURCES[source].folder} not found", f"bnnbench data download {source}")


@pytest.mark.parametrize("source", SOURCES)
def test_a_listed_image_that_is_absent_is_named(trees, tmp_path, source):
    root = own_tree(trees, tmp_path, source)
    paths, _ = official_test_split(root, source)
    paths[3].unlink()
    with pytest.raises(UsageError) as error:
        load_data({"source": source, **SMALL}, root=root)
    one_line(error, f"{paths[3]} not found", f"bnnbench data download {source}")


@pytest.mark.parametrize(("source", "damage"), [("pets", "garbage"), ("flowers", "truncated"),
                                                ("aircraft", "empty"), ("dtd", "truncated")])
def test_a_damaged_image_is_one_line_naming_it(trees, tmp_path, source, damage):
    root = own_tree(trees, tmp_path, source)
    path = official_test_split(root, source)[0][5]
    content = path.read_bytes()
    path.write_bytes({"garbage": b"not a jpeg at all", "truncated": content[:len(content) // 2],
                      "empty": b""}[damage])
    with pytest.raises(UsageError) as error:
        load_data({"source": source, **SMALL}, root=root)
    one_line(error, path, "not a readable image")


def _replace_line(path: Path, row: int, line: str) -> None:
    lines = path.read_text().splitlines()
    lines[row] = line
    path.write_text("".join(f"{each}\n" for each in lines))


def test_labels_outside_the_classes_are_one_line(trees, tmp_path):
    root = own_tree(trees, tmp_path, "pets")
    test_list = root / "oxford-iiit-pet" / "annotations" / "test.txt"
    _replace_line(test_list, 0, "Abyssinian_3 38 1 1")
    with pytest.raises(UsageError) as error:
        load_data({"source": "pets", **SMALL}, root=root)
    one_line(error, test_list, "1..37", "38")
    _replace_line(test_list, 0, "Abyssinian_3 one")
    with pytest.raises(UsageError) as error:
        load_data({"source": "pets", **SMALL}, root=root)
    one_line(error, test_list, "not a split file")


def test_flowers_labels_and_image_numbers_are_checked(trees, tmp_path):
    root = own_tree(trees, tmp_path, "flowers")
    labels_file, setid_file = root / "flowers-102" / "imagelabels.mat", root / "flowers-102" / "setid.mat"
    labels = scipy.io.loadmat(labels_file)["labels"]
    scipy.io.savemat(labels_file, {"labels": np.where(np.arange(labels.size) == 7, 103, labels)})
    with pytest.raises(UsageError) as error:
        load_data({"source": "flowers", **SMALL}, root=root)
    one_line(error, labels_file, "1..102")
    scipy.io.savemat(labels_file, {"labels": labels})
    setid = {key: value for key, value in scipy.io.loadmat(setid_file).items() if not key.startswith("__")}
    scipy.io.savemat(setid_file, {**setid, "tstid": setid["tstid"] + 1000})
    with pytest.raises(UsageError) as error:
        load_data({"source": "flowers", **SMALL}, root=root)
    one_line(error, setid_file, "'tstid'", "1..306")
    setid_file.write_bytes(b"MATLAB 5.0 MAT-file, but not really")
    with pytest.raises(UsageError) as error:
        load_data({"source": "flowers", **SMALL}, root=root)
    one_line(error, setid_file)


def test_an_unknown_aircraft_variant_and_a_dtd_split_short_of_classes_are_one_line(trees, tmp_path):
    root = own_tree(trees, tmp_path, "aircraft")
    listing = root / "fgvc-aircraft-2013b" / "data" / "images_variant_train.txt"
    _replace_line(listing, 2, listing.read_text().splitlines()[2].split(" ")[0] + " Boeing 999")
    with pytest.raises(UsageError) as error:
        load_data({"source": "aircraft", **SMALL}, root=root)
    one_line(error, listing, "'Boeing 999'")
    root = own_tree(trees, tmp_path / "dtd", "dtd")
    listing = root / "dtd" / "dtd" / "labels" / "val1.txt"
    listing.write_text("".join(f"{line}\n" for line in listing.read_text().splitlines()[1:]))
    with pytest.raises(UsageError) as error:
        load_data({"source": "dtd", **SMALL}, root=root)
    one_line(error, listing, "46 classes")


# ------------------------------------------------------------------------------------------------ downloads


def _tar_gz(path: Path, folder: Path, name_in_archive: str) -> str:
    """`folder` packed as the archive's top folder `name_in_archive`; returns the archive's md5."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=name_in_archive)
    return hashlib.md5(path.read_bytes()).hexdigest()


def _packed(tmp_path: Path, members: dict[str, bytes]) -> tuple[str, str]:
    """A tar.gz under tmp_path/server of `members`; returns (its file:// URL, its md5)."""
    path = tmp_path / "server" / f"{next(iter(members)).split('/')[0]}.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path.as_uri(), hashlib.md5(path.read_bytes()).hexdigest()


def _three_parts(tmp_path: Path) -> tuple[Archive, Archive, Archive]:
    """Two archives and a plain file that make up one set: what Pets (two archives) and Flowers (one and two files)
    look like."""
    images_url, images_md5 = _packed(tmp_path, {"images/a.jpg": b"alpha", "images/b.jpg": b"beta"})
    notes_url, notes_md5 = _packed(tmp_path, {"annotations/test.txt": b"a 1\n"})
    plain = tmp_path / "server" / "labels.mat"
    plain.write_bytes(b"matlab bytes")
    return (Archive(images_url, images_md5, "images.tar.gz", "set/images", "images"),
            Archive(notes_url, notes_md5, "annotations.tar.gz", "set/annotations", "annotations"),
            Archive(plain.as_uri(), hashlib.md5(b"matlab bytes").hexdigest(), "labels.mat", "set/labels.mat"))


def test_a_set_of_several_files_downloads_each_into_place(tmp_path):
    root = tmp_path / "data"
    path = download_module.download("multi", root, archives={"multi": _three_parts(tmp_path)}, progress=False)
    assert path == root / "set"
    assert (path / "images" / "b.jpg").read_bytes() == b"beta"
    assert (path / "annotations" / "test.txt").read_bytes() == b"a 1\n"
    assert (path / "labels.mat").read_bytes() == b"matlab bytes"
    assert sorted(p.name for p in root.iterdir()) == ["set"]  # no .download or staging folder left
    assert sorted(p.name for p in path.iterdir()) == ["annotations", "images", "labels.mat"]


def test_each_part_is_checked_and_a_retry_fetches_only_what_is_missing(tmp_path):
    images, notes, plain = _three_parts(tmp_path)
    root = tmp_path / "data"
    wrong = dataclasses.replace(notes, md5="0" * 32)
    with pytest.raises(UsageError) as error:
        download_module.download("multi", root, archives={"multi": (images, wrong, plain)}, progress=False)
    one_line(error, notes.url, "0" * 32, notes.md5)
    assert (root / "set" / "images").is_dir() and (root / "set" / "labels.mat").is_file()
    assert not (root / "set" / "annotations").exists()
    # the retry: the parts in place are not fetched again (their URLs now lead nowhere)
    gone = tmp_path / "gone"
    archives = {"multi": (dataclasses.replace(images, url=gone.as_uri()), notes,
                          dataclasses.replace(plain, url=gone.as_uri()))}
    assert download_module.download("multi", root, archives=archives, progress=False) == root / "set"
    assert (root / "set" / "annotations" / "test.txt").is_file()


def test_without_network_each_failed_part_is_one_line_saying_where_to_put_it(tmp_path):
    nowhere = tmp_path / "nowhere"
    parts = tuple(dataclasses.replace(part, url=(nowhere / part.filename).as_uri()) for part in _three_parts(tmp_path))
    root = tmp_path / "data"
    with pytest.raises(UsageError) as error:
        download_module.download("multi", root, archives={"multi": parts}, progress=False)
    lines = str(error.value).splitlines()
    assert len(lines) == 3
    for line, part in zip(lines, parts, strict=True):
        assert line.startswith(f"cannot download {part.url}")
        assert str(root / ".download" / part.filename) in line and "bnnbench data download multi" in line


def test_a_hand_copied_part_is_used(tmp_path):
    images, notes, plain = _three_parts(tmp_path)
    root = tmp_path / "data"
    (root / ".download").mkdir(parents=True)
    shutil.copy(Path(notes.url.removeprefix("file://")), root / ".download" / notes.filename)
    offline = dataclasses.replace(notes, url=(tmp_path / "offline").as_uri())
    download_module.download("multi", root, archives={"multi": (images, offline, plain)}, progress=False)
    assert (root / "set" / "annotations" / "test.txt").read_bytes() == b"a 1\n"


@pytest.mark.parametrize("source", SOURCES)
def test_the_download_table_puts_each_set_where_the_loader_reads_it(source):
    parts = download_module.parts(download_module.ARCHIVES[source])
    assert os.path.commonpath([part.extracts_to for part in parts]) == finegrained.SOURCES[source].folder
    for part in parts:
        assert part.url.startswith("https://www.robots.ox.ac.uk/~vgg/data/") and part.url.endswith(part.filename)


@pytest.mark.parametrize("source", SOURCES)
def test_the_publishers_archives_download_into_a_tree_that_loads(trees, tmp_path, source):
    """The fake tree packed as the publisher packs it (Pets: images/ and annotations/ apart; Flowers: jpg/ and two
    bare .mat files; DTD: a top folder dtd/), fetched with the real table's layout from file:// URLs, then loaded."""
    local = []
    for part in download_module.parts(download_module.ARCHIVES[source]):
        made = trees / part.extracts_to
        served = tmp_path / "server" / part.filename
        if part.filename.endswith((".tar.gz", ".tgz")):
            md5 = _tar_gz(served, made, part.folder_in_archive or part.extracts_to)
        else:
            served.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(made, served)
            md5 = hashlib.md5(served.read_bytes()).hexdigest()
        local.append(dataclasses.replace(part, url=served.as_uri(), md5=md5))
    root = tmp_path / "data"
    path = download_module.download(source, root, archives={source: tuple(local)}, progress=False)
    assert path == root / finegrained.SOURCES[source].folder
    fetched = load_data({"source": source, **SMALL}, root=root)
    original = load_data({"source": source, **SMALL}, root=trees)
    assert torch.equal(fetched.test.x, original.test.x) and torch.equal(fetched.bundle.val.y, original.bundle.val.y)


def test_the_cli_names_the_new_sets(cli):
    result = cli("data", "download", "--help")
    assert result.code == 0
    for name in SOURCES:
        assert name in result.stdout
