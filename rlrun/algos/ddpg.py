"""DDPG: Deep Deterministic Policy Gradient.

Lillicrap et al., "Continuous control with deep reinforcement learning", ICLR 2016 (building on Silver et
al., "Deterministic Policy Gradient Algorithms", ICML 2014).

A deterministic actor μ(s) and a critic Q(s, a), each with a Polyak-averaged target copy. The critic
regresses on r + γ(1 − terminated)·Q'(s', μ'(s')); the actor ascends Q(s, μ(s)). Exploration adds
Ornstein–Uhlenbeck noise (temporally correlated, as in the paper; an env's process goes back to its mean
when that env starts a new episode) or uncorrelated Gaussian noise to the actor's action, clipped to the
action bounds; before `learning_starts` actions are uniform random.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlrun.algos.protocol import AgentContext
from rlrun.buffers import Batch, ReplayBuffer
from rlrun.cudagraph import GraphedUpdate, check_cuda_graphs
from rlrun.envs import EnvRunner
from rlrun.networks import bf16_autocast, make_adam, obs_dim, polyak_update
from rlrun.offpolicy import (
    ActionScaler,
    Critics,
    DeterministicActor,
    NoiseType,
    actor_backward,
    actor_critic_backprop,
    add_noise,
    check_common,
    collect,
    compiled_if,
    gradient_steps_per_phase,
    make_noise,
    mean_grad,
    random_actions,
    writes_out,
)


@dataclass
class DDPGConfig:
    name: str = "ddpg"
    """Registry name."""
    num_envs: int = 1
    """Parallel envs collecting transitions."""
    actor_lr: float = 1e-3
    """Adam step size of the actor."""
    critic_lr: float = 1e-3
    """Adam step size of the critic."""
    buffer_size: int = 1_000_000
    """Replay capacity in transitions."""
    batch_size: int = 256
    """Transitions per gradient step."""
    learning_starts: int = 10_000
    """Env steps of uniform random actions (and no training) before learning starts."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak coefficient of the target networks: target ← τ·online + (1 − τ)·target."""
    train_freq: int = 1
    """Vector steps between training phases."""
    gradient_steps: int = 1
    """Gradient steps per training phase; -1 = as many as env steps collected (train_freq * num_envs)."""
    noise: NoiseType = NoiseType.ou
    """Exploration noise: ou (Ornstein–Uhlenbeck, the paper's), gaussian, or none."""
    noise_sigma: float = 0.1
    """Exploration noise scale σ, in unit action scale ([-1, 1])."""
    noise_theta: float = 0.15
    """OU mean-reversion rate θ (noise=ou only)."""
    noise_dt: float = 1e-2
    """OU time step dt (noise=ou only)."""
    bf16: bool = False
    """Update matmuls in bfloat16, as torch.autocast runs them (on a CPU written out, rlrun/backprop.py): faster on
    AVX512-BF16/AMX CPUs, less precise; off = fp32."""
    cuda_graphs: bool = False
    """Capture the update in CUDA graphs and replay it (device=cuda only; 7-8x faster updates on an H200)."""
    compile: bool = False
    """Compile the CPU update's written-out gradient steps with torch.compile (rlrun/compiled.py; device=cpu only):
    Inductor fuses the element-wise work between the matmuls. Equal to the eager update up to float rounding."""


def ddpg_target(rewards: torch.Tensor, terminated: torch.Tensor, next_q: torch.Tensor,
                gamma: float) -> torch.Tensor:
    """r + γ(1 − terminated)·Q'(s', μ'(s')). Truncated transitions have terminated = 0 and bootstrap."""
    return rewards + gamma * (1.0 - terminated) * next_q


class DDPGAgent:
    def __init__(self, cfg: DDPGConfig, ctx: AgentContext):
        check_common(cfg.batch_size, cfg.train_freq)
        self.cfg = cfg
        self.device = ctx.device
        self.scaler = ActionScaler(ctx.action_space)
        n_obs, n_act = obs_dim(ctx.observation_space), self.scaler.dim
        self.actor = DeterministicActor(n_obs, n_act, ctx.network).to(ctx.device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic = Critics(n_obs, n_act, ctx.network, n=1).to(ctx.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_backprop, self.critic_backprop, self.targets_backprop, self.actor_step = actor_critic_backprop(
            self.actor, self.critic, self.actor_target, self.critic_target, n_obs, cfg.bf16, cfg.compile, ctx.device)
        self.critic_step = compiled_if(cfg.compile, ctx.device, self.written_out_critic_step,
                                       self.critic.parameters())
        self.actor_optimizer = make_adam(self.actor.parameters(), cfg.actor_lr)
        self.critic_optimizer = make_adam(self.critic.parameters(), cfg.critic_lr)
        self.buffer = ReplayBuffer(cfg.buffer_size, ctx.observation_space.shape, (n_act,), torch.float32,
                                   ctx.device)
        self.rng = ctx.agent_rng()
        self.noise = make_noise(cfg.noise, ctx.num_envs, n_act, cfg.noise_sigma, cfg.noise_theta, cfg.noise_dt,
                                self.rng)
        self.gradient_steps = gradient_steps_per_phase(cfg.gradient_steps, cfg.train_freq, ctx.num_envs)
        self.n_updates = 0
        self.graphed = None
        if cfg.cuda_graphs:
            check_cuda_graphs(ctx.device, cfg.bf16)
            self.graphed = GraphedUpdate(self, self.update, self.buffer, cfg.batch_size,
                                         [self.actor_optimizer, self.critic_optimizer])

    @torch.inference_mode()
    def _policy(self, obs: np.ndarray) -> np.ndarray:
        """μ(s) in the unit box."""
        return self.actor(torch.as_tensor(obs, dtype=torch.float32, device=self.device)).cpu().numpy()

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic actions in the env's bounds."""
        return self.scaler.to_env(self._policy(obs))

    def train_iteration(self, runner: EnvRunner) -> dict[str, Any]:
        cfg = self.cfg
        for _ in range(cfg.train_freq):
            if runner.global_step < cfg.learning_starts:
                actions = random_actions(self.rng, runner.num_envs, self.scaler.dim)
            else:
                actions = add_noise(self._policy(runner.obs), self.noise)
            step = collect(runner, self.buffer, actions, self.scaler)
            if self.noise is not None and step.done.any():
                self.noise.reset(step.done)
        metrics: dict[str, Any] = {}
        if runner.global_step > cfg.learning_starts:
            for _ in range(self.gradient_steps):
                metrics = self.update() if self.graphed is None else self.graphed()
        return metrics

    def update(self, batch: Batch | None = None) -> dict[str, torch.Tensor]:
        """One gradient step on `batch` (by default a fresh sample from the replay buffer)."""
        cfg = self.cfg
        batch = self.buffer.sample(cfg.batch_size, self.rng) if batch is None else batch
        written_out = writes_out(self.actor_backprop, self.critic_backprop, *self.targets_backprop,
                                 compile=cfg.compile)
        if written_out:
            critic_loss, q_values = self.critic_step(batch.obs, batch.actions, batch.rewards, batch.next_obs,
                                                     batch.terminated)
        else:
            with torch.no_grad(), bf16_autocast(self.device, cfg.bf16):
                next_q = self.critic_target(batch.next_obs, self.actor_target(batch.next_obs))[0]
                targets = ddpg_target(batch.rewards, batch.terminated, next_q, cfg.gamma)
            with bf16_autocast(self.device, cfg.bf16):
                q_values = self.critic(batch.obs, batch.actions)[0]
            critic_loss = (q_values - targets).square().mean()
            self.critic_optimizer.zero_grad(set_to_none=True)
            critic_loss.backward()
        self.critic_optimizer.step()

        if written_out:
            actor_loss = self.actor_step(batch.obs)
        else:
            with bf16_autocast(self.device, cfg.bf16):
                actor_loss = -self.critic(batch.obs, self.actor(batch.obs))[0].mean()
            self.actor_optimizer.zero_grad(set_to_none=True)
            actor_backward(actor_loss, self.actor)
        self.actor_optimizer.step()
        polyak_update(self.critic_target, self.critic, cfg.tau)
        polyak_update(self.actor_target, self.actor, cfg.tau)
        self.n_updates += 1
        return {"losses/critic_loss": critic_loss.detach(), "losses/actor_loss": actor_loss.detach(),
                "losses/q_values": q_values.detach().mean()}

    def written_out_critic_step(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                                next_obs: torch.Tensor, terminated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The critic's gradients into `.grad` without autograd (rlrun/backprop.py): the targets, then the
        squared TD error's gradient; returns (critic loss, Q values)."""
        with torch.no_grad():  # inside, not a decorator: torch.compile keys its cache on this code
            actor_target, critic_target = self.targets_backprop
            next_actions = actor_target.forward(next_obs, keep=False).tanh()
            next_q = critic_target.forward(next_obs, next_actions, keep=False)[0]
            targets = ddpg_target(rewards, terminated, next_q, self.cfg.gamma)
            q_values = self.critic_backprop.forward(obs, actions)[0]
            error = q_values - targets
            self.critic_backprop.backward(error.mul(2.0 * mean_grad(error.numel())).unsqueeze(0))
            return error.square().mean(), q_values

    # -- checkpointing -------------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"actor": self.actor, "actor_target": self.actor_target, "critic": self.critic,
                "critic_target": self.critic_target}

    def training_state(self) -> dict[str, Any]:
        return {"actor_optimizer": self.actor_optimizer.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict(), "n_updates": self.n_updates,
                "noise": self.noise.state() if self.noise is not None else np.zeros(0),
                "rng": json.dumps(self.rng.bit_generator.state)}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.n_updates = int(state["n_updates"])
        if self.noise is not None:
            self.noise.load_state(np.asarray(state["noise"]))
        self.rng.bit_generator.state = json.loads(state["rng"])

    def buffer_arrays(self) -> dict[str, np.ndarray]:
        return self.buffer.arrays()

    def load_buffer_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.buffer.load_arrays(arrays)
