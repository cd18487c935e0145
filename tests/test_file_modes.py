"""Every writer gives its files the mode 0666 & ~umask and its directories 0777 & ~umask, as a plain `open` and
`mkdir` would (not the 0600/0700 of temporary files), and a killed write's leftovers go with the next write."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bnnbench import atomic
from bnnbench.results import write_run

RECORD = {"run_id": "r", "task": "t", "task_version": 1, "method": "m", "seed": 0, "config_hash": "c" * 64,
          "status": "ok", "error": ""}


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    """Run the test under this umask (restored afterwards)."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    try:
        yield 0o022
    finally:
        os.umask(old)


def modes(*paths: Path) -> dict[str, str]:
    """Octal mode of each path and of everything under each directory, by path."""
    found = {}
    for path in paths:
        for item in [path, *(sorted(path.rglob("*")) if path.is_dir() else [])]:
            found[str(item)] = oct(stat.S_IMODE(item.lstat().st_mode))
    return found


def expected(found: dict[str, str], umask: int) -> dict[str, str]:
    """The modes `found` should have: what `open` and `mkdir` give under `umask`."""
    return {name: oct((0o777 if Path(name).is_dir() else 0o666) & ~umask) for name in found}


def assert_modes(umask: int, *paths: Path) -> None:
    found = modes(*paths)
    assert found == expected(found, umask)
    assert not [name for name in found if Path(name).name.startswith(".")], "a temporary file was left"


@pytest.fixture(scope="module")
def run_results(tmp_path_factory) -> Path:
    """One real run (sanity-blr, map, 5 epochs: about a second), written under umask 022."""
    from bnnbench import runner

    results_dir = tmp_path_factory.mktemp("modes") / "results"
    old = os.umask(0o022)
    try:
        plan = runner.prepare("sanity-blr", "map", budget_name="ci", epochs=5, device="cpu", results_dir=results_dir,
                              save_predictions=True, show_progress=False)
        assert runner.run(plan, 0).status == "ok"
    finally:
        os.umask(old)
    return results_dir


def test_a_run_directory_is_0755_and_its_files_0644(run_results):
    [run_json] = run_results.glob("*/*/*/run.json")
    assert sorted(p.name for p in run_json.parent.iterdir()) == ["metrics.csv", "pointwise.npz", "predictions.npz",
                                                               "run.json"]
    assert_modes(0o022, run_results)
    assert modes(run_json.parent)[str(run_json.parent)] == "0o755"


def test_a_baseline_csv_is_0644(cli, run_results, tmp_path, umask022):
    out = tmp_path / "baselines" / "ci.csv"
    result = cli("baseline", "--results-dir", str(run_results), "--out", str(out))
    assert result.code == 0, result.stderr
    assert_modes(umask022, out.parent)
    assert modes(out) == {str(out): "0o644"}


def test_a_report_directory_is_0755_and_its_files_0644(run_results, tmp_path, umask022):
    from bnnbench.report import build_report

    out = tmp_path / "report"
    report = build_report(run_results, out)
    assert report.images and report.page.is_file()
    assert (out / "figures").is_dir()
    assert_modes(umask022, out)
    build_report(run_results, out)  # replacing an earlier report
    assert_modes(umask022, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_write_run_honours_the_umask(tmp_path, umask):
    directory = tmp_path / "t" / "m" / "r"
    write_run(directory, RECORD, [], extra_files={"traceback.txt": "boom\n"})
    write_run(directory, RECORD, [], predictions={"probs": np.zeros(2)})  # replacing the run
    assert_modes(umask, tmp_path / "t")
    assert sorted(p.name for p in directory.iterdir()) == ["predictions.npz", "run.json"]


def test_a_tuned_file_honours_the_umask(tmp_path, umask):
    from bnnbench.tasks import load_task
    from bnnbench.tuned import TuneOutcome, load_tuned, write_tuned

    path = tmp_path / "tuned" / "sanity-blr.toml"
    outcome = TuneOutcome(task="sanity-blr", objective="nll", direction="minimize", best={"map": {"lr": 0.01}},
                          summaries={"map": {"study": "s", "trials": 2}}, storage="sqlite:///x.db")
    write_tuned(path, load_task("sanity-blr"), outcome)
    assert load_tuned(path)["tuned"]["map"] == {"lr": 0.01}
    assert_modes(umask, path.parent)


def test_an_hmc_reference_pair_honours_the_umask(tmp_path, umask):
    from bnnbench.reference_files import load_reference, save_reference
    from bnnbench.tasks import load_task

    npz_path, json_path = save_reference(tmp_path / "refs", load_task("sanity-blr"), {"mean": np.arange(3.0)},
                                         {"format": 1})
    assert load_reference(npz_path)[1] == {"format": 1}
    assert_modes(umask, tmp_path / "refs")
    assert sorted(modes(tmp_path / "refs")) == sorted(map(str, [tmp_path / "refs", npz_path, json_path]))


def test_the_doctor_report_honours_the_umask(tmp_path, umask):
    from bnnbench.doctor import gpu_check
    from bnnbench.doctor_plan import CheckOptions

    out = tmp_path / "docs" / "gpu.md"
    options = CheckOptions(device="cpu", tiny=True, out=out, data_parent=tmp_path, budget_seconds=0.001,
                           methods=("map",))  # a budget spent at once: every stage skipped, the report written
    gpu_check(options, say=lambda line: None)
    assert "skipped" in out.read_text()
    assert_modes(umask, out.parent)


def test_a_corrupted_set_cache_file_honours_the_umask(tmp_path, monkeypatch, umask):
    from bnnbench.data.splits import CACHE_ENV, corrupted_images

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    first = corrupted_images(images, "gaussian_noise", 3, seed=0)
    [cached] = (tmp_path / "cache" / "corruptions").glob("*.npy")
    assert np.array_equal(np.load(cached), first)
    assert_modes(umask, tmp_path / "cache")


def _tar_gz(path: Path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_downloads_honour_the_umask(tmp_path, umask):
    from bnnbench.data.download import Archive, download

    plain, packed = tmp_path / "server" / "test_32x32.mat", tmp_path / "server" / "tiny-set.tar.gz"
    plain.parent.mkdir()
    plain.write_bytes(b"matlab bytes")
    archives = {"plain": Archive(plain.as_uri(), hashlib.md5(b"matlab bytes").hexdigest(), plain.name,
                                 "svhn/test_32x32.mat"),
                "packed": Archive(packed.as_uri(), _tar_gz(packed, {"tiny-set/sub/a.txt": b"alpha"}), packed.name,
                                  "tiny-set")}
    root = tmp_path / "data"
    download("plain", root, archives=archives, progress=False)
    download("packed", root, archives=archives, progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["svhn", "tiny-set"]
    assert (root / "tiny-set" / "sub" / "a.txt").read_bytes() == b"alpha"
    assert_modes(umask, root)


_KILLED = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from bnnbench import atomic

    path = Path(sys.argv[1])
    if sys.argv[2] == "file":
        atomic.write_with(path, lambda handle: os._exit(9))
    with atomic.write_directory(path) as staging:
        (staging / "half.txt").write_text("half")
        os._exit(9)
""")


def _killed_write(path: Path, kind: str) -> list[str]:
    """Leave what a writer of `path` killed mid-write leaves; return the names of its leftovers."""
    killed = subprocess.run([sys.executable, "-c", _KILLED, str(path), kind], capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def test_a_killed_file_write_is_cleared_by_the_next_write(tmp_path):
    path = tmp_path / "baseline.csv"
    atomic.write_text(path, "old\n")
    assert len(_killed_write(path, "file")) == 1
    atomic.write_text(path, "new\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baseline.csv"]
    assert path.read_text() == "new\n"


def test_a_killed_directory_write_is_cleared_but_a_live_writers_staging_is_kept(tmp_path):
    directory = tmp_path / "t" / "m" / "r"
    write_run(directory, RECORD, [])
    [left] = _killed_write(directory, "directory")
    assert (directory.parent / left / "half.txt").is_file()
    live = atomic.staging_directory(directory)  # this process's: still running, so not stale
    write_run(directory, dict(RECORD, which="new"), [])
    assert sorted(p.name for p in directory.parent.iterdir()) == sorted(["r", live.name])
    assert '"which": "new"' in (directory / "run.json").read_text()


def test_the_umask_is_read_without_changing_it():
    old = os.umask(0o027)
    try:
        assert atomic.umask() == 0o027
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)
