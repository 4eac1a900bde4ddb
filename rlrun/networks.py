"""MLP bodies and heads. Shapes come from the env's spaces; YAML only says widths and activation."""

from __future__ import annotations

import math
import platform
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.optim.optimizer as optimizer_module
from torch import nn

from rlrun.config import Activation, NetworkConfig

ACTIVATIONS: dict[Activation, type[nn.Module]] = {
    Activation.relu: nn.ReLU,
    Activation.tanh: nn.Tanh,
    Activation.elu: nn.ELU,
    Activation.gelu: nn.GELU,
    Activation.silu: nn.SiLU,
    Activation.leaky_relu: nn.LeakyReLU,
}


def obs_dim(space: gym.Space) -> int:
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(f"rlrun's MLPs need a Box observation space, got {space}")
    if len(space.shape) != 1:  # an image (H, W, C) or a matrix: an MLP takes a flat feature vector
        raise ValueError(f"rlrun's MLPs take a flat (1-D) observation vector, but this env observes {space} "
                         f"(shape {space.shape}, e.g. an image). Give it a flat one: a gymnasium "
                         f"FlattenObservation wrapper in an env you register and pass as env.id, or the env's "
                         f"state-vector variant")
    return int(space.shape[0])


def action_dim(space: gym.Space) -> int:
    """Number of discrete actions, or the size of a continuous action vector."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    return int(np.prod(space.shape))


class MLP(nn.Module):
    """`body` (Linear + activation per hidden layer) then a linear `head`.

    The split is what transfer learning works on: parameter names are `body.<2k>.weight` for hidden layer
    k and `head.weight` for the output layer.
    """

    def __init__(self, in_dim: int, out_dim: int, net: NetworkConfig, head_gain: float | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for hidden in net.hidden:
            layers += [nn.Linear(width, hidden), ACTIVATIONS[net.activation]()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_dim)
        if head_gain is not None:
            nn.init.orthogonal_(self.head.weight, gain=head_gain)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(x)
        if torch.is_autocast_enabled(x.device.type):
            # Under bf16 autocast (algo.bf16) the output layer stays fp32: its matmul is tiny, and bf16 outputs
            # would round Q-values to ~3 significant digits (argmax ties, quantised TD errors).
            with torch.autocast(x.device.type, enabled=False):
                return self.head(features.float())
        return self.head(features)


def orthogonal_init(module: nn.Module, gain: float = float(np.sqrt(2))) -> None:
    """Orthogonal weights, zero biases for every Linear in `module` (the PPO/A2C convention)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight, gain=gain)
            nn.init.zeros_(layer.bias)


@torch.no_grad()
def polyak_update(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    """target ← τ·source + (1 − τ)·target (τ = 1 is a hard copy)."""
    target_params = list(target.parameters())
    source_params = list(source.parameters())
    if tau >= 1.0:
        torch._foreach_copy_(target_params, source_params)
    else:
        torch._foreach_lerp_(target_params, source_params, tau)


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """Scale the gradients of `params` so their global L2 norm is at most `max_norm`; returns the norm before.

    The arithmetic of `torch.nn.utils.clip_grad_norm_` (coefficient max_norm / (norm + 1e-6), capped at 1) in
    three foreach calls, without its per-call grouping by device and dtype, which costs more than the maths
    itself on a small MLP (~70 → ~40 µs per PPO minibatch, measured). Parameters without a gradient (frozen)
    are skipped.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total, coefficient = norm_and_clip_coefficient(grads, max_norm)
    torch._foreach_mul_(grads, coefficient)
    return total


def norm_and_clip_coefficient(grads: list[torch.Tensor], max_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The global L2 norm of `grads` (per tensor, then over the norms) and torch.nn.utils.clip_grad_norm_'s
    scale for them: max_norm / (norm + 1e-6), capped at 1."""
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    return total, (max_norm / (total + 1e-6)).clamp(max=1.0)


def has_native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX on a CPU, Ampere+ on CUDA)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)  # the default counts emulation (V100, T4)
    if device.type == "cpu":
        if platform.machine().lower() in ("aarch64", "arm64"):  # Graviton3, Neoverse V1/V2: the BF16 extension
            return "bf16" in (cpuinfo_field("Features") or "").split()
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return True


def cpuinfo_field(name: str) -> str | None:
    """The first `name: value` of Linux's /proc/cpuinfo ("model name", "Features"), None where it is absent."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def check_bf16(device: torch.device) -> None:
    """`algo.bf16=true` on hardware without bfloat16 matmuls is refused: there they are emulated and slow."""
    if not has_native_bf16(device):
        capability = torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else torch.cuda.get_device_name()
        raise ValueError(
            f"algo.bf16=true needs hardware bfloat16 matrix multiplies (AVX512-BF16 or AMX on a CPU, an Ampere or "
            f"newer GPU); this {device.type} ({capability}) emulates them, 27-63× slower than fp32 (measured on an "
            f"AVX2 AMD EPYC). Leave algo.bf16=false here.")


def bf16_autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """Hidden-layer matmuls in bfloat16 (fp32 weights, optimizer, output layers and losses; see MLP.forward).

    On a CPU with AVX512-BF16 a [256, 400] × [400, 300] matmul ran at ~160-184 GFLOP/s in bf16 against ~80 in
    fp32, on one with AMX at ~860 against ~160 (measured), and the update of the replay-based algorithms (DQN,
    DDPG, TD3, SAC) is mostly matmul. Without hardware bf16 (AVX2 only) the same matmul ran at 3 GFLOP/s: `Run`
    refuses the option there (`check_bf16`). Wrap forward passes only: backward then runs each op in the dtype
    its forward chose, where under autocast it would also run the fp32 output layers' gradients in bf16 (and
    cast for them). The cast cache is off: a cached bf16 copy would outlive an optimizer step between two
    forwards, and one cast under no_grad would carry no gradient.
    """
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled, cache_enabled=False)


def _torch_adam_step() -> Any:
    """torch's `Adam.step` inside torch's own profiler-label and step-hook wrapper (`Optimizer.profile_hook_step`),
    which torch otherwise adds to an optimizer class's `step` when the first instance is made."""
    step = torch.optim.Adam.step
    if getattr(step, "hooked", False):  # a plain Adam exists already: torch wrapped it; take what it wrapped
        step = step.__wrapped__
    return torch.optim.Optimizer.profile_hook_step(step)


class _Flat(NamedTuple):
    """One parameter group laid out in contiguous storage: its parameters, gradients and Adam moments are views
    of four flat tensors, and the per-parameter step counts are elements of one. Each parameter's slot starts
    on a 64-byte boundary (zero padding between slots), as a tensor of its own does: matmul kernels can round
    differently on differently aligned data, and a resumed run's weights are tensors of their own until its
    first step."""

    params: list[torch.Tensor]
    ptrs: list[int]
    """Each parameter's data pointer when laid out: a parameter re-pointed since (`p.data = ...`) is noticed."""
    state_views: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    """Each parameter's exp_avg, exp_avg_sq and step as laid out: a state replaced since is noticed."""
    param: torch.Tensor
    grad: torch.Tensor
    grad_views: list[torch.Tensor]
    pads: list[torch.Tensor | None]
    """Zeros for the padding after each slot (None where there is none), for `gather_grads`' cat."""
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    steps: torch.Tensor

    def current(self, params: list[torch.Tensor], states: list[dict[str, Any]]) -> bool:
        """Whether this layout still holds `params` and their `states`."""
        return (len(params) == len(self.params)
                and all(p is q and p.data_ptr() == ptr for p, q, ptr in zip(params, self.params, self.ptrs))
                and all(state["exp_avg"] is avg and state["exp_avg_sq"] is avg_sq and state["step"] is step
                        for state, (avg, avg_sq, step) in zip(states, self.state_views)))

    def gather_grads(self) -> None:
        """Copy gradients not already in the flat gradient (backward made new ones, after zero_grad's
        set_to_none) into it, and make each `.grad` its view: clipped in place, it is what the parameter shows."""
        stale = [k for k, (p, view) in enumerate(zip(self.params, self.grad_views)) if p.grad is not view]
        if len(stale) == len(self.params):
            pieces = []
            for p, pad in zip(self.params, self.pads):
                pieces.append(p.grad.reshape(-1))
                if pad is not None:
                    pieces.append(pad)
            torch.cat(pieces, out=self.grad)
        elif stale:  # some accumulated in place (zero_grad(set_to_none=False)), some replaced
            torch._foreach_copy_([self.grad_views[k] for k in stale], [self.params[k].grad for k in stale])
        for k in stale:
            self.params[k].grad = self.grad_views[k]


class FusedAdam(torch.optim.Adam):
    """`torch.optim.Adam(fused=True)` with optional global-norm gradient clipping, made cheap on a CPU.

    The fused kernel itself is fast; what costs on the small networks RL trains is the work around it, per call
    and per tensor: torch's `step` regroups the parameters by device and dtype, re-checks their state, and goes
    through a wrapper that opens a profiler label and looks for step hooks; clipping and the kernel then loop
    over every tensor. Here, on a CPU:

    - Each parameter group whose parameters all have gradients and equal step counts is laid out in flat
      storage (`_Flat`, once; the parameters' `.data` and the Adam state become views of it). A step then
      copies the gradients into the flat gradient in one `cat` (`.grad` becomes a view of it), takes the clip
      norm over it in one op, scales it in one multiply where clipping is needed, and calls `torch._fused_adam_`
      once on four tensors. Adam is elementwise: the same arithmetic as torch's fused path, except that the
      kernel's scalar tail (elements past a multiple of its vector width) falls on other elements, so weights
      can differ from torch's in the last bits. Inside training at rl-zoo's settings (one thread, medians of 4
      alternations in one process) a step took 226 against 246 µs on DQN's [256, 256] Q-network and 139
      against 180 µs on PPO's [64, 64] actor and critic, clipping included, against the per-tensor path below:
      DQN ran 4.9% more env steps/s; PPO's gain (~2% of its time) was within the noise (bench/results.md,
      session 24).
    - A group that cannot be laid out flat (a parameter without a gradient this step, or step counts that
      differ) takes a per-tensor fast path: the same `torch._fused_adam_` call as torch's fused path, bit-identical
      to it.
    - `zero_grad` sets the gradients to None in a plain loop.

    `max_grad_norm` > 0 clips before the update as `torch.nn.utils.clip_grad_norm_` does (coefficient
    max_norm / (norm + 1e-6), capped at 1, over all the optimizer's gradients): with every group flat, from one
    norm per flat gradient, read on the host, and no multiply where the coefficient is 1; otherwise with torch's
    arithmetic (`clip_grad_norm`: per-tensor norms, then the norm of those).

    Torch's own step (wrapper included, clipping first) still runs where it has work the fast paths do not do:
    a registered step hook, a parameter without state yet (the first step), a GradScaler's scale, a tensor
    learning rate, a group loaded as non-fused, amsgrad, maximize, AdamW's decoupled weight decay, capturable
    (CUDA-graph capture), or parameters off the CPU; a closure is refused with clipping and goes to torch's step
    without it. The fast paths open no profiler label: in a torch.profiler trace the flat one shows as `cat`,
    `linalg_vector_norm`, `mul_`, `add_` and `_fused_adam_`, the per-tensor one as `_foreach_*` and
    `_fused_adam_`.

    Checkpoints hold torch's Adam state dict, so a run resumes on torch's Adam or this one; loading state lays
    the group out anew at the next step. A view saves or pickles its whole storage: rlrun's checkpoints clone the
    weights and write everything in one `torch.save`, but a pickle of a module alone, or `torch.save` of one
    layer's state dict, carries the whole group's flat tensor (clone to save less).
    """

    _torch_step = _torch_adam_step()

    def __init__(self, params, lr: float, max_grad_norm: float = 0.0, **kwargs):
        super().__init__(params, lr=lr, fused=True, **kwargs)
        self.defaults["max_grad_norm"] = max_grad_norm  # defaults: kept by copies and pickles; <= 0: no clipping
        self._flat: dict[int, _Flat] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._flat = {}  # a copy's parameters are its own: it lays them out at its next step

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._flat.clear()  # the state tensors are the loaded ones now

    @torch.no_grad()
    def step(self, closure=None):
        max_norm = self.defaults["max_grad_norm"]
        if closure is not None and max_norm > 0:
            raise ValueError("FusedAdam clips the gradients before its step; it cannot take a closure that "
                             "computes them inside the step")
        if (closure is not None or getattr(self, "grad_scale", None) is not None
                or getattr(self, "found_inf", None) is not None or self._optimizer_step_pre_hooks
                or self._optimizer_step_post_hooks or optimizer_module._global_optimizer_pre_hooks
                or optimizer_module._global_optimizer_post_hooks):
            return self._fallback(closure)
        calls = []
        for index, group in enumerate(self.param_groups):
            if (not group["fused"] or group["amsgrad"] or group["maximize"] or group["capturable"]
                    or group["differentiable"] or group.get("decoupled_weight_decay")
                    or isinstance(group["lr"], torch.Tensor)):
                return self._fallback(None)
            params = [p for p in group["params"] if p.grad is not None]
            states = [self.state[p] for p in params]
            if not all(p.is_cpu for p in params) or not all(states):  # torch's step creates the state
                return self._fallback(None)
            calls.append((index, group, params, states))
        plans = []
        for index, group, params, states in calls:
            if params:
                flat = self._flat_group(index, group, params, states)
                if flat is not None:
                    flat.gather_grads()
                plans.append((group, params, states, flat))
        coef = self._clip_coefficient(plans, max_norm) if max_norm > 0 and plans else None
        for group, params, states, flat in plans:
            beta1, beta2 = group["betas"]
            hyper = dict(lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                         eps=group["eps"], amsgrad=False, maximize=False, grad_scale=None, found_inf=None)
            if flat is None:  # per tensor, as torch's fused path
                grads = [p.grad for p in params]
                if coef is not None:
                    torch._foreach_mul_(grads, coef)
                steps = [state["step"] for state in states]
                torch._foreach_add_(steps, 1)
                torch._fused_adam_(params, grads, [state["exp_avg"] for state in states],
                                   [state["exp_avg_sq"] for state in states], [], steps, **hyper)
                continue
            if coef is not None:
                flat.grad.mul_(coef)
            flat.steps.add_(1)
            torch._fused_adam_([flat.param], [flat.grad], [flat.exp_avg], [flat.exp_avg_sq], [],
                               [flat.steps[0]], **hyper)
        return None

    @staticmethod
    def _clip_coefficient(plans: list[tuple[Any, ...]], max_norm: float) -> float | torch.Tensor | None:
        """The clip scale for the step's gradients, None where no clipping is needed.

        With every group flat (the common case) the global norm is one norm per flat gradient, computed on the
        host (cheap on a CPU): no multiply at all when it is within `max_norm`, else a float. (It rounds
        differently from torch's norm of per-tensor norms, in the last bits.) Otherwise torch's arithmetic.
        """
        if all(flat is not None for *_, flat in plans):
            norms = [torch.linalg.vector_norm(flat.grad) for *_, flat in plans]
            total = float(norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms)))
            coef = max_norm / (total + 1e-6)
            return coef if coef < 1.0 or math.isnan(coef) else None
        grads = [p.grad for _, params, _, _ in plans for p in params]
        return norm_and_clip_coefficient(grads, max_norm)[1] if grads else None

    # Torch wraps each optimizer class's `step` in its profiler-label and hook wrapper unless the method says it
    # has one; this one hands over to the wrapped torch step whenever a hook is registered (12-40 µs a step saved, measured).
    step.hooked = True

    def _fallback(self, closure):
        """Clip, then torch's own step. Its per-tensor updates may leave a flat group's step counts unequal:
        the group is laid out anew (after a check) when it next takes the flat path."""
        self._flat.clear()
        max_norm = self.defaults["max_grad_norm"]
        if max_norm > 0:
            clip_grad_norm([p for group in self.param_groups for p in group["params"]], max_norm)
        return self._torch_step(closure)

    def _flat_group(self, index: int, group: dict[str, Any], params: list[torch.Tensor],
                    states: list[dict[str, Any]]) -> _Flat | None:
        """Group `index` laid out flat: as it was, laid out now, or None where it cannot be (then per tensor)."""
        flat = self._flat.get(index)
        if flat is not None and flat.current(params, states):
            return flat
        self._flat.pop(index, None)
        if len(params) != len(group["params"]):  # a parameter without a gradient this step
            return None
        dtype = params[0].dtype
        if any(p.dtype != dtype or p.grad.dtype != dtype or state["exp_avg"].dtype != dtype
               or state["exp_avg_sq"].dtype != dtype for p, state in zip(params, states)):
            return None
        steps = torch.stack([state["step"].reshape(()) for state in states])
        if steps.dtype != torch.float32 or not bool((steps == steps[0]).all()):
            return None
        align = max(1, 64 // params[0].element_size())
        sizes = [p.numel() for p in params]
        slots = [-(-size // align) * align for size in sizes]
        offsets = [sum(slots[:k]) for k in range(len(slots))]
        flat_param, flat_grad, flat_avg, flat_avg_sq = (torch.zeros(sum(slots), dtype=dtype) for _ in range(4))
        views = [[storage.narrow(0, offset, p.numel()).view_as(p) for p, offset in zip(params, offsets)]
                 for storage in (flat_param, flat_grad, flat_avg, flat_avg_sq)]
        state_views = []
        for k, (p, state) in enumerate(zip(params, states)):
            views[0][k].copy_(p)
            p.data = views[0][k]
            for key, moments in (("exp_avg", views[2]), ("exp_avg_sq", views[3])):
                moments[k].copy_(state[key])
                state[key] = moments[k]
            state["step"] = steps[k]
            state_views.append((state["exp_avg"], state["exp_avg_sq"], state["step"]))
        pads = [torch.zeros(slot - size, dtype=dtype) if slot > size else None for slot, size in zip(slots, sizes)]
        flat = _Flat(params, [p.data_ptr() for p in params], state_views, flat_param, flat_grad, views[1], pads,
                     flat_avg, flat_avg_sq, steps)
        self._flat[index] = flat
        return flat

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not set_to_none:
            super().zero_grad(set_to_none=False)
            return
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


def make_adam(params, lr: float, max_grad_norm: float = 0.0, **kwargs) -> FusedAdam:
    """Adam with the fused kernel (on a CPU it steps a 70k-parameter MLP ~3× faster than the default loop),
    little Python around it, and gradient clipping to global norm `max_grad_norm` (0 = none) in its step
    (`FusedAdam`)."""
    return FusedAdam(params, lr=lr, max_grad_norm=max_grad_norm, **kwargs)
