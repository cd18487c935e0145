"""Files that cannot be read or parsed are bad input (issue 30): task files (not UTF-8, unreadable, a directory) and
data files (forecasting CSVs, CIFAR pickles, CIFAR-10-C .npy) give one line naming the file and what is wrong, exit
2, nothing written; an out-of-distribution file that is refused is reported, not taken for an absent one."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
from assertions import assert_usage_error
from fake_data import pickle_file, random_images, write_cifar10, write_cifar10c, write_cifar100, write_svhn_test

from bnnbench.data import load_data
from bnnbench.data.files import read_cifar
from bnnbench.data.timeseries import Config, read_series
from bnnbench.errors import UsageError
from bnnbench.package_files import builtin_tasks_dir

CPU = ("--device", "cpu", "--quiet")
GOOD_TASK = f'include = "{builtin_tasks_dir() / "digits-mlp.toml"}"\nname = "{{name}}"\ndescription = "{{text}}"\n'


def validate_and_run(cli, path: Path, results_dir: Path, *fragments: str) -> None:
    """`validate PATH` and `run --task PATH` both refuse the file with one line, and write nothing."""
    assert_usage_error(cli("validate", str(path)), str(path), *fragments)
    result = cli("run", "--task", str(path), "--method", "map", "--results-dir", str(results_dir), *CPU)
    assert_usage_error(result, str(path), *fragments)
    assert "Traceback" not in result.stderr and not results_dir.exists()


# ------------------------------------------------------------------------------------------- task files


def test_a_task_file_that_is_not_utf8_is_named_with_its_line(cli, tmp_path, results_dir):
    path = tmp_path / "latin1.toml"
    path.write_bytes(GOOD_TASK.format(name="latin1", text="caf\xe9").encode("latin-1"))
    validate_and_run(cli, path, results_dir, "is not UTF-8 text", "line 3", "0xe9")


def test_an_included_file_that_is_not_utf8_is_the_one_named(cli, tmp_path, results_dir):
    (tmp_path / "base.toml").write_bytes(b'description = "\xff"\n')
    path = tmp_path / "top.toml"
    path.write_text('include = "base.toml"\nname = "top"\n')
    assert_usage_error(cli("validate", str(path)), str(tmp_path / "base.toml"), "not UTF-8", "line 1", "0xff")


def test_a_directory_named_like_a_task_file_is_refused(cli, tmp_path, results_dir):
    path = tmp_path / "x.toml"
    path.mkdir()
    validate_and_run(cli, path, results_dir, "is a directory")


def test_a_pipe_named_like_a_task_file_is_refused_without_blocking(cli, tmp_path, results_dir):
    path = tmp_path / "pipe.toml"
    os.mkfifo(path)
    validate_and_run(cli, path, results_dir, "not a regular file")


def test_a_task_file_that_cannot_be_read_names_the_reason(cli, tmp_path, results_dir, monkeypatch):
    # Root reads a chmod-000 file all the same, so the refusal of the operating system is simulated.
    path = tmp_path / "locked.toml"
    path.write_text(GOOD_TASK.format(name="locked", text="x"))
    read_bytes = Path.read_bytes

    def refuse(self: Path) -> bytes:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    validate_and_run(cli, path, results_dir, "cannot be read: Permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod-000 file")
def test_a_chmod_000_task_file_is_refused(cli, tmp_path, results_dir):
    path = tmp_path / "locked.toml"
    path.write_text(GOOD_TASK.format(name="locked", text="x"))
    path.chmod(0)
    validate_and_run(cli, path, results_dir, "cannot be read: Permission denied")


# ------------------------------------------------------------------------------------------------ models

# The network is sized at the door (tasks.check_network: models.check_buildable on the shapes the data source
# declares), by validate and run alike, and by run again when --set changes the [model] table.

def test_a_model_that_cannot_be_built_is_refused_before_any_run(cli, tmp_path, results_dir):
    result = cli("run", "--task", "digits-mlp", "--method", "map", "--set", "model.hidden=[-5]",
                 "--results-dir", str(results_dir), *CPU)
    assert_usage_error(result, "cannot build model 'mlp' (hidden = [-5])", "negative dimension -5")
    assert "Traceback" not in result.stderr and not results_dir.exists()
    path = tmp_path / "negative.toml"
    path.write_text(GOOD_TASK.format(name="negative", text="x") + "[model]\nname = \"mlp\"\nhidden = [-5]\n")
    validate_and_run(cli, path, results_dir, "cannot build model 'mlp' (hidden = [-5])", "negative dimension -5")


def test_an_absurdly_large_model_is_refused_before_any_run(cli, tmp_path, results_dir):
    path = tmp_path / "huge.toml"
    path.write_text(GOOD_TASK.format(name="huge", text="x") + "[model]\nname = \"mlp\"\n"
                    "hidden = [1000000000, 1000000000]\n")
    validate_and_run(cli, path, results_dir, "1,000,000,076,000,000,010 parameters", "3.5 EiB", "4.0 GiB")


def test_validate_counts_the_parameters_of_each_network(cli):
    """digits-mlp: 64 -> 128 -> 128 -> 10 (the task's hidden widths), weights and biases."""
    result = cli("validate", "digits-mlp", "sanity-blr")
    assert result.code == 0, result.stderr
    assert f"{64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10:,} parameters" in result.stdout
    assert "sanity-blr v1" in result.stdout and ": 11 parameters" in result.stdout  # 10 weights and a bias


# ---------------------------------------------------------------------------------------- forecasting CSVs

ROWS = 120
DATES = list(pd.date_range("2016-07-01", periods=ROWS, freq="15min").strftime("%Y-%m-%d %H:%M:%S"))


def write_ettm1(root: Path, dates: list[str] = DATES) -> Path:
    """An ETTm1.csv in the release's layout (date, HUFL, ..., OT) with these dates."""
    (root / "ltsf").mkdir(parents=True, exist_ok=True)
    path = root / "ltsf" / "ETTm1.csv"
    t = np.arange(len(dates))
    pd.DataFrame({"date": dates, "HUFL": np.ones(len(dates)), "OT": 20 + 5 * np.sin(2 * np.pi * t / 24)}).to_csv(
        path, index=False)
    return path


def with_date(row: int, text: str) -> list[str]:
    """DATES with 1-based data row `row` replaced by `text`."""
    return [text if index == row - 1 else date for index, date in enumerate(DATES)]


def ettm1_task(tmp_path: Path) -> Path:
    path = tmp_path / "ettm1-tiny.toml"
    path.write_text(f'include = "{builtin_tasks_dir() / "ts-co2-mlp.toml"}"\nname = "ettm1-tiny"\nversion = 1\n'
                    '[data]\nsource = "timeseries"\ndataset = "ETTm1"\ncontext_length = 8\nprediction_length = 4\n'
                    'test_windows = 2\nval_windows = 1\nseasonality = 4\n'
                    '[model]\nname = "forecast-mlp"\nhidden = [8]\n')
    return path


def run_on_data(cli, task: Path, data: Path, results_dir: Path):
    return cli("run", "--task", str(task), "--method", "map", "--budget", "ci", "--data-dir", str(data),
               "--results-dir", str(results_dir), *CPU)


@pytest.mark.parametrize(
    ("write", "fragments"),
    [
        (lambda path: path.write_text("date,HUFL,OT\n"), ["0 data row(s)", "at least 3 dated rows"]),
        (lambda path: write_ettm1(path.parents[1], with_date(5, "2016-13-45 00:00:00")),
         ["column 'date'", "data row 5 holds '2016-13-45 00:00:00'", "rows with a bad date: 1"]),
    ],
    ids=["header-only", "bad-date-in-row-5"],
)
def test_a_csv_that_fails_to_parse_stops_run_before_any_work(cli, tmp_path, results_dir, write, fragments):
    path = write_ettm1(tmp_path / "data")
    write(path)
    result = run_on_data(cli, ettm1_task(tmp_path), tmp_path / "data", results_dir)
    assert_usage_error(result, str(path), *fragments)
    assert "Traceback" not in result.stderr and not results_dir.exists()


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (b"", ["not a long-term forecasting CSV", "EmptyDataError"]),
        (b"\x89PNG\r\n\x1a\n" * 8, ["not a long-term forecasting CSV", "UnicodeDecodeError"]),
        ("\n".join(["date,HUFL,OT", *(f"{date},1,2{',3,4' if i == 5 else ''}" for i, date in enumerate(DATES))]
                   ).encode(), ["not a long-term forecasting CSV", "ParserError", "Expected 3 fields in line 7"]),
        (b"time,HUFL,OT\n1,2,3\n", ["no 'date' column", "time, HUFL, OT"]),
        ("\n".join(["date,HUFL,OT", *(f"{date},1,{i}" for i, date in enumerate(with_date(7, "")))]).encode(),
         ["data row 7 holds nothing"]),
        ("\n".join(["date,HUFL,OT", *(f"{i},1,{i}" for i in range(ROWS))]).encode(),  # not epochs: not dates
         ["data row 1 holds '0'", "rows with a bad date: 120"]),
        ("\n".join(["date,HUFL,OT", *(f"{date},1,2" for date in reversed(DATES))]).encode(),
         ["must increase row by row", "data row 2 (2016-07-02 05:30:00)"]),
        ("\n".join(["date,HUFL,OT", *(f"{date}{'+01:00' if i % 2 else '+02:00'},1,2" for i, date in
                                      enumerate(DATES))]).encode(), ["mixes time zones"]),
    ],
    ids=["empty", "binary", "ragged", "no-date-column", "empty-date", "integers", "backwards", "time-zones"],
)
def test_every_csv_that_fails_to_parse_is_one_line_naming_the_file(tmp_path, content, fragments):
    path = write_ettm1(tmp_path)
    path.write_bytes(content)
    with pytest.raises(UsageError) as error:
        read_series(Config(dataset="ETTm1", context_length=8, prediction_length=4), tmp_path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message, message


def test_a_month_end_csv_reads_as_monthly_periods(tmp_path):
    write_ettm1(tmp_path, list(pd.date_range("2000-01-31", periods=ROWS, freq="ME").strftime("%Y-%m-%d")))
    [series] = read_series(Config(dataset="ETTm1", context_length=8, prediction_length=4), tmp_path)
    assert series.start.freqstr == "M" and str(series.start) == "2000-01"


# ----------------------------------------------------------------------------------- CIFAR pickles and .npy


class _Tampered:
    """Pickles as a uint8 array whose dtype state sets flags no uint8 has (object references and more)."""

    def __init__(self, flags: int) -> None:
        self.flags = flags

    def __reduce__(self):
        state = (3, "|", None, None, None, -1, -1, self.flags)
        dtype = _Reduced(np.dtype, ("u1", False, True), state)
        return (np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                (1, (1, 3072), dtype, False, bytes(3072)))


class _Reduced:
    def __init__(self, function, args, state) -> None:
        self.reduced = (function, args, state)

    def __reduce__(self):
        return self.reduced


def pickled(content: object) -> bytes:
    return pickle.dumps(content, protocol=4)


BAD_BATCHES = [
    (lambda good: good[: len(good) // 2], ["not a CIFAR python pickle", "UnpicklingError"]),
    (lambda good: b"\x80\x02Pid\n.", ["UnpicklingError: A load persistent id instruction was encountered,"]),
    (lambda good: b"\x80\x04\x95" + b"\xff" * 8 + good[11:], ["not a CIFAR python pickle"]),
    (lambda good: pickled({b"data": [[1, 2], [3]], b"labels": [0, 1]}), ["'data' is not an array", "inhomogeneous"]),
    (lambda good: pickled({b"data": _Tampered(1), b"labels": [0]}), ["'data' has a damaged dtype", "flags 1"]),
    (lambda good: pickled({b"data": _Tampered(63), b"labels": [0]}), ["not a CIFAR python pickle"]),
]


@pytest.mark.parametrize(("damage", "fragments"), BAD_BATCHES,
                         ids=["truncated", "persistent-id", "huge-frame", "ragged", "dtype-flags", "dtype-refcount"])
def test_a_damaged_cifar_batch_is_one_line_and_no_traceback(tmp_path, capsys, damage, fragments):
    write_cifar10(tmp_path, batches=(1,), n=4)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(UsageError) as error:
        read_cifar(tmp_path, "cifar10")
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message, message
    assert capsys.readouterr().err == ""  # numpy's unraisable reports are part of the line, not a traceback


def test_class_names_that_are_not_utf8_are_refused(tmp_path):
    write_cifar10(tmp_path, batches=(1,), n=4)
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    pickle_file(meta, {b"label_names": [b"cat\xff", *[b"dog"] * 9]})
    with pytest.raises(UsageError, match=r"batches\.meta: 'label_names' holds a class name that is not UTF-8"):
        read_cifar(tmp_path, "cifar10")


def test_a_truncated_cifar_batch_stops_run_before_any_work(cli, tmp_path, results_dir):
    data = tmp_path / "data"
    write_cifar10(data, batches=(1,), n=100, n_test=12)
    batch = data / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:5000])
    result = run_on_data(cli, cifar_task(tmp_path), data, results_dir)
    assert_usage_error(result, str(batch), "not a CIFAR python pickle")
    assert "Traceback" not in result.stderr and not results_dir.exists()


@pytest.mark.parametrize(("cut", "fragments"), [(60, ["not a numpy .npy array"]), (200, ["not a numpy .npy array"]),
                                                (0, ["not a numpy .npy array"])])
def test_a_truncated_cifar10c_file_is_one_line(tmp_path, cut, fragments):
    written = write_cifar10(tmp_path, batches=(1,), n=100, n_test=4)
    write_cifar10c(tmp_path, ["fog"], n=4, labels=written["test_labels"])
    path = tmp_path / "CIFAR-10-C" / "fog.npy"
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(UsageError) as error:
        load_data({"source": "cifar10", "ood": "none"}, root=tmp_path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message, message


# ------------------------------------------------------------------------------- refused OOD sets are told


def cifar_task(tmp_path: Path) -> Path:
    """A task file that includes the built-in CIFAR-10 ViT task with a tiny ViT (fast on a CPU), no corruptions."""
    path = tmp_path / "cifar10-tiny.toml"
    path.write_text(f'include = "{builtin_tasks_dir() / "cifar10-vit.toml"}"\nname = "cifar10-tiny"\nversion = 1\n'
                    '[model]\nname = "vit"\npatch_size = 8\nembed_dim = 16\ndepth = 1\nnum_heads = 2\n'
                    '[eval]\ncorruptions = "none"\n')
    return path


@pytest.fixture
def image_root(tmp_path) -> Path:
    """CIFAR-10 (100 training images, 12 test images), CIFAR-100 (9 test images) and SVHN (7 test images)."""
    root = tmp_path / "data"
    write_cifar10(root, batches=(1,), n=100, n_test=12)
    write_cifar100(root, random_images(20, 5), list(range(20)), random_images(9, 6), list(range(9)))
    write_svhn_test(root, random_images(7, 7), [10, 1, 2, 3, 4, 5, 6])
    return root


def ood_rows(run_json: Path) -> set[str]:
    rows = pd.read_csv(run_json.with_name("metrics.csv"))
    return set(rows.loc[rows["split"] == "ood", "corruption"])


def test_a_corrupt_cifar100_test_file_is_warned_about_and_recorded(cli, tmp_path, image_root, results_dir):
    test_file = image_root / "cifar-100-python" / "test"
    test_file.write_bytes(test_file.read_bytes()[:1000])
    result = run_on_data(cli, cifar_task(tmp_path), image_root, results_dir)
    assert result.code == 0, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("warning: out-of-distribution set 'cifar100' left out: ") and str(test_file) in line
    assert "not a CIFAR python pickle" in line
    [run_json] = results_dir.glob("*/*/*/run.json")
    info = json.loads(run_json.read_text())["data_info"]
    assert info["ood_missing"] == [] and info["ood_sets"] == ["svhn"]
    assert list(info["ood_refused"]) == ["cifar100"] and str(test_file) in info["ood_refused"]["cifar100"]
    assert ood_rows(run_json) == {"svhn", "mean"}


def test_an_absent_cifar100_is_missing_without_a_warning(cli, tmp_path, image_root, results_dir):
    shutil.rmtree(image_root / "cifar-100-python")
    result = run_on_data(cli, cifar_task(tmp_path), image_root, results_dir)
    assert result.code == 0 and result.stderr.strip() == "", result.stderr
    [run_json] = results_dir.glob("*/*/*/run.json")
    info = json.loads(run_json.read_text())["data_info"]
    assert info["ood_missing"] == ["cifar100"] and info["ood_refused"] == {} and info["ood_sets"] == ["svhn"]


@pytest.mark.parametrize(
    ("name", "damage", "fragments"),
    [
        ("cifar100", lambda root: pickle_file(root / "cifar-100-python" / "test",
                                              {b"data": np.zeros((50, 3071), np.uint8), b"fine_labels": [0] * 50}),
         ["cifar-100-python/test", "'data' must be uint8 of shape (n, 3072), got uint8 (50, 3071)"]),
        ("cifar100", lambda root: (root / "cifar-100-python" / "meta").write_bytes(pickled({"x": _Hostile()})),
         ["cifar-100-python/meta", "refused global"]),
        ("svhn", lambda root: scipy.io.savemat(root / "svhn" / "test_32x32.mat",
                                               {"X": np.zeros((32, 32, 3), np.uint8), "y": np.zeros((1, 1))}),
         ["test_32x32.mat", "'X' must be uint8 of shape (32, 32, 3, N)"]),
    ],
    ids=["cifar100-wrong-shape", "cifar100-hostile-meta", "svhn-wrong-shape"],
)
def test_refused_ood_files_are_told_apart_from_absent_ones(image_root, capsys, name, damage, fragments):
    damage(image_root)
    loaded = load_data({"source": "cifar10"}, root=image_root)
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"warning: out-of-distribution set '{name}' left out: ")
    assert set(loaded.info["ood_refused"]) == {name} and name not in loaded.ood and loaded.info["ood_missing"] == []
    for fragment in fragments:
        assert fragment in line and fragment in loaded.info["ood_refused"][name], line
    assert not (image_root / "hostile-ran").exists()


def test_an_ood_set_is_read_from_its_test_files_alone(image_root, capsys):
    (image_root / "cifar-100-python" / "train").write_bytes(b"garbage")  # not read: CIFAR-100 is only OOD here
    loaded = load_data({"source": "cifar10"}, root=image_root)
    assert sorted(loaded.ood) == ["cifar100", "svhn"] and len(loaded.ood["cifar100"]) == 9
    assert loaded.info["ood_refused"] == {} and capsys.readouterr().err == ""


def test_a_refused_ood_set_that_the_task_names_is_an_error(image_root):
    (image_root / "cifar-100-python" / "test").write_bytes(b"garbage")
    with pytest.raises(UsageError, match=r"cifar-100-python/test: not a CIFAR python pickle"):
        load_data({"source": "cifar10", "ood": ["cifar100"]}, root=image_root)


class _Hostile:
    def __reduce__(self):
        return (os.mkdir, ("hostile-ran",))  # what a hostile meta file would run, were it unpickled freely
