"""bnnbench: which posterior-inference method gives the best uncertainty for this network and data, at what cost.

The Python API is `bnnbench.api`: `run`, `sweep`, `tune`, `compare` and `load_results`, the functions the command
line itself calls. `bnnbench.run`, `bnnbench.compare` and `bnnbench.load_results` are the same functions, imported on
first use, so `import bnnbench` stays as light as the command line needs. (No submodule may share their names:
importing it would replace the function on the package; hence `comparison.py`. `bnnbench.sweep` and `bnnbench.tune`
are the modules that do that work, so their functions are reached as `bnnbench.api.sweep` and `bnnbench.api.tune`.)"""

from bnnbench.version import __version__

__all__ = ["__version__", "compare", "load_results", "run"]


def __getattr__(name: str):
    if name in ("compare", "load_results", "run"):
        from bnnbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'bnnbench' has no attribute '{name}'")
