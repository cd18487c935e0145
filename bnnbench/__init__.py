"""bnnbench: which posterior-inference method gives the best uncertainty for this network and data, at what cost.

`bnnbench.run`, `bnnbench.compare` and `bnnbench.load_results` are the Python API (`bnnbench.api`); they are
imported on first use, so `import bnnbench` stays as light as the command line needs. (No submodule may share
their names: importing it would replace the function on the package; hence `comparison.py`.)"""

from bnnbench.version import __version__

__all__ = ["__version__", "compare", "load_results", "run"]


def __getattr__(name: str):
    if name in ("compare", "load_results", "run"):
        from bnnbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'bnnbench' has no attribute '{name}'")
