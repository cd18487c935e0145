"""bnnbench: which posterior-inference method gives the best uncertainty for this network and data, at what cost."""

__version__ = "0.1.0"
__all__ = ["__version__"]
