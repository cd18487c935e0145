"""bnnbench's version, the one source: the package metadata (pyproject's dynamic version) and every record read it
here, in a module that imports nothing, so that any layer may."""

__version__ = "0.1.0"
