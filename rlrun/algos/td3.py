"""TD3: Twin Delayed Deep Deterministic policy gradient.

Fujimoto, van Hoof & Meger, "Addressing Function Approximation Error in Actor-Critic Methods", ICML 2018.

DDPG plus three fixes for Q overestimation: (1) clipped double Q — two critics, the target takes the smaller
of the two target critics' values; (2) target policy smoothing — the target action is the target actor's
action plus clipped Gaussian noise, so the critic cannot exploit narrow peaks; (3) delayed updates — the
actor and all target networks move once every `policy_delay` critic updates. The actor maximises the first
critic. Exploration adds Gaussian (or Ornstein–Uhlenbeck) noise to the actor's action; before
`learning_starts` actions are uniform random.
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
class TD3Config:
    name: str = "td3"
    """Registry name."""
    num_envs: int = 1
    """Parallel envs collecting transitions."""
    actor_lr: float = 1e-3
    """Adam step size of the actor."""
    critic_lr: float = 1e-3
    """Adam step size of the critics."""
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
    """Critic updates per training phase; -1 = as many as env steps collected (train_freq * num_envs)."""
    policy_delay: int = 2
    """Critic updates per actor (and target) update."""
    target_noise: float = 0.2
    """Std of the Gaussian noise added to the target action (target policy smoothing), unit action scale."""
    noise_clip: float = 0.5
    """The target-smoothing noise is clipped to ±noise_clip."""
    noise: NoiseType = NoiseType.gaussian
    """Exploration noise: gaussian, ou (Ornstein–Uhlenbeck) or none."""
    noise_sigma: float = 0.1
    """Exploration noise scale σ, in unit action scale ([-1, 1])."""
    noise_theta: float = 0.15
    """OU mean-reversion rate θ (noise=ou only)."""
    noise_dt: float = 1e-2
    """OU time step dt (noise=ou only)."""
    n_critics: int = 2
    """Critics whose minimum forms the target (2 = clipped double Q)."""
    bf16: bool = False
    """Update matmuls in bfloat16, as torch.autocast runs them (on a CPU written out, rlrun/backprop.py): faster on
    AVX512-BF16/AMX CPUs, less precise; off = fp32."""
    cuda_graphs: bool = False
    """Capture the update in CUDA graphs and replay it (device=cuda only; 7-8x faster updates on an H200)."""
    compile: bool = False
    """Compile the CPU update's written-out gradient steps with torch.compile (rlrun/compiled.py; device=cpu only):
    Inductor fuses the element-wise work between the matmuls. Equal to the eager update up to float rounding."""


def smoothing_noise(like: torch.Tensor, noise_std: float, noise_clip: float) -> torch.Tensor | None:
    """clip(N(0, σ²), −c, c) shaped like the target actions, or None for σ = 0 (no smoothing)."""
    if noise_std <= 0:
        return None
    return (torch.randn_like(like) * noise_std).clamp(-noise_clip, noise_clip)


def smoothed_target_actions(target_actions: torch.Tensor, noise_std: float, noise_clip: float,
                            noise: torch.Tensor | None = None) -> torch.Tensor:
    """μ'(s') + clip(N(0, σ²), −c, c), clipped to the unit box (target policy smoothing, TD3 §5.3); `noise` is the
    clipped noise drawn beforehand (`smoothing_noise`), else it is drawn here."""
    if noise_std <= 0:
        return target_actions
    noise = smoothing_noise(target_actions, noise_std, noise_clip) if noise is None else noise
    return (target_actions + noise).clamp(-1.0, 1.0)


def td3_target(rewards: torch.Tensor, terminated: torch.Tensor, next_q: torch.Tensor,
               gamma: float) -> torch.Tensor:
    """r + γ(1 − terminated)·min_i Q'_i(s', ã).

    `next_q` is [n_critics, batch]. A truncated transition has terminated = 0 and bootstraps from its true
    final observation s'.
    """
    return rewards + gamma * (1.0 - terminated) * next_q.min(dim=0).values


class TD3Agent:
    def __init__(self, cfg: TD3Config, ctx: AgentContext):
        check_common(cfg.batch_size, cfg.train_freq)
        if cfg.policy_delay <= 0 or cfg.n_critics <= 0:
            raise ValueError("algo.policy_delay and algo.n_critics must be > 0")
        self.cfg = cfg
        self.device = ctx.device
        self.scaler = ActionScaler(ctx.action_space)
        n_obs, n_act = obs_dim(ctx.observation_space), self.scaler.dim
        self.actor = DeterministicActor(n_obs, n_act, ctx.network).to(ctx.device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic = Critics(n_obs, n_act, ctx.network, cfg.n_critics).to(ctx.device)
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
                                         [self.actor_optimizer, self.critic_optimizer], period=cfg.policy_delay,
                                         keep=("last_actor_loss",))
        self.last_actor_loss = torch.zeros((), device=ctx.device)  # a metric beside the device's losses

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
        noise = smoothing_noise(batch.actions, cfg.target_noise, cfg.noise_clip)
        written_out = writes_out(self.actor_backprop, self.critic_backprop, *self.targets_backprop,
                                 compile=cfg.compile)
        if written_out:
            critic_loss, q_values = self.critic_step(batch.obs, batch.actions, batch.rewards, batch.next_obs,
                                                     batch.terminated, noise)
        else:
            with torch.no_grad(), bf16_autocast(self.device, cfg.bf16):
                next_actions = smoothed_target_actions(self.actor_target(batch.next_obs), cfg.target_noise,
                                                       cfg.noise_clip, noise)
                targets = td3_target(batch.rewards, batch.terminated,
                                     self.critic_target(batch.next_obs, next_actions), cfg.gamma)
            with bf16_autocast(self.device, cfg.bf16):
                q_values = self.critic(batch.obs, batch.actions)
            critic_loss = (q_values - targets).square().mean(dim=1).sum()
            self.critic_optimizer.zero_grad(set_to_none=True)
            critic_loss.backward()
        self.critic_optimizer.step()
        self.n_updates += 1

        if self.n_updates % cfg.policy_delay == 0:
            if written_out:
                actor_loss = self.actor_step(batch.obs)
            else:
                with bf16_autocast(self.device, cfg.bf16):
                    actor_loss = -self.critic(batch.obs, self.actor(batch.obs), first=1).mean()
                self.actor_optimizer.zero_grad(set_to_none=True)
                actor_backward(actor_loss, self.actor)
            self.actor_optimizer.step()
            polyak_update(self.critic_target, self.critic, cfg.tau)
            polyak_update(self.actor_target, self.actor, cfg.tau)
            self.last_actor_loss = actor_loss.detach()
        return {"losses/critic_loss": critic_loss.detach(), "losses/actor_loss": self.last_actor_loss,
                "losses/q_values": q_values.detach().mean()}

    def written_out_critic_step(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                                next_obs: torch.Tensor, terminated: torch.Tensor,
                                noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The critics' gradients into `.grad` without autograd (rlrun/backprop.py): the targets, then the
        squared TD errors' gradients; returns (critic loss, Q values)."""
        with torch.no_grad():  # inside, not a decorator: torch.compile keys its cache on this code
            cfg = self.cfg
            actor_target, critic_target = self.targets_backprop
            next_actions = smoothed_target_actions(actor_target.forward(next_obs, keep=False).tanh(), cfg.target_noise,
                                                   cfg.noise_clip, noise)
            next_q = critic_target.forward(next_obs, next_actions, keep=False)
            targets = td3_target(rewards, terminated, next_q, cfg.gamma)
            q_values = self.critic_backprop.forward(obs, actions)
            self.critic_backprop.backward((q_values - targets).mul_(2.0 * mean_grad(q_values.shape[1])))
            return (q_values - targets).square().mean(dim=1).sum(), q_values

    # -- checkpointing -------------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"actor": self.actor, "actor_target": self.actor_target, "critic": self.critic,
                "critic_target": self.critic_target}

    def training_state(self) -> dict[str, Any]:
        return {"actor_optimizer": self.actor_optimizer.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict(),
                "n_updates": self.n_updates, "last_actor_loss": self.last_actor_loss,
                "noise": self.noise.state() if self.noise is not None else np.zeros(0),
                "rng": json.dumps(self.rng.bit_generator.state)}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.n_updates = int(state["n_updates"])
        self.last_actor_loss = torch.as_tensor(state["last_actor_loss"], device=self.device)
        if self.noise is not None:
            self.noise.load_state(np.asarray(state["noise"]))
        self.rng.bit_generator.state = json.loads(state["rng"])

    def buffer_arrays(self) -> dict[str, np.ndarray]:
        return self.buffer.arrays()

    def load_buffer_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.buffer.load_arrays(arrays)
