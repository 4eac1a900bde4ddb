"""`torch.compile` for the options that ask for it (PPO's `algo.compile`), with a clear error where it fails.

Compiling is lazy: the first call traces the function and compiles it (TorchInductor: fused C++ loops on a
CPU, which needs a C++ compiler, and Triton kernels on a GPU), later calls run the compiled code. Shapes are
static (`dynamic=False`): a minibatch of another size, or another value of a bool argument, compiles one more
version. Python floats would be baked in as constants, so a value that changes between calls (an annealed
coefficient) must be passed as a tensor. Compiled code fuses the element-wise work between the matrix
multiplies, so its results differ from eager execution by float rounding: a compiled run is reproducible
from its seed, but is not bit-identical to the same run without compiling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch._dynamo.exc
import torch._inductor.exc

from rlrun.files import first_line

# The exceptions torch raises when a backend cannot compile. InductorError is newer than the oldest torch rlrun
# allows (2.4, the first with a fused CPU Adam); on a release without one, its failures surface as they are, unrenamed.
COMPILE_FAILURES: tuple[type[BaseException], ...] = tuple(
    error for error in (getattr(torch._dynamo.exc, "BackendCompilerFailed", None),
                        getattr(torch._inductor.exc, "InductorError", None)) if error is not None)


class CompileError(ValueError):
    """torch.compile could not compile a function an option asked to compile: the option does not fit this
    machine, so the command line reports it as bad input (one message, exit code 2)."""


def compiled(fn: Callable[..., Any], option: str) -> Callable[..., Any]:
    """`fn` compiled by torch.compile; a compile failure raises CompileError naming `option` (to switch off)."""
    compiled_fn = torch.compile(fn, dynamic=False)

    def call(*args: Any) -> Any:
        try:
            return compiled_fn(*args)
        except COMPILE_FAILURES as exc:
            raise CompileError(
                f"{option}=true: torch.compile could not compile {getattr(fn, '__qualname__', fn)} ({first_line(exc)}). "
                f"On a CPU it needs a working C++ compiler (g++, or the one $CXX names); on a GPU, Triton. "
                f"Run with {option}=false.") from None

    return call
