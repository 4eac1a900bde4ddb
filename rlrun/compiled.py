"""`torch.compile` for the options that ask for it (`algo.compile`: PPO, DDPG, TD3, SAC), with a clear error where
it fails.

Compiling is lazy: the first call traces the function and compiles it (TorchInductor: fused C++ loops on a
CPU, which needs a C++ compiler, and Triton kernels on a GPU), later calls run the compiled code. Shapes are
static (`dynamic=False`): a minibatch of another size, or another value of a bool argument, compiles one more
version. Python floats would be baked in as constants, so a value that changes between calls (an annealed
coefficient) must be passed as a tensor. Compiled code fuses the element-wise work between the matrix
multiplies, so its results differ from eager execution by float rounding: a compiled run is reproducible
from its seed, but is not bit-identical to the same run without compiling.

`cpp_wrapper=True` asks Inductor for its C++ wrapper: the code that allocates the buffers and calls the kernels, in
C++ instead of Python. The kernels are the same (PPO's weights hash the same after 32,768 env steps either way); it
pays where a graph is many small kernels (PPO's minibatch step on a CPU: +12% env steps/s, bench/results.md, session
31) and costs ~20 s more of compiling the first time a machine compiles the graph (Inductor caches it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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


# Compiled versions torch keeps per function before it falls back to running it eagerly (torch's default is 8).
# Settings read inside a compiled function are compiled in as constants, and a sweep's jobs run one after another
# in one process (Hydra's basic launcher): each distinct value (gamma, a network size) is one more version.
RECOMPILE_LIMIT = 64


def compiled(fn: Callable[..., Any], option: str, grads_of: Iterable[torch.nn.Parameter] = (),
             cpp_wrapper: bool = False) -> Callable[..., Any]:
    """`fn` compiled by torch.compile; a compile failure raises CompileError naming `option` (to switch off).

    `grads_of`: parameters whose `.grad` `fn` writes. Each trainable one gets a zero gradient before a call where it
    has none: torch.compile guards on `.grad is None`, and the optimizer's first step turns None into a tensor,
    which would compile every function twice (the first update, then the rest).
    """
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the newer name, then the older one
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
            break
    compiled_fn = torch.compile(fn, dynamic=False, options={"cpp_wrapper": True} if cpp_wrapper else None)
    params = list(grads_of)

    def call(*args: Any) -> Any:
        for param in params:
            if param.grad is None and param.requires_grad:
                param.grad = torch.zeros_like(param)
        try:
            return compiled_fn(*args)
        except COMPILE_FAILURES as exc:
            raise CompileError(
                f"{option}=true: torch.compile could not compile {getattr(fn, '__qualname__', fn)} ({first_line(exc)}). "
                f"On a CPU it needs a working C++ compiler (g++, or the one $CXX names); on a GPU, Triton. "
                f"Run with {option}=false.") from None

    return call
