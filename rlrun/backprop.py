"""An MLP's forward and backward written out as plain tensor ops: a gradient step without autograd.

On a CPU the networks RL trains are small enough that autograd's bookkeeping is a large part of a gradient step:
recording the graph in the forward pass, the engine walking it node by node in the backward pass, and the
gradients then copied into the optimizer's flat buffer. Inside DQN's update at rl-zoo's LunarLander settings
(batch 128, [256, 256] ReLU; the phase's target pass and sampling included) a gradient step took ~1,245 µs
written out against ~1,540 µs through autograd, the same kernels on one thread (bench/results.md, session 28).

`MLPBackprop.forward` runs the MLP's layers as `nn.Linear` and the activation modules do, keeping what the
backward needs; `backward(grad_output)` then writes each trainable parameter's gradient with the same aten
kernels autograd's `AddmmBackward0` and the activations' backward nodes call (`mm`, `sum`,
`threshold_backward`, ...), so the gradients are those of `loss.backward()` after `zero_grad()`: *written*, not
added, and into the existing `.grad` tensors where there are some (the optimizer's flat gradient buffer, see
`FusedAdam`), so nothing is copied. Frozen parameters (`requires_grad=False`, transfer learning) get none, and
the backward stops below the lowest layer that trains.

`MLPBackprop(mlp, bf16=True)` stands in for the MLP under `bf16_autocast` (`algo.bf16`): it casts the hidden
layers' inputs, weights and biases to bfloat16 and keeps the head in fp32, as autocast and `MLP.forward` do, and
casts each gradient back to its fp32 parameter: autocast-and-autograd's results, bit for bit.

`MLPBackprop.usable()` says where it can stand in for autograd: a CPU, fp32 weights, no autocast active around
it, and no hooks on the modules or parameters (autograd would run them; this does not). Elsewhere the caller
uses autograd, as before.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_globals

from rlrun.networks import MLP

aten = torch.ops.aten

# activation module type → (forward on the pre-activation, backward from (grad, pre-activation, output)). The
# backward ops are the ones autograd records for each activation; ReLU and Tanh take theirs from the output, so
# their forward can run in place.
Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]
Backward = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
ACTIVATION_GRADS: dict[type[nn.Module], tuple[Forward, Backward]] = {
    nn.ReLU: (lambda m, x: x.relu_(),
              lambda m, g, x, y: aten.threshold_backward(g, y, 0)),
    nn.Tanh: (lambda m, x: x.tanh_(),
              lambda m, g, x, y: aten.tanh_backward(g, y)),
    nn.ELU: (lambda m, x: F.elu(x, m.alpha),
             lambda m, g, x, y: aten.elu_backward(g, m.alpha, 1, 1, False, x)),
    nn.GELU: (lambda m, x: F.gelu(x, approximate=m.approximate),
              lambda m, g, x, y: aten.gelu_backward(g, x, approximate=m.approximate)),
    nn.SiLU: (lambda m, x: F.silu(x),
              lambda m, g, x, y: aten.silu_backward(g, x)),
    nn.LeakyReLU: (lambda m, x: F.leaky_relu(x, m.negative_slope),
                   lambda m, g, x, y: aten.leaky_relu_backward(g, x, m.negative_slope, False)),
}


class MLPBackprop:
    """Forward and backward of one `MLP` without autograd (module docstring). Not thread-safe: `forward` keeps
    the activations that the next `backward` uses."""

    def __init__(self, mlp: MLP, bf16: bool = False):
        self.mlp = mlp
        linears = [m for m in mlp.body if isinstance(m, nn.Linear)] + [mlp.head]
        activations = [m for m in mlp.body if not isinstance(m, nn.Linear)]
        self.layers: list[tuple[nn.Linear, nn.Module | None]] = list(zip(linears, [*activations, None]))
        self.supported = (len(activations) == len(linears) - 1
                          and all(type(m) in ACTIVATION_GRADS for m in activations)
                          and all(linear.bias is not None for linear in linears)
                          and list(mlp.body) == [m for pair in self.layers[:-1] for m in pair])
        # Listed by `usable()`, not at every `backward`: walking the module tree costs ~15 µs a call.
        self.modules = list(mlp.modules())
        self.params = list(mlp.parameters())
        # With `bf16`, the hidden layers compute in bfloat16 and the head in fp32, as `MLP.forward` runs them
        # under `bf16_autocast` (algo.bf16): per layer, the dtype its input, weight and bias are cast to, or
        # None for no cast (fp32 throughout).
        self.casts: list[torch.dtype | None] = (
            [torch.bfloat16] * (len(self.layers) - 1) + [torch.float32] if bf16 else [None] * len(self.layers))
        self._saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._input_dtype = torch.float32

    def usable(self) -> bool:
        """Whether `forward`/`backward` compute what autograd would here, now (module docstring)."""
        if not self.supported or torch.is_autocast_enabled("cpu"):
            return False
        self.params = list(self.mlp.parameters())
        if (module_globals._global_forward_hooks or module_globals._global_forward_pre_hooks
                or module_globals._global_backward_hooks or module_globals._global_backward_pre_hooks):
            return False
        if has_hooks(self.modules):
            return False
        for p in self.params:
            if not p.is_cpu or p.dtype != torch.float32 or p._backward_hooks or p._post_accumulate_grad_hooks:
                return False
        return True

    def forward(self, x: torch.Tensor, keep: bool = True) -> torch.Tensor:
        """The MLP's output for `x` ([batch, in]); with `keep`, keeping each layer's input, pre-activation, output
        and (cast) weight for the next `backward` (without, what an earlier forward kept stays)."""
        saved = []
        if keep:
            self._saved, self._input_dtype = saved, x.dtype
        with torch.no_grad():
            for (linear, activation), cast in zip(self.layers, self.casts):
                weight, bias = linear.weight, linear.bias
                if cast is not None:  # autocast's casts to bf16; the head's features.float() (MLP.forward)
                    x, weight, bias = x.to(cast), weight.to(cast), bias.to(cast)
                pre = F.linear(x, weight, bias)
                if activation is None:
                    saved.append((x, pre, pre, weight))
                    return pre
                keep_pre = type(activation) not in (nn.ReLU, nn.Tanh)  # those two run in place on it
                out = ACTIVATION_GRADS[type(activation)][0](activation, pre)
                saved.append((x, pre if keep_pre else out, out, weight))
                x = out
        raise AssertionError("unreachable: the last layer has no activation")

    def backward(self, grad_output: torch.Tensor, parameters: bool = True,
                 input_grad: bool = False) -> torch.Tensor | None:
        """Backpropagate d(loss)/d(output) of the last `forward`.

        With `parameters`, write d(loss)/d(parameter) into each trainable parameter's `.grad`, as `zero_grad()`
        then `loss.backward()` would leave them; without, leave every `.grad` alone (as `backward(inputs=...)`
        naming other tensors does). With `input_grad`, return d(loss)/d(input), else None.
        """
        layers = self.layers
        lowest = len(layers)  # the lowest layer whose parameters get gradients
        if parameters:
            for param in self.params:
                if not param.requires_grad:
                    param.grad = None  # as zero_grad() leaves it: backward gives a frozen parameter none
            trains = [linear.weight.requires_grad or linear.bias.requires_grad for linear, _ in layers]
            lowest = trains.index(True) if True in trains else len(layers)
        stop = 0 if input_grad else lowest  # how far down the gradient must go
        grad = grad_output
        with torch.no_grad():
            for k in range(len(layers) - 1, stop - 1, -1):
                linear, activation = layers[k]
                x, pre, out, weight = self._saved[k]
                if self.casts[k] is not None:  # autograd casts a gradient to its tensor's dtype
                    grad = grad.to(x.dtype)
                if activation is not None:
                    grad = ACTIVATION_GRADS[type(activation)][1](activation, grad, pre, out)
                if k >= lowest and linear.weight.requires_grad:  # AddmmBackward0's, computed in the weight's layout
                    _write_grad(linear.weight, torch.mm, grad.t(), x)
                if k >= lowest and linear.bias.requires_grad:
                    _write_grad(linear.bias, torch.sum, grad, 0)
                if k > stop or input_grad:
                    grad = torch.mm(grad, weight)
        self._saved = []
        return grad.to(self._input_dtype) if input_grad else None


def _write_grad(param: nn.Parameter, op: Callable[..., torch.Tensor], *args: object) -> None:
    """param.grad = op(*args), cast to the parameter's dtype (a bf16 layer's gradient, as autocast's cast-back
    leaves it), written into the existing `.grad` where there is one: a view of the optimizer's flat gradient."""
    if param.grad is None:
        param.grad = op(*args).to(param.dtype)
    elif param.grad.dtype == args[0].dtype:
        op(*args, out=param.grad)
    else:
        param.grad.copy_(op(*args))


def has_hooks(modules: list[nn.Module]) -> bool:
    """Whether any of `modules` has a forward or backward hook of its own (one that autograd's path would run)."""
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in modules)
