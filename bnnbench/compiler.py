"""`--compile`: torch.compile of the task's network, opt-in, falling back to eager when compiling fails.

The model is compiled in place (`nn.Module.compile`), not wrapped (`torch.compile(model)`): the wrapper would
prefix every parameter name with `_orig_mod.`, and methods address weights by name (`named_parameters`,
`torch.func.functional_call`). In place, names, the state dict and `functional_call` are unchanged; a copy of the
model (`copy.deepcopy`) runs eager, because torch drops the compiled call when a module is copied or pickled.

Compiling happens on the first call, not at `compile()`: a missing compiler or an operation the compiler cannot
handle raises then, inside a method's fit. So the compiled call is guarded: the first compiler error (any
`torch._dynamo` exception) turns compiling off for good, says so in one warning line, and the call runs eager,
as does every model compiled afterwards by the same `ModelCompiler`. Errors of the network itself are raised
again by the eager call, as they would be without `--compile`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from bnnbench.errors import error_line

__all__ = ["ModelCompiler"]


def _warn(line: str) -> None:
    sys.stderr.write(f"warning: {line}\n")


class ModelCompiler:
    """`compiler(model)` compiles `model` in place when `enabled` and no compile has failed yet; returns it."""

    def __init__(self, enabled: bool, warn: Callable[[str], None] = _warn) -> None:
        self.enabled = enabled
        self.error: str | None = None  # the compiler's error, once compiling has been given up
        self._warn = warn

    def __call__(self, model):
        if not self.enabled or self.error is not None:
            return model
        try:
            model.compile()
        except Exception as error:  # torch without a dynamo backend here, or a module it refuses up front
            self._give_up(error)
            return model
        model._compiled_call_impl = self._guarded(model, model._compiled_call_impl)
        return model

    def _guarded(self, model, compiled: Callable) -> Callable:
        # nn.Module.compile stores torch.compile(module._call_impl) in `_compiled_call_impl`, which
        # `module.__call__` runs instead of `_call_impl`; this wraps that attribute, as no public hook exists.
        from torch._dynamo.exc import TorchDynamoException

        def call(*args, **kwargs):
            if self.error is None:
                try:
                    return compiled(*args, **kwargs)
                except TorchDynamoException as error:
                    self._give_up(error)
            model._compiled_call_impl = None  # eager from now on, without passing through here
            return model._call_impl(*args, **kwargs)

        return call

    def _give_up(self, error: BaseException) -> None:
        # A backend's failure says "backend='inductor' raised:" on its first line; what failed is the cause.
        cause = getattr(error, "inner_exception", None) or error.__cause__
        self.error = error_line(error) if cause is None else f"{type(error).__name__} ({error_line(cause)})"
        self._warn(f"torch.compile failed, running eager instead ({self.error})")
