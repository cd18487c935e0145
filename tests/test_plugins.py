"""The plugin API: one MethodSpec per method, entry-point plugins, `--method package.module:attr`, where a method
comes from (listing, run.json, run id), and the example plugin (temperature scaling) against a reference."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from bnnbench import methods
from bnnbench.errors import UsageError
from bnnbench.results import config_hash
from bnnbench.runner import prepare
from bnnbench.types import FitContext, MethodSpec

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "bnnbench-temperature-scaling"
REFERENCE = "bnnbench_temperature_scaling:SPEC"
# map's configuration hash on digits-mlp with the ci budget since the run id covers the whole configuration (issue
# 30): moving code must not move it
MAP_DIGITS_CI_HASH = "1aa17d21a68267d2572211b84a0a87cdee293c225778d917030038d15c64e3dd"


@pytest.fixture
def example(monkeypatch):
    """The example plugin's module, importable from its source folder (not installed)."""
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    return importlib.import_module("bnnbench_temperature_scaling")


@pytest.fixture
def plugins(monkeypatch):
    """`plugins(*(name, value, distribution, version))`: a fresh method registry that discovers these entry points
    instead of the installed ones."""
    def install(*points: tuple[str, str, str, str]) -> None:
        found = [SimpleNamespace(name=name, value=value, group=methods.PLUGIN_GROUP,
                                 dist=SimpleNamespace(name=distribution, version=version))
                 for name, value, distribution, version in points]

        def entry_points(group: str):
            return [point for point in found if point.group == group]

        monkeypatch.setattr("importlib.metadata.entry_points", entry_points)
        monkeypatch.setattr(methods, "METHODS", methods.method_registry())

    return install


def tiny_task(directory: Path, name: str = "digits-tiny", extra: str = "") -> Path:
    """A digits-mlp variant that runs in seconds (2 epochs, no corruptions), in its own folder for --tasks-dir."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.toml").write_text(
        f'include = "{REPO / "tasks" / "digits-mlp.toml"}"\nname = "{name}"\n'
        'description = "digits-mlp for tests: 2 epochs, no corruptions"\n'
        '[budget]\nmax_epochs = 2\nn_eval_samples = 1\n[eval]\ncorruptions = "none"\n' + extra)
    return directory


# --- one spec per method -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "reference", "summary"), methods.BUILT_IN)
def test_every_built_in_declares_one_spec_that_the_registry_names(name, reference, summary):
    spec = methods.METHODS.get(name)
    assert isinstance(spec, MethodSpec) and spec.name == name
    assert summary and spec.summary == ""  # a built-in's summary lives in the registry alone (listing imports no torch)
    module = importlib.import_module(reference.partition(":")[0])
    assert not hasattr(module, "build")  # binding is generic: no module repeats its name in a build


def test_built_in_run_ids_did_not_change_and_carry_no_origin():
    plan = prepare("digits-mlp", "map", budget_name="ci", device="cpu", load=False)
    assert plan.method.origin is None
    assert plan.config_hash == MAP_DIGITS_CI_HASH


def test_hyper_parameters_resolve_defaults_then_train_then_methods_table_then_set(tmp_path):
    from bnnbench.tasks import load_task

    path = tiny_task(tmp_path, extra='[train]\nlr = 0.002\nbatch_size = 64\n[methods.map]\nlr = 0.003\n') / \
        "digits-tiny.toml"
    task = load_task(path)
    bound = methods.build_method("map", task, {"batch_size": 32}).hparams
    assert (bound.lr, bound.batch_size, bound.weight_decay) == (0.003, 32, 1e-4)  # table, --set, digits' [train]
    with pytest.raises(UsageError, match="unknown hyper-parameter of method 'map' 'lrr' \\(did you mean 'lr'\\?\\)"):
        methods.build_method("map", task, {"lrr": 1.0})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "Temperature Scaling"}, "must match"),
        ({"hparams_class": dict}, "frozen dataclass"),
        ({"fit": lambda task, model, data, budget, context: None}, "fit must be a function taking"),
    ],
)
def test_a_malformed_spec_is_refused_where_it_is_declared(example, change, message):
    with pytest.raises((TypeError, ValueError), match=message):
        dataclasses.replace(example.SPEC, **change)


# --- the example plugin's temperature fit -------------------------------------------------------------------------

def reference_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """argmin over T of the mean NLL of softmax(logits / T), by scipy's bounded Brent search on log T."""
    def nll(log_temperature: float) -> float:
        scaled = logits / np.exp(log_temperature)
        return float(np.mean(logsumexp(scaled, axis=1) - scaled[np.arange(len(labels)), labels]))

    result = minimize_scalar(nll, bounds=(-5.0, 5.0), method="bounded", options={"xatol": 1e-10})
    assert result.success
    return float(np.exp(result.x))


@pytest.mark.parametrize(("sharpness", "side"), [(6.0, "above 1"), (0.5, "below 1")])
def test_fitted_temperature_is_the_nll_minimiser(example, sharpness, side):
    # logits of a 70%-accurate classifier, made over- (sharpness 6) or under-confident (0.5): T must undo it
    generator = np.random.default_rng(0)
    labels = generator.integers(0, 5, size=400)
    guesses = np.where(generator.random(400) < 0.7, labels, generator.integers(0, 5, size=400))
    logits = sharpness * (np.eye(5)[guesses] + 0.3 * generator.standard_normal((400, 5)))
    fitted = example.fit_temperature(torch.from_numpy(logits), torch.from_numpy(labels))
    expected = reference_temperature(logits, labels)
    assert abs(fitted - expected) < 1e-3, (fitted, expected)
    assert (fitted > 1.0) if side == "above 1" else (fitted < 1.0)


def test_temperature_scaling_is_map_with_its_logits_divided_by_t(example, tmp_path):
    from bnnbench.data import load_data
    from bnnbench.models import create_model
    from bnnbench.tasks import load_task
    from bnnbench.types import Budget

    task = load_task(tiny_task(tmp_path) / "digits-tiny.toml")
    bundle = load_data(task.data).bundle
    torch.manual_seed(0)
    model = create_model(task.model, bundle.input_shape, bundle.num_outputs)
    context = FitContext(torch.device("cpu"), 0, False)
    map_fit = methods.build_method("map", task).fit
    scaled_fit = methods.build_method(REFERENCE, task).fit
    map_predictive, _ = map_fit(task, copy.deepcopy(model), bundle, Budget(max_epochs=2), context)
    scaled_predictive, info = scaled_fit(task, copy.deepcopy(model), bundle, Budget(max_epochs=2), context)

    temperature = info.extra["temperature"]
    map_val = map_predictive.predict(bundle.val.x, 1)[0]  # log softmax(logits): logits up to a per-row constant
    assert temperature == pytest.approx(example.fit_temperature(map_val, bundle.val.y), rel=1e-5)
    scaled_test = scaled_predictive.predict(bundle.val.x[:50], 1)
    torch.testing.assert_close(scaled_test[0], torch.log_softmax(map_val[:50] / temperature, -1))
    assert info.extra["val_nll_after"] < info.extra["val_nll_before"]  # after 2 epochs MAP is far from calibrated
    map_val_nll = float(-map_val.gather(1, bundle.val.y[:, None]).mean())
    assert info.extra["val_nll_before"] == pytest.approx(map_val_nll, rel=1e-5)


def test_regression_tasks_are_refused_before_anything_runs(cli, example, results_dir):
    result = cli("run", "--task", "ts-co2-mlp", "--method", REFERENCE, "--results-dir", str(results_dir))
    assert result.code == 2 and "fits only categorical likelihoods, not 'gaussian'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not results_dir.exists()


# --- --method package.module:attr and --tasks-dir -----------------------------------------------------------------

def test_method_by_module_path_runs_with_a_tasks_dir_and_records_where_it_came_from(cli, example, tmp_path):
    tasks = tiny_task(tmp_path / "tasks", extra="[methods.temperature-scaling]\ntemperature_iterations = 50\n")
    results = tmp_path / "results"
    result = cli("run", "--task", "digits-tiny", "--method", REFERENCE, "--tasks-dir", str(tasks),
                 "--results-dir", str(results), "--device", "cpu", "--quiet")
    assert result.code == 0, result.stderr
    (run_json,) = results.glob("digits-tiny/temperature-scaling/*/run.json")
    record = json.loads(run_json.read_text())
    assert record["method"] == "temperature-scaling" and record["hparams"]["temperature_iterations"] == 50
    origin = record["method_origin"]
    assert origin["reference"] == REFERENCE
    identity = record["identity_config"]
    assert record["config_hash"] == config_hash(identity)
    # where the code comes from is part of the run's identity
    assert identity["method_origin"] == {"distribution": origin["distribution"], "version": origin["version"]}
    extra = record["fit_extra"]
    assert extra["temperature"] > 0 and extra["val_nll_after"] < extra["val_nll_before"]
    metrics = run_json.with_name("metrics.csv").read_text()
    assert "temperature-scaling" in metrics and ",test,none,0,nll," in metrics


@pytest.mark.parametrize(
    ("method", "fragment"),
    [
        ("no_such_package.module:SPEC", "cannot be loaded: ModuleNotFoundError: No module named 'no_such_package'"),
        ("bnnbench.methods.map:NOPE", "cannot be loaded: AttributeError"),
        ("bnnbench.methods.map:Hparams", "is a type, not a bnnbench.types.MethodSpec"),
        ("bnnbench.methods.map:", "expected a method name or package.module:attr"),
    ],
)
def test_a_bad_method_path_is_one_line_and_exit_2(cli, results_dir, method, fragment):
    result = cli("run", "--task", "digits-mlp", "--method", method, "--results-dir", str(results_dir))
    assert result.code == 2 and fragment in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not results_dir.exists()


def test_a_module_spec_may_not_take_a_built_in_name(example, monkeypatch):
    monkeypatch.setattr(example, "IMPOSTOR", MethodSpec("map", example.Hparams, example.fit, "not map"),
                        raising=False)
    with pytest.raises(UsageError, match="is named 'map', which is taken by a built-in method"):
        methods.find_method("bnnbench_temperature_scaling:IMPOSTOR")


# --- entry-point plugins --------------------------------------------------------------------------------------------

def test_plugins_are_listed_with_their_distribution_and_the_version_enters_the_run_id(cli, example, plugins):
    plugins(("temperature-scaling", REFERENCE, "bnnbench-temperature-scaling", "0.1.0"))
    listed = cli("list", "methods")
    assert listed.code == 0 and listed.stderr == ""
    row = next(line for line in listed.stdout.splitlines() if "temperature-scaling" in line)
    assert "bnnbench-temperature-scaling 0.1.0" in row and "Guo et al. 2017" in row
    assert "built-in" in next(line for line in listed.stdout.splitlines() if "│ map " in line)

    first = prepare("digits-mlp", "temperature-scaling", budget_name="ci", device="cpu", load=False)
    assert first.method.origin.version == "0.1.0"
    by_path = prepare("digits-mlp", REFERENCE, budget_name="ci", device="cpu", load=False)
    assert by_path.config_hash == first.config_hash  # the installed plugin named by its module is the same code
    plugins(("temperature-scaling", REFERENCE, "bnnbench-temperature-scaling", "0.2.0"))
    second = prepare("digits-mlp", "temperature-scaling", budget_name="ci", device="cpu", load=False)
    assert second.config_hash != first.config_hash


def test_broken_plugins_are_one_warning_each_and_the_built_ins_still_list(cli, example, plugins, results_dir):
    plugins(("broken-import", "no_such_plugin_module:SPEC", "broken-dist", "1.0"),
            ("wrong-object", "bnnbench.methods.map:Hparams", "wrong-dist", "2.0"),
            ("map", REFERENCE, "clash-dist", "3.0"),
            ("misnamed", REFERENCE, "misnamed-dist", "4.0"))
    listed = cli("list", "methods")
    assert listed.code == 0
    for name, _, summary in methods.BUILT_IN:
        assert name in listed.stdout and summary in listed.stdout
    warnings = listed.stderr.strip().splitlines()
    assert len(warnings) == 4, listed.stderr
    for name, fragment in (("map", "clash-dist 3.0 is ignored: the name is taken by a built-in method"),
                           ("broken-import", "ModuleNotFoundError: No module named 'no_such_plugin_module'"),
                           ("wrong-object", "is a type, not a bnnbench.types.MethodSpec"),
                           ("misnamed", "its MethodSpec is named 'temperature-scaling'")):
        assert sum(line.startswith(f"warning: method plugin '{name}'") and fragment in line
                   for line in warnings) == 1, (name, warnings)
    assert "broken-import" not in listed.stdout and "maximum a posteriori" in listed.stdout

    asked = cli("run", "--task", "digits-mlp", "--method", "broken-import", "--results-dir", str(results_dir))
    assert asked.code == 2 and "method plugin 'broken-import' from broken-dist 1.0 cannot be loaded" in asked.stderr


def test_two_plugins_of_one_name_keep_the_first_and_warn_about_the_second(cli, example, plugins):
    plugins(("temperature-scaling", REFERENCE, "b-dist", "1.0"), ("temperature-scaling", REFERENCE, "a-dist", "2.0"))
    listed = cli("list", "methods")
    assert listed.code == 0 and "a-dist 2.0" in listed.stdout and "b-dist" not in listed.stdout
    assert listed.stderr.strip().splitlines() == [
        "warning: method plugin 'temperature-scaling' from b-dist 1.0 is ignored: the name is taken by the plugin "
        "from a-dist 2.0"]


# --- the example, installed for real ------------------------------------------------------------------------------

def test_installed_example_lists_runs_and_compares(tmp_path):
    """`pip install -e` of the example into a throwaway virtual environment layered over this one (so the
    environment the suite runs in is left as it was), then the real command line in a subprocess. About 14 s on
    two cores (a ci-budget digits run is most of it): under the 30 s past which a test is marked slow."""
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site_packages = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    # the throwaway environment sees this one's packages (torch, setuptools, ...) as a site directory of its own
    Path(site_packages, "_base_environment.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_path('purelib')!r})\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                              "--no-build-isolation", "--no-deps", "--no-index", "-e", str(EXAMPLE)],
                             capture_output=True, text=True)
    if install.returncode != 0:
        pytest.skip(f"pip cannot install the example here: {(install.stderr.strip().splitlines() or [''])[-1]}")

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")

    def bnnbench(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(python), "-m", "bnnbench", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path)

    listed = bnnbench("list", "methods")
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "temperature-scaling" in line)
    assert "bnnbench-temperature-scaling 0.1.0" in row

    results = tmp_path / "results"
    ran = bnnbench("run", "--task", "digits-mlp", "--method", "temperature-scaling", "--budget", "ci", "--seed", "0",
                   "--results-dir", str(results), "--device", "cpu", "--quiet")
    assert ran.returncode == 0, ran.stderr
    (run_json,) = results.glob("digits-mlp/temperature-scaling/*/run.json")
    record = json.loads(run_json.read_text())
    assert record["method_origin"] == {"distribution": "bnnbench-temperature-scaling", "version": "0.1.0",
                                       "reference": REFERENCE}
    assert record["fit_extra"]["temperature"] > 0
    assert record["fit_extra"]["val_nll_after"] < record["fit_extra"]["val_nll_before"]
    rows = run_json.with_name("metrics.csv").read_text().splitlines()
    assert len(rows) > 4 and any(",test,none,0,nll," in row for row in rows)

    compared = bnnbench("compare", "--results-dir", str(results), "--format", "csv")
    assert compared.returncode == 0, compared.stderr
    assert any(line.startswith("digits-mlp,") and ",temperature-scaling," in line
               for line in compared.stdout.splitlines()), compared.stdout
