"""bnnbench.data.files, cifar_c and download against tiny files written here in the publishers' real
formats (no network): CIFAR python pickles, an SVHN .mat, CIFAR-10-C .npy files, downloads from file:// URLs."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from fake_data import CIFAR10_CLASSES, write_cifar100, write_svhn_test
from fake_data import pickle_file as _pickle
from fake_data import random_images as _images
from fake_data import write_cifar10 as _write_cifar10
from fake_data import write_cifar10c as _write_cifar10c

from bnnbench.data import cifar_c, files
from bnnbench.data import download as download_module
from bnnbench.data.download import Archive
from bnnbench.errors import UsageError

# ------------------------------------------------------------------------------------------- data root


def test_data_root_order(monkeypatch, tmp_path):
    monkeypatch.delenv(files.DATA_ENV, raising=False)
    monkeypatch.setenv("BNNBENCH_CACHE", str(tmp_path / "cache"))
    assert files.data_root() == tmp_path / "cache" / "data"
    monkeypatch.setenv(files.DATA_ENV, str(tmp_path / "env"))
    assert files.data_root() == tmp_path / "env"
    assert files.data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert files.data_root(str(tmp_path / "s")) == tmp_path / "s"
    monkeypatch.delenv(files.DATA_ENV)
    monkeypatch.delenv("BNNBENCH_CACHE")
    assert files.data_root() == Path.home() / ".cache" / "bnnbench" / "data"
    assert not (tmp_path / "cache").exists()  # never created


# ----------------------------------------------------------------------------------------------- CIFAR


def test_read_cifar10_decodes_channel_major_rows(tmp_path):
    written = _write_cifar10(tmp_path)
    arrays = files.read_cifar(tmp_path, "cifar10")
    assert arrays.n_train_batches == 2
    assert arrays.classes == tuple(CIFAR10_CLASSES)
    assert arrays.train_images.dtype == np.uint8 and arrays.train_images.shape == (8, 32, 32, 3)
    assert arrays.train_labels.dtype == np.int64
    np.testing.assert_array_equal(arrays.train_images, np.concatenate([written["images1"], written["images2"]]))
    np.testing.assert_array_equal(arrays.train_labels, np.concatenate([written["labels1"], written["labels2"]]))
    np.testing.assert_array_equal(arrays.test_images, written["test_images"])
    np.testing.assert_array_equal(arrays.test_labels, written["test_labels"])


def test_read_cifar10_pixel_positions(tmp_path):
    """Bytes placed by hand where the format says: byte 1024*c + 32*row + col is channel c of (row, col)."""
    _write_cifar10(tmp_path)
    row = np.zeros(3072, np.uint8)
    row[0 * 1024 + 32 * 2 + 5] = 11  # red at (2, 5)
    row[1 * 1024 + 32 * 2 + 5] = 22  # green at (2, 5)
    row[2 * 1024 + 32 * 2 + 5] = 33  # blue at (2, 5)
    row[2 * 1024 + 32 * 31 + 0] = 44  # blue at (31, 0)
    _pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": row[None], b"labels": [3]})
    image = files.read_cifar(tmp_path, "cifar10").test_images[0]
    assert tuple(image[2, 5]) == (11, 22, 33)
    assert image[31, 0, 2] == 44 and image[0, 31, 2] == 0
    assert int(image.sum()) == 11 + 22 + 33 + 44


def test_read_cifar10_gap_in_batches(tmp_path):
    _write_cifar10(tmp_path, batches=(1, 2, 4))
    with pytest.raises(UsageError, match="data_batch_3"):
        files.read_cifar(tmp_path, "cifar10")


def test_read_cifar100_fine_labels(tmp_path):
    train, test = _images(5, 1), _images(3, 2)
    write_cifar100(tmp_path, train, [99, 0, 50, 7, 8], test, [1, 98, 2])
    arrays = files.read_cifar(tmp_path, "cifar100")
    assert arrays.n_train_batches == 1 and len(arrays.classes) == 100 and arrays.classes[99] == "class99"
    np.testing.assert_array_equal(arrays.train_images, train)
    np.testing.assert_array_equal(arrays.test_images, test)
    assert arrays.train_labels.tolist() == [99, 0, 50, 7, 8] and arrays.test_labels.tolist() == [1, 98, 2]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_read_cifar_missing_folder(tmp_path, name):
    with pytest.raises(UsageError) as error:
        files.read_cifar(tmp_path, name)
    message = str(error.value)
    assert str(tmp_path) in message and f"bnnbench data download {name}" in message and "\n" not in message


def test_read_cifar_missing_test_batch(tmp_path):
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(UsageError, match="test_batch not found.*bnnbench data download cifar10"):
        files.read_cifar(tmp_path, "cifar10")


def test_read_cifar_malformed(tmp_path):
    _write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    _pickle(batch, {b"data": np.zeros((2, 3072), np.uint8)})  # no labels
    with pytest.raises(UsageError, match="data_batch_2.*'labels' missing"):
        files.read_cifar(tmp_path, "cifar10")
    _pickle(batch, {b"data": np.zeros((2, 1000), np.uint8), b"labels": [0, 1]})
    with pytest.raises(UsageError, match="data_batch_2.*shape"):
        files.read_cifar(tmp_path, "cifar10")
    batch.write_bytes(b"not a pickle")
    with pytest.raises(UsageError, match="data_batch_2"):
        files.read_cifar(tmp_path, "cifar10")


def test_read_cifar_unknown_name(tmp_path):
    with pytest.raises(UsageError, match="did you mean 'cifar10'"):
        files.read_cifar(tmp_path, "cifar1O")


# ------------------------------------------------------------------------------------------------ SVHN


def test_read_svhn_test(tmp_path):
    images = _images(4, 7)
    write_svhn_test(tmp_path, images, [10, 1, 9, 10])  # 10 stands for the digit 0
    got_images, labels = files.read_svhn_test(tmp_path)
    np.testing.assert_array_equal(got_images, images)
    assert got_images.shape == (4, 32, 32, 3) and got_images[2, 7, 3, 1] == images[2, 7, 3, 1]
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 9, 0]


@pytest.mark.parametrize("offset", [145, 184])
def test_a_damaged_svhn_file_is_one_line_even_where_scipy_crashes(tmp_path, offset):
    """One byte set to 0xFF in the variable tags: scipy 1.15's MAT reader died of SIGSEGV on both (found by setting
    each of the first 400 bytes of a test file to 0x00, 0x7F and 0xFF in turn). The reader runs in a child, so a
    crash is a one-line UsageError naming the file, like a parse error, and the test process lives on."""
    write_svhn_test(tmp_path, _images(12, 0), list(range(1, 13)))
    path = tmp_path / "svhn" / "test_32x32.mat"
    damaged = bytearray(path.read_bytes())
    damaged[offset] = 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(UsageError) as error:
        files.read_svhn_test(tmp_path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "MAT reader crashed on it" in message or "not a MATLAB .mat file scipy can read" in message


def test_a_reader_that_dies_is_reported_with_its_signal(tmp_path, monkeypatch):
    """The crash path itself, independent of scipy's version: a reader that aborts."""
    monkeypatch.setattr(files, "_MAT_READER", "import os; os.abort()")
    write_svhn_test(tmp_path, _images(2, 0), [1, 2])
    with pytest.raises(UsageError, match=r"test_32x32\.mat: scipy's MAT reader crashed on it \(signal 6\)"):
        files.read_svhn_test(tmp_path)


def test_read_svhn_missing(tmp_path):
    with pytest.raises(UsageError) as error:
        files.read_svhn_test(tmp_path)
    assert str(tmp_path / "svhn" / "test_32x32.mat") in str(error.value)
    assert "bnnbench data download svhn" in str(error.value)


# ------------------------------------------------------------------------------------------ CIFAR-10-C


def test_read_cifar10c_severity_slices(tmp_path):
    _write_cifar10c(tmp_path, ["fog", "snow"])
    for severity in range(1, 6):
        for offset, name in enumerate(["fog", "snow"]):
            images = cifar_c.read_cifar10c(tmp_path, name, severity)
            assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
            assert np.all(images == 10 * severity + offset)
            assert images.flags.writeable and not isinstance(images, np.memmap)  # a copy, not the map
    labels = cifar_c.read_cifar10c_labels(tmp_path)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 2] * 5


def test_cifar10c_available(tmp_path):
    assert not cifar_c.cifar10c_available(tmp_path, ["fog"])
    folder = _write_cifar10c(tmp_path, ["fog", "snow"])
    assert cifar_c.cifar10c_available(tmp_path, ["fog", "snow"])
    assert cifar_c.cifar10c_available(tmp_path, [])
    assert not cifar_c.cifar10c_available(tmp_path, ["fog", "frost"])
    (folder / "labels.npy").unlink()
    assert not cifar_c.cifar10c_available(tmp_path, ["fog"])


def test_read_cifar10c_errors(tmp_path):
    folder = _write_cifar10c(tmp_path, ["fog"])
    with pytest.raises(UsageError, match=r"frost\.npy not found.*bnnbench data download cifar10c"):
        cifar_c.read_cifar10c(tmp_path, "frost", 1)
    with pytest.raises(UsageError, match="severity"):
        cifar_c.read_cifar10c(tmp_path, "fog", 6)
    with pytest.raises(UsageError, match="unknown CIFAR-10-C corruption"):
        cifar_c.read_cifar10c(tmp_path, "../fog", 1)
    np.save(folder / "fog.npy", np.zeros((7, 32, 32, 3), np.uint8))  # not 5 x n
    with pytest.raises(UsageError, match=r"fog\.npy"):
        cifar_c.read_cifar10c(tmp_path, "fog", 1)
    np.save(folder / "fog.npy", np.zeros((5, 32, 32, 3), np.float32))  # wrong dtype
    with pytest.raises(UsageError, match=r"fog\.npy.*uint8"):
        cifar_c.read_cifar10c(tmp_path, "fog", 1)
    np.save(folder / "labels.npy", np.zeros((5, 2), np.uint8))
    with pytest.raises(UsageError, match=r"labels\.npy"):
        cifar_c.read_cifar10c_labels(tmp_path)


def test_cifar10c_corruption_names():
    assert len(cifar_c.CIFAR10C_CORRUPTIONS) == 15 == len(set(cifar_c.CIFAR10C_CORRUPTIONS))
    names = cifar_c.CIFAR10C_CORRUPTIONS
    assert names[0] == "gaussian_noise" and names[-1] == "jpeg_compression"


# ------------------------------------------------------------------------------------------- downloads


def test_archives_table():
    assert set(download_module.ARCHIVES) == {"cifar10", "cifar100", "cifar10c", "svhn", "pets", "flowers", "aircraft",
                                             "dtd"}
    for files_of_a_set in download_module.ARCHIVES.values():
        for archive in download_module.parts(files_of_a_set):
            assert len(archive.md5) == 32 and int(archive.md5, 16) >= 0
    assert download_module.ARCHIVES["cifar10"].extracts_to == "cifar-10-batches-py"
    assert download_module.ARCHIVES["svhn"].extracts_to == "svhn/test_32x32.mat"


def _tar_gz(path: Path, members: dict[str, bytes]) -> str:
    """Write a tar.gz holding `members` (name -> content); return its md5."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return hashlib.md5(path.read_bytes()).hexdigest()


def _archive(source: Path, md5: str, extracts_to: str = "tiny-set") -> dict[str, Archive]:
    return {"tiny": Archive(source.as_uri(), md5, source.name, extracts_to)}


def test_download_extracts_into_place(tmp_path):
    source = tmp_path / "server" / "tiny-set.tar.gz"
    source.parent.mkdir()
    md5 = _tar_gz(source, {"tiny-set/a.txt": b"alpha", "tiny-set/sub/b.txt": b"beta"})
    root = tmp_path / "data"
    path = download_module.download("tiny", root, archives=_archive(source, md5), progress=True)
    assert path == root / "tiny-set"
    assert (path / "a.txt").read_bytes() == b"alpha" and (path / "sub" / "b.txt").read_bytes() == b"beta"
    assert sorted(p.name for p in root.iterdir()) == ["tiny-set"]  # no .download, no .extract-* left


def test_download_wrong_md5(tmp_path):
    source = tmp_path / "tiny-set.tar.gz"
    md5 = _tar_gz(source, {"tiny-set/a.txt": b"alpha"})
    root = tmp_path / "data"
    with pytest.raises(UsageError) as error:
        download_module.download("tiny", root, archives=_archive(source, "0" * 32), progress=False)
    assert "0" * 32 in str(error.value) and md5 in str(error.value)
    assert not (root / "tiny-set").exists()
    assert not any(root.iterdir())  # partial file and .download deleted


def test_download_rejects_parent_member(tmp_path):
    source = tmp_path / "tiny-set.tar.gz"
    md5 = _tar_gz(source, {"tiny-set/a.txt": b"alpha", "../evil": b"gotcha"})
    root = tmp_path / "data"
    with pytest.raises(UsageError, match="evil"):
        download_module.download("tiny", root, archives=_archive(source, md5), progress=False)
    assert not (root / "tiny-set").exists() and not (tmp_path / "evil").exists()
    assert not list(root.glob(".tiny-set.*"))  # no staging folder left


def test_download_existing_target_needs_no_network(tmp_path):
    (tmp_path / "tiny-set").mkdir()
    missing = tmp_path / "no-such-file.tar.gz"
    archives = {"tiny": Archive(missing.as_uri(), "0" * 32, missing.name, "tiny-set")}
    assert download_module.download("tiny", tmp_path, archives=archives, progress=False) == tmp_path / "tiny-set"


def test_download_network_failure(tmp_path):
    missing = tmp_path / "no-such-file.tar.gz"
    archives = {"tiny": Archive(missing.as_uri(), "0" * 32, missing.name, "tiny-set")}
    root = tmp_path / "data"
    with pytest.raises(UsageError) as error:
        download_module.download("tiny", root, archives=archives, progress=False)
    message = str(error.value)
    assert message.startswith(f"cannot download {missing.as_uri()}")
    assert str(root / ".download" / missing.name) in message


def test_download_uses_hand_copied_file(tmp_path):
    """Offline machines: a file copied to root/.download is used once its md5 matches."""
    source = tmp_path / "tiny-set.tar.gz"
    md5 = _tar_gz(source, {"tiny-set/a.txt": b"alpha"})
    root = tmp_path / "data"
    (root / ".download").mkdir(parents=True)
    (root / ".download" / source.name).write_bytes(source.read_bytes())
    archives = {"tiny": Archive((tmp_path / "offline").as_uri(), md5, source.name, "tiny-set")}
    path = download_module.download("tiny", root, archives=archives, progress=False)
    assert (path / "a.txt").read_bytes() == b"alpha"


def test_download_plain_file(tmp_path):
    source = tmp_path / "test_32x32.mat"
    source.write_bytes(b"matlab bytes")
    md5 = hashlib.md5(b"matlab bytes").hexdigest()
    root = tmp_path / "data"
    path = download_module.download("tiny", root, archives=_archive(source, md5, "svhn/test_32x32.mat"), progress=False)
    assert path == root / "svhn" / "test_32x32.mat" and path.read_bytes() == b"matlab bytes"
    assert not (root / ".download").exists()


def test_download_unknown_name(tmp_path):
    with pytest.raises(UsageError, match="did you mean 'cifar10'"):
        download_module.download("cifar-10", tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


class _Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # would create the marker file when unpickled


def test_a_cifar_batch_that_names_code_is_refused_without_running_it(tmp_path):
    import pickle

    from bnnbench.data.files import _unpickle
    from bnnbench.errors import UsageError

    marker, batch = tmp_path / "marker", tmp_path / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": _Hostile(marker)}))
    with pytest.raises(UsageError, match="refused global"):
        _unpickle(batch)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- declared shapes

def _write_ettm1(root: Path) -> None:
    import pandas as pd

    (root / "ltsf").mkdir(parents=True)
    dates = pd.date_range("2016-07-01", periods=400, freq="15min").strftime("%Y-%m-%d %H:%M:%S")
    level = 20 + 5 * np.sin(2 * np.pi * np.arange(400) / 24)
    pd.DataFrame({"date": dates, "HUFL": np.ones(400), "OT": level}).to_csv(root / "ltsf" / "ETTm1.csv", index=False)


SOURCES = {
    "digits": ({"source": "digits"}, None),
    "diabetes": ({"source": "diabetes"}, None),
    "cifar10": ({"source": "cifar10", "ood": "none", "val_fraction": 0.5},
                lambda root: _write_cifar10(root, batches=(1,), n=20)),
    "cifar100": ({"source": "cifar100", "ood": "none", "val_fraction": 0.25},
                 lambda root: write_cifar100(root, _images(20, 0), [i % 5 for i in range(20)], _images(4, 1),
                                             [0, 1, 2, 3])),
    "co2": ({"source": "timeseries", "dataset": "co2", "context_length": 52, "prediction_length": 13}, None),
    "ETTm1": ({"source": "timeseries", "dataset": "ETTm1", "context_length": 48, "prediction_length": 24},
              _write_ettm1),
}


@pytest.mark.parametrize("name", SOURCES)
def test_a_source_declares_the_shapes_it_loads(tmp_path, name):
    """`validate` sizes the network on the shapes a source declares without reading its files: they must be the
    shapes of the tensors it loads, and the outputs the labels' classes or the forecast horizon."""
    from bnnbench.data import declared_shapes, load_data

    data, write = SOURCES[name]
    if write is not None:
        write(tmp_path)
    input_shape, num_outputs = declared_shapes(data)
    bundle = load_data(data, root=tmp_path).bundle
    assert (bundle.input_shape, bundle.num_outputs) == (input_shape, num_outputs)
    assert tuple(bundle.train.x.shape[1:]) == input_shape
    if bundle.train.y.is_floating_point() and bundle.train.y.ndim == 2:  # forecasting windows: one output per step
        assert bundle.train.y.shape[1] == num_outputs
    elif not bundle.train.y.is_floating_point():
        assert int(bundle.train.y.max()) < num_outputs


def test_a_cifar_meta_file_of_another_class_count_is_refused(tmp_path):
    _write_cifar10(tmp_path, batches=(1,), n=4)
    _pickle(tmp_path / "cifar-10-batches-py" / "batches.meta", {b"label_names": [b"cat", b"dog"]})
    with pytest.raises(UsageError, match=r"batches\.meta: 'label_names' holds 2 class names where the set has 10"):
        files.read_cifar(tmp_path, "cifar10")
