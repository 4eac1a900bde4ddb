"""SAC: Soft Actor-Critic with automatic entropy tuning.

Haarnoja et al., "Soft Actor-Critic: Off-Policy Maximum Entropy Deep Reinforcement Learning with a Stochastic
Actor", ICML 2018; Haarnoja et al., "Soft Actor-Critic Algorithms and Applications", arXiv:1812.05905 (2018)
(twin Q, no value network, learned temperature).

The actor is a squashed Gaussian: u ~ N(μ(s), σ(s)²), a = tanh(u), whose log-density needs the
change-of-variables term −Σ log(1 − tanh(u)²). Two critics regress on the soft target
r + γ(1 − terminated)·(min_i Q'_i(s', a') − α log π(a'|s')), a' ~ π(·|s'); the critics' targets are
Polyak-averaged copies. The actor minimises α log π(a|s) − min_i Q_i(s, a). The temperature α is learned so
that the policy's entropy tracks a target (−|A| by default), or kept fixed (`autotune=false`).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rlrun.algos.protocol import AgentContext
from rlrun.backprop import MLPBackprop
from rlrun.buffers import Batch, ReplayBuffer
from rlrun.config import NetworkConfig
from rlrun.cudagraph import GraphedUpdate, check_cuda_graphs
from rlrun.envs import EnvRunner
from rlrun.networks import MLP, bf16_autocast, make_adam, obs_dim, polyak_update
from rlrun.offpolicy import (
    ActionScaler,
    Critics,
    CriticsBackprop,
    actor_backward,
    check_common,
    collect,
    compiled_if,
    gradient_steps_per_phase,
    mean_grad,
    random_actions,
    writes_out,
)

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # keeps σ in a numerically safe range (as SB3 and the reference code)


class LRSchedule(str, Enum):
    constant = "constant"
    linear = "linear"


@dataclass
class SACConfig:
    name: str = "sac"
    """Registry name."""
    num_envs: int = 1
    """Parallel envs collecting transitions."""
    actor_lr: float = 3e-4
    """Adam step size of the actor."""
    critic_lr: float = 3e-4
    """Adam step size of the critics."""
    alpha_lr: float = 3e-4
    """Adam step size of log α (autotune only)."""
    lr_schedule: LRSchedule = LRSchedule.constant
    """constant, or linear: every learning rate decays linearly to 0 at total_steps (rl-zoo's lin_…)."""
    buffer_size: int = 1_000_000
    """Replay capacity in transitions."""
    batch_size: int = 256
    """Transitions per gradient step."""
    learning_starts: int = 10_000
    """Env steps of uniform random actions (and no training) before learning starts."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak coefficient of the target critics: target ← τ·online + (1 − τ)·target."""
    train_freq: int = 1
    """Vector steps between training phases."""
    gradient_steps: int = 1
    """Gradient steps per training phase; -1 = as many as env steps collected (train_freq * num_envs)."""
    target_update_interval: int = 1
    """Gradient steps between target-critic updates."""
    alpha: float = 1.0
    """The temperature α: its fixed value, or its initial value when autotune is on."""
    autotune: bool = True
    """Learn α so that the policy's entropy tracks target_entropy."""
    target_entropy: float | None = None
    """Entropy target of the autotuning; null = −|A| (the paper's heuristic)."""
    n_critics: int = 2
    """Critics whose minimum is used (2 = clipped double Q)."""
    bf16: bool = False
    """Update matmuls in bfloat16, as torch.autocast runs them (on a CPU written out, rlrun/backprop.py): faster on
    AVX512-BF16/AMX CPUs, less precise; off = fp32."""
    cuda_graphs: bool = False
    """Capture the update in CUDA graphs and replay it (device=cuda only; 7-8x faster updates on an H200)."""
    compile: bool = False
    """Compile the CPU update's written-out critic and actor steps with torch.compile (rlrun/compiled.py;
    device=cpu only): Inductor fuses the element-wise work between the matmuls. Equal to the eager update up to
    float rounding."""


def squashed_log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log π(tanh(u)) for u ~ N(mean, exp(log_std)²), summed over action dimensions.

    log π(a) = log N(u) − Σ log(1 − tanh(u)²), and log(1 − tanh(u)²) = 2(log 2 − u − softplus(−2u)), which
    stays finite where tanh(u) rounds to ±1.
    """
    gaussian = -0.5 * ((u - mean) / log_std.exp()).square() - log_std - 0.5 * math.log(2 * math.pi)
    log_det = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
    return (gaussian - log_det).sum(dim=-1)


def sac_target(rewards: torch.Tensor, terminated: torch.Tensor, next_q: torch.Tensor,
               next_log_prob: torch.Tensor, alpha: torch.Tensor | float, gamma: float) -> torch.Tensor:
    """r + γ(1 − terminated)·(min_i Q'_i(s', a') − α log π(a'|s')).

    `next_q` is [n_critics, batch]. Truncated transitions have terminated = 0 and bootstrap from their true
    final observation.
    """
    soft_value = next_q.min(dim=0).values - alpha * next_log_prob
    return rewards + gamma * (1.0 - terminated) * soft_value


def temperature_loss(log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """−log α·(log π + H̄): α grows when the entropy −log π is below the target H̄, shrinks when above."""
    return -(log_alpha * (log_prob.detach() + target_entropy)).mean()


class SquashedGaussianActor(MLP):
    """One MLP whose head outputs [mean, log σ]; actions are tanh of a Gaussian sample."""

    def __init__(self, n_obs: int, n_act: int, net: NetworkConfig):
        super().__init__(n_obs, 2 * n_act, net)

    def distribution(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(super().forward(obs))

    @staticmethod
    def split(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The MLP's output as (mean, clamped log σ)."""
        mean, log_std = output.chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action in the unit box and its log-probability."""
        return self.sample_from(super().forward(obs))

    @classmethod
    def sample_from(cls, output: torch.Tensor,
                    eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`sample`, given the MLP's output (and the standard normal draw `eps`, drawn here if None)."""
        mean, log_std = cls.split(output)
        u = mean + log_std.exp() * (torch.randn_like(mean) if eps is None else eps)
        return torch.tanh(u), squashed_log_prob(u, mean, log_std)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action tanh(mean)."""
        return torch.tanh(self.distribution(obs)[0])


class SACAgent:
    def __init__(self, cfg: SACConfig, ctx: AgentContext):
        check_common(cfg.batch_size, cfg.train_freq)
        if not (cfg.alpha > 0 and cfg.n_critics > 0 and cfg.target_update_interval > 0):  # NaN fails too
            raise ValueError("algo.alpha, algo.n_critics and algo.target_update_interval must be > 0")
        self.cfg = cfg
        self.ctx = ctx
        self.device = ctx.device
        self.scaler = ActionScaler(ctx.action_space)
        n_obs, n_act = obs_dim(ctx.observation_space), self.scaler.dim
        self.actor = SquashedGaussianActor(n_obs, n_act, ctx.network).to(ctx.device)
        self.critic = Critics(n_obs, n_act, ctx.network, cfg.n_critics).to(ctx.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_backprop = MLPBackprop(self.actor, cfg.bf16)
        self.critic_backprop = CriticsBackprop(self.critic, n_obs, cfg.bf16)
        self.target_backprop = CriticsBackprop(self.critic_target, n_obs, cfg.bf16)
        self.critic_step = compiled_if(cfg.compile, ctx.device, self.written_out_critic_step,
                                       self.critic.parameters())
        self.actor_step = compiled_if(cfg.compile, ctx.device, self.written_out_actor_step, self.actor.parameters())
        self.actor_optimizer = make_adam(self.actor.parameters(), cfg.actor_lr)
        self.critic_optimizer = make_adam(self.critic.parameters(), cfg.critic_lr)
        self.log_alpha = torch.tensor(math.log(cfg.alpha), device=ctx.device, requires_grad=cfg.autotune)
        self.alpha_optimizer = make_adam([self.log_alpha], cfg.alpha_lr) if cfg.autotune else None
        self.target_entropy = float(-n_act if cfg.target_entropy is None else cfg.target_entropy)
        self.buffer = ReplayBuffer(cfg.buffer_size, ctx.observation_space.shape, (n_act,), torch.float32,
                                   ctx.device)
        self.rng = ctx.agent_rng()
        self.gradient_steps = gradient_steps_per_phase(cfg.gradient_steps, cfg.train_freq, ctx.num_envs)
        self.n_updates = 0
        self.graphed = None
        if cfg.cuda_graphs:
            check_cuda_graphs(ctx.device, cfg.bf16)
            self.graphed = GraphedUpdate(self, self.update, self.buffer, cfg.batch_size,
                                         [optimizer for optimizer, _ in self.optimizers()],
                                         period=cfg.target_update_interval, state_tensors=(self.log_alpha,))

    def optimizers(self) -> list[tuple[torch.optim.Optimizer, float]]:
        pairs = [(self.actor_optimizer, self.cfg.actor_lr), (self.critic_optimizer, self.cfg.critic_lr)]
        if self.alpha_optimizer is not None:
            pairs.append((self.alpha_optimizer, self.cfg.alpha_lr))
        return pairs

    def set_learning_rates(self, step: int) -> None:
        if self.cfg.lr_schedule == LRSchedule.linear:
            fraction_left = max(1.0 - step / self.ctx.total_steps, 0.0)
            for optimizer, lr in self.optimizers():
                for group in optimizer.param_groups:
                    group["lr"] = lr * fraction_left * group.get("lr_scale", 1.0)  # rlrun/transfer.py

    @torch.inference_mode()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic actions tanh(mean) in the env's bounds."""
        actions = self.actor(torch.as_tensor(obs, dtype=torch.float32, device=self.device))
        return self.scaler.to_env(actions.cpu().numpy())

    @torch.inference_mode()
    def _explore(self, obs: np.ndarray) -> np.ndarray:
        actions, _ = self.actor.sample(torch.as_tensor(obs, dtype=torch.float32, device=self.device))
        return actions.cpu().numpy()

    def train_iteration(self, runner: EnvRunner) -> dict[str, Any]:
        cfg = self.cfg
        for _ in range(cfg.train_freq):
            if runner.global_step < cfg.learning_starts:
                actions = random_actions(self.rng, runner.num_envs, self.scaler.dim)
            else:
                actions = self._explore(runner.obs)
            collect(runner, self.buffer, actions, self.scaler)
        metrics: dict[str, Any] = {}
        if runner.global_step > cfg.learning_starts:
            self.set_learning_rates(runner.global_step)
            for _ in range(self.gradient_steps):
                metrics = self.update() if self.graphed is None else self.graphed()
        return metrics

    def update(self, batch: Batch | None = None) -> dict[str, torch.Tensor]:
        """One gradient step on `batch` (by default a fresh sample from the replay buffer): the critics, then the
        actor scored by the just-updated critics (the paper's and SB3's order), then the temperature. α is read
        once, before its own step, and the actor's samples come from the actor before its step, so the
        temperature's step may come last: the same step as SB3's, which takes it first."""
        cfg = self.cfg
        batch = self.buffer.sample(cfg.batch_size, self.rng) if batch is None else batch
        alpha = self.log_alpha.detach().exp()
        # The gradients written out, without autograd, where that gives the same ones (a CPU, fp32 or algo.bf16;
        # rlrun/backprop.py; bench/results.md, sessions 28-30), and compiled with algo.compile.
        if writes_out(self.actor_backprop, self.critic_backprop, self.target_backprop, compile=cfg.compile):
            # The normal draws of the actor's samples, then the targets' (autograd's order below)
            eps_pi = torch.randn(batch.actions.shape, device=self.device)
            eps_next = torch.randn_like(eps_pi)
            critic_loss, q_values = self.critic_step(batch.obs, batch.actions, batch.rewards, batch.next_obs,
                                                     batch.terminated, eps_next, alpha)
            self.critic_optimizer.step()
            actor_loss, log_prob_pi = self.actor_step(batch.obs, eps_pi, alpha)
        else:
            with bf16_autocast(self.device, cfg.bf16):
                actions_pi, log_prob_pi = self.actor.sample(batch.obs)
            with torch.no_grad(), bf16_autocast(self.device, cfg.bf16):
                next_actions, next_log_prob = self.actor.sample(batch.next_obs)
                targets = sac_target(batch.rewards, batch.terminated,
                                     self.critic_target(batch.next_obs, next_actions), next_log_prob, alpha, cfg.gamma)
            with bf16_autocast(self.device, cfg.bf16):
                q_values = self.critic(batch.obs, batch.actions)
            critic_loss = 0.5 * (q_values - targets).square().mean(dim=1).sum()
            self.critic_optimizer.zero_grad(set_to_none=True)
            critic_loss.backward()
            self.critic_optimizer.step()
            with bf16_autocast(self.device, cfg.bf16):
                q_pi = self.critic(batch.obs, actions_pi).min(dim=0).values
            actor_loss = (alpha * log_prob_pi - q_pi).mean()
            self.actor_optimizer.zero_grad(set_to_none=True)
            actor_backward(actor_loss, self.actor)
        self.actor_optimizer.step()

        metrics: dict[str, torch.Tensor] = {}
        if self.alpha_optimizer is not None:
            alpha_loss = temperature_loss(self.log_alpha, log_prob_pi, self.target_entropy)
            self.alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optimizer.step()
            metrics["losses/alpha_loss"] = alpha_loss.detach()
        self.n_updates += 1
        if self.n_updates % cfg.target_update_interval == 0:
            polyak_update(self.critic_target, self.critic, cfg.tau)
        metrics.update({"losses/critic_loss": critic_loss.detach(), "losses/actor_loss": actor_loss.detach(),
                        "losses/q_values": q_values.detach().mean(), "charts/alpha": alpha,
                        "charts/entropy": -log_prob_pi.detach().mean()})
        return metrics

    def written_out_actor_step(self, obs: torch.Tensor, eps: torch.Tensor,
                               alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The actor loss mean(α log π(a|s) − min_i Q_i(s, a)), a = tanh(u), u = μ + σ·eps, its gradients written
        into the actor's `.grad` (the critics' untouched); returns (actor loss, log π(a|s)).

        At the MLP's output, with g = dL/da from the critics (min's backward to the critic that gave each
        minimum): dL/dμ = g(1 − a²) + 2wa and dL/d log σ = (dL/dμ)·σ·eps − w where the clamp passes it, w = α/B
        (d log π/du = 2 tanh u − z/σ and d log π/dμ = z/σ cancel, z = (u − μ)/σ = eps; d log π/d log σ = z² − 1
        and the chain through u gives −z²). Autograd's up to float rounding, where autograd cancels those terms in
        fp32: with σ near its floor (log σ → −20) they are ~ε·e²⁰·α/B each and autograd's dL/dμ loses its digits
        (found by review, against float64); this closed form keeps them (GPU and hooked runs use autograd)."""
        with torch.no_grad():  # inside, not a decorator: torch.compile keys its cache on this code
            output = self.actor_backprop.forward(obs)
            mean, raw_log_std = output.chunk(2, dim=-1)
            log_std = raw_log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
            std = log_std.exp()
            u = mean + std * eps
            actions = torch.tanh(u)
            log_prob = squashed_log_prob(u, mean, log_std)
            q_all = self.critic_backprop.forward(obs, actions)
            q_pi, chosen = q_all.min(dim=0)
            grad_q = torch.zeros_like(q_all).scatter_(0, chosen.unsqueeze(0), -mean_grad(q_pi.numel()))
            w = alpha * mean_grad(q_pi.numel())
            mean_grad_out = self.critic_backprop.action_grad(grad_q) * (1.0 - actions.square()) + 2.0 * w * actions
            in_range = (raw_log_std >= LOG_STD_MIN) & (raw_log_std <= LOG_STD_MAX)  # clamp's backward
            log_std_grad = (mean_grad_out * std * eps - w) * in_range
            self.actor_backprop.backward(torch.cat([mean_grad_out, log_std_grad], dim=-1))
            return (alpha * log_prob - q_pi).mean(), log_prob

    def written_out_critic_step(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                                next_obs: torch.Tensor, terminated: torch.Tensor, eps: torch.Tensor,
                                alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The critics' gradients into `.grad` without autograd (rlrun/backprop.py): the soft targets, from the
        next actions sampled with the normal draw `eps`, then the squared TD errors' gradients; returns (critic
        loss, Q values). The actor's forward here keeps nothing (`written_out_actor_step` runs its own)."""
        with torch.no_grad():  # inside, not a decorator: torch.compile keys its cache on this code
            next_actions, next_log_prob = self.actor.sample_from(self.actor_backprop.forward(next_obs, keep=False), eps)
            targets = sac_target(rewards, terminated, self.target_backprop.forward(next_obs, next_actions, keep=False),
                                 next_log_prob, alpha, self.cfg.gamma)
            q_values = self.critic_backprop.forward(obs, actions)
            self.critic_backprop.backward((q_values - targets).mul_(mean_grad(q_values.shape[1])))
            return 0.5 * (q_values - targets).square().mean(dim=1).sum(), q_values

    # -- checkpointing -------------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target}

    def training_state(self) -> dict[str, Any]:
        return {"actor_optimizer": self.actor_optimizer.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict(),
                "alpha_optimizer": (self.alpha_optimizer.state_dict() if self.alpha_optimizer is not None
                                    else {}),
                "log_alpha": self.log_alpha.detach().clone(), "n_updates": self.n_updates,
                "rng": json.dumps(self.rng.bit_generator.state)}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        if self.alpha_optimizer is not None:
            self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        with torch.no_grad():
            self.log_alpha.copy_(torch.as_tensor(state["log_alpha"]))
        self.n_updates = int(state["n_updates"])
        self.rng.bit_generator.state = json.loads(state["rng"])

    def buffer_arrays(self) -> dict[str, np.ndarray]:
        return self.buffer.arrays()

    def load_buffer_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.buffer.load_arrays(arrays)
