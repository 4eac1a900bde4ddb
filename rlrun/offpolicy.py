"""Pieces DDPG, TD3 and SAC share unchanged: action scaling, the deterministic actor, Q critics, exploration
noise, and the collection step that feeds the replay buffer.

Actions live in the unit box [-1, 1]^|A| everywhere inside the agents (networks, noise, replay buffer) and
are mapped to the env's bounds only when handed to the env, as in Stable-Baselines3. Noise is therefore
added in unit space: σ = 0.1 means 10 % of the half-range of each action dimension.

Speed (issue 5): with [400, 300] nets the update is ~90 % matmul, so the wins are in doing fewer FLOPs and
fewer tiny ops: on a CPU the networks' gradients are written out without autograd (`CriticsBackprop`,
rlrun/backprop.py; bit-identical, in fp32 and under `algo.bf16`, except SAC's actor step, whose gradient at the
actor's output is written in closed form: equal to rounding; env steps/s DDPG +11%, TD3 +15%, SAC +3% in fp32,
session 28; bf16 TD3 +5%, session 29), the actor's backward skips the critics' weight gradients
(`backward(inputs=actor params)`, `action_grad`), Adam uses its fused kernel, target updates are one foreach
lerp, metrics stay tensors (no `.item()`), the replay buffer samples on the training device, `algo.bf16=true`
runs the update matmuls in bfloat16, and `algo.compile=true` compiles the written-out steps (`compiled_if`;
bf16 TD3 ~+8%, session 29). Measured and not used: one batched-matmul module for the twin critics (see
`Critics`) and `torch.compile` of the critics through autograd (CPU inductor: 6.8-7.0 ms vs 6.2-6.6 ms eager per
forward + backward, after 55 s compiling).
On a GPU the eager update is launch-bound; `algo.cuda_graphs=true` replays it from CUDA graphs
(rlrun/cudagraph.py: TD3 3.4 → 0.49 ms per update on an H200).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from enum import Enum
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rlrun.backprop import MLPBackprop, has_hooks
from rlrun.buffers import ReplayBuffer
from rlrun.compiled import compiled
from rlrun.config import NetworkConfig
from rlrun.envs import EnvRunner, Step
from rlrun.networks import MLP


class NoiseType(str, Enum):
    gaussian = "gaussian"
    ou = "ou"
    none = "none"


class ActionScaler:
    """Maps unit-box actions to the env's Box bounds."""

    def __init__(self, space: gym.Space):
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"off-policy continuous control needs a 1-D Box action space, got {space}")
        if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
            raise ValueError(f"the action space {space} has infinite bounds; DDPG/TD3/SAC need finite ones "
                             f"(their actors end in tanh)")
        self.low = space.low.astype(np.float32)
        self.high = space.high.astype(np.float32)
        self.dim = int(space.shape[0])

    def to_env(self, unit_actions: np.ndarray) -> np.ndarray:
        return self.low + 0.5 * (unit_actions + 1.0) * (self.high - self.low)


class DeterministicActor(MLP):
    """μ(s) ∈ [-1, 1]^|A|: the MLP (`body` + `head`, so transfer sees the usual names) followed by tanh."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(super().forward(obs))


class Critics(nn.Module):
    """`n` independent Q(s, a) MLPs; `forward` returns their values stacked, shape [n, batch].

    One batched-matmul module (weights [n, in, out]) evaluating all critics in one forward was measured
    against this on the 2-core CPU with [400, 300] nets and batch 256: no gain (5.46 vs 5.60 ms forward +
    backward, 1.61 vs 1.47 ms forward), because the matmuls are compute-bound. Plain MLPs keep the
    `body`/`head` parameter names that transfer learning understands.
    """

    def __init__(self, obs_dim: int, action_dim: int, net: NetworkConfig, n: int):
        super().__init__()
        self.q = nn.ModuleList(MLP(obs_dim + action_dim, 1, net) for _ in range(n))

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, first: int | None = None) -> torch.Tensor:
        """Q values of the first `first` critics (all by default), shape [n, batch]."""
        x = torch.cat([obs, actions], dim=1)
        critics = self.q if first is None else self.q[:first]
        return torch.stack([q(x).squeeze(-1) for q in critics])


def actor_backward(loss: torch.Tensor, actor: nn.Module) -> None:
    """Backpropagate the actor loss into the actor's trainable parameters only: the critics' weight gradients
    would be thrown away, and a layer frozen by transfer learning (requires_grad False) takes none."""
    loss.backward(inputs=[p for p in actor.parameters() if p.requires_grad])


class CriticsBackprop:
    """The critics' forward and backward written out, without autograd (rlrun/backprop.py), for the update on a
    CPU (fp32, or `algo.bf16`'s mixed precision); the same values and gradients, bit for bit."""

    def __init__(self, critics: Critics, obs_dim: int, bf16: bool = False):
        self.nets = [MLPBackprop(q, bf16) for q in critics.q]
        self.containers = [critics, critics.q]  # the autograd path calls these too: their hooks count
        self.obs_dim = obs_dim

    def usable(self) -> bool:
        return not has_hooks(self.containers) and all(net.usable() for net in self.nets)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, first: int | None = None,
                keep: bool = True) -> torch.Tensor:
        """`Critics.forward`; with `keep`, keeping each critic's activations for one `backward` or `action_grad`."""
        x = torch.cat([obs, actions], dim=1)
        nets = self.nets if first is None else self.nets[:first]
        return torch.stack([net.forward(x, keep).squeeze(-1) for net in nets])

    def backward(self, grad_q: torch.Tensor) -> None:
        """The critics' parameter gradients (into `.grad`, replacing) from d(loss)/dQ, shape [n, batch]."""
        for net, grad in zip(self.nets, grad_q):
            net.backward(grad.unsqueeze(-1))

    def action_grad(self, grad_q: torch.Tensor) -> torch.Tensor:
        """d(loss)/d(actions) from d(loss)/dQ of the first len(grad_q) critics; no parameter gradients (what
        `actor_backward` computes on the way to the actor)."""
        total = None
        for net, grad in zip(self.nets, grad_q):
            action_grad = net.backward(grad.unsqueeze(-1), parameters=False, input_grad=True)[:, self.obs_dim:]
            total = action_grad if total is None else total + action_grad
        return total


def actor_critic_backprop(actor: nn.Module, critics: Critics, actor_target: nn.Module, critic_target: Critics,
                          obs_dim: int, bf16: bool, compile: bool, device: torch.device
                          ) -> tuple[MLPBackprop, CriticsBackprop, tuple[MLPBackprop, CriticsBackprop],
                                     Callable[[torch.Tensor], torch.Tensor]]:
    """The written-out forward and backward of a deterministic actor-critic (DDPG, TD3): the actor's, the
    critics', the target networks' (for the target pass), and its actor step (`deterministic_actor_step` on
    them, compiled where `algo.compile` asks for it)."""
    actor_backprop, critics_backprop = MLPBackprop(actor, bf16), CriticsBackprop(critics, obs_dim, bf16)
    actor_step = compiled_if(compile, device, partial(deterministic_actor_step, actor_backprop, critics_backprop),
                             actor.parameters())
    return (actor_backprop, critics_backprop,
            (MLPBackprop(actor_target, bf16), CriticsBackprop(critic_target, obs_dim, bf16)), actor_step)


def writes_out(*nets: MLPBackprop | CriticsBackprop, compile: bool = False) -> bool:
    """Whether the update takes its gradients from rlrun/backprop.py instead of autograd: on a CPU, no hooks on
    `nets`. Where it does, they are autograd's bit for bit, in fp32 and under `algo.bf16`'s autocast alike
    (bench/results.md, sessions 28 and 29), except SAC's actor step (to rounding, `written_out_actor_step`). Where it does not, `algo.compile` (which compiles the written-out
    steps) has nothing to compile: a warning says so."""
    usable = all(net.usable() for net in nets)
    if compile and not usable:
        warnings.warn("algo.compile=true: a hook on a network (or its parameters) sends this update through "
                      "autograd, which runs uncompiled", stacklevel=2)
    return usable


def compiled_if(compile: bool, device: torch.device, step: Callable[..., Any],
                grads_of: Iterable[nn.Parameter]) -> Callable[..., Any]:
    """`step` (a written-out gradient step, writing the `.grad` of `grads_of`), compiled by torch.compile where
    `algo.compile` asks for it. Only the CPU update is written out, so the option is refused elsewhere."""
    if not compile:
        return step
    if device.type != "cpu":
        raise ValueError(f"algo.compile=true compiles the CPU update (this run trains on {device.type}); on a GPU "
                         f"use algo.cuda_graphs=true. A run trained with it resumes here with algo.compile=false")
    return compiled(step, "algo.compile", grads_of)


def mean_grad(n: int) -> float:
    """1/n as autograd's mean backward computes it (a float32 division), for gradients equal to its bit for bit."""
    return float(np.float32(1.0) / np.float32(n))  # NumPy's float32 division: IEEE's, as torch's; no .item()


def deterministic_actor_step(actor: MLPBackprop, critics: CriticsBackprop, obs: torch.Tensor) -> torch.Tensor:
    """The DDPG/TD3 actor loss −mean Q_1(s, tanh(μ(s))), its gradients written into the actor's `.grad` (those
    of `actor_backward`; the critics' `.grad` untouched); returns the loss."""
    with torch.no_grad():  # inside, not a decorator: torch.compile keys its cache on this code
        actions = actor.forward(obs).tanh()  # DeterministicActor: tanh of the MLP
        q = critics.forward(obs, actions, first=1)
        grad_actions = critics.action_grad(torch.full_like(q, -mean_grad(q.numel())))
        actor.backward(torch.ops.aten.tanh_backward(grad_actions, actions))
        return -q.mean()


class GaussianNoise:
    """Uncorrelated N(0, σ²) per step and dimension."""

    def __init__(self, num_envs: int, action_dim: int, sigma: float, rng: np.random.Generator):
        self.shape = (num_envs, action_dim)
        self.sigma = sigma
        self.rng = rng

    def sample(self) -> np.ndarray:
        return self.sigma * self.rng.standard_normal(self.shape).astype(np.float32)

    def reset(self, mask: np.ndarray) -> None:
        pass

    def state(self) -> np.ndarray:
        return np.zeros(self.shape, dtype=np.float32)

    def load_state(self, state: np.ndarray) -> None:
        pass


class OrnsteinUhlenbeckNoise:
    """Temporally correlated noise of the DDPG paper (Lillicrap et al. 2016), one process per env.

    Euler–Maruyama step of dx = θ(μ − x)dt + σ dW:  x ← x + θ(μ − x)dt + σ√dt·N(0, 1). The stationary
    variance of the continuous process is σ²/(2θ) (the discrete one: σ²/(2θ − θ²dt)). `reset(mask)` puts
    the processes of envs that start a new episode back at μ.
    """

    def __init__(self, num_envs: int, action_dim: int, sigma: float, theta: float, dt: float,
                 rng: np.random.Generator, mu: float = 0.0):
        if not (theta > 0 and dt > 0 and theta * dt < 1):  # NaN fails too
            raise ValueError(f"OU noise needs theta > 0, dt > 0 and theta*dt < 1, got theta={theta}, dt={dt}")
        self.sigma, self.theta, self.dt, self.mu = sigma, theta, dt, mu
        self.rng = rng
        self.x = np.full((num_envs, action_dim), mu, dtype=np.float64)

    def sample(self) -> np.ndarray:
        self.x += (self.theta * (self.mu - self.x) * self.dt
                   + self.sigma * np.sqrt(self.dt) * self.rng.standard_normal(self.x.shape))
        return self.x.astype(np.float32)

    def reset(self, mask: np.ndarray) -> None:
        self.x[mask] = self.mu

    def state(self) -> np.ndarray:
        return self.x.copy()

    def load_state(self, state: np.ndarray) -> None:
        self.x[...] = state


def make_noise(kind: NoiseType, num_envs: int, action_dim: int, sigma: float, theta: float, dt: float,
               rng: np.random.Generator) -> GaussianNoise | OrnsteinUhlenbeckNoise | None:
    if kind == NoiseType.gaussian:
        return GaussianNoise(num_envs, action_dim, sigma, rng)
    if kind == NoiseType.ou:
        return OrnsteinUhlenbeckNoise(num_envs, action_dim, sigma, theta, dt, rng)
    return None


def add_noise(actions: np.ndarray, noise: GaussianNoise | OrnsteinUhlenbeckNoise | None) -> np.ndarray:
    """Noisy actions clipped back into the unit box."""
    if noise is None:
        return actions
    return np.clip(actions + noise.sample(), -1.0, 1.0)


def random_actions(rng: np.random.Generator, num_envs: int, action_dim: int) -> np.ndarray:
    """Uniform unit-box actions for the warm-up before `learning_starts`."""
    return rng.uniform(-1.0, 1.0, size=(num_envs, action_dim)).astype(np.float32)


def collect(runner: EnvRunner, buffer: ReplayBuffer, unit_actions: np.ndarray, scaler: ActionScaler) -> Step:
    """Step the envs with unit-box actions and store the transition (unit actions, `terminated` only)."""
    step = runner.step(scaler.to_env(unit_actions))
    buffer.add(step.obs, unit_actions, step.reward, step.next_obs, step.terminated)
    return step


def gradient_steps_per_phase(gradient_steps: int, train_freq: int, num_envs: int) -> int:
    """-1 means one gradient step per env step collected in the phase."""
    return gradient_steps if gradient_steps >= 0 else train_freq * num_envs


def check_common(batch_size: int, train_freq: int) -> None:
    """The replay settings' ranges (gamma's and tau's, shared with the other algorithms: check_hyperparameters)."""
    if batch_size <= 0 or train_freq <= 0:
        raise ValueError("algo.batch_size and algo.train_freq must be > 0")
