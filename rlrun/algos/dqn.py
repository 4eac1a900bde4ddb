"""DQN and Double DQN.

Mnih et al., "Human-level control through deep reinforcement learning", Nature 2015 (DQN);
van Hasselt, Guez & Silver, "Deep Reinforcement Learning with Double Q-learning", AAAI 2016 (Double DQN).

Transitions go to a replay buffer; every `train_freq` vector steps the Q-network takes `gradient_steps`
steps on the Huber (or MSE) TD error against a target network that is copied every
`target_update_interval` env steps (or Polyak-averaged with `tau` < 1). Exploration is ε-greedy with ε
decaying linearly over `exploration_fraction` of the run.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rlrun.algos.protocol import AgentContext
from rlrun.backprop import MLPBackprop
from rlrun.buffers import ReplayBuffer
from rlrun.envs import EnvRunner
from rlrun.networks import MLP, action_dim, bf16_autocast, make_adam, obs_dim, polyak_update


class TDLoss(str, Enum):
    huber = "huber"
    mse = "mse"


@dataclass
class DQNConfig:
    name: str = "dqn"
    """Registry name (dqn or double_dqn)."""
    num_envs: int = 1
    """Parallel envs collecting transitions."""
    learning_rate: float = 6.3e-4
    """Adam step size."""
    buffer_size: int = 50_000
    """Replay capacity in transitions."""
    batch_size: int = 128
    """Transitions per gradient step."""
    learning_starts: int = 0
    """Env steps of uniformly random actions and no training before the first gradient step (the replay start of
    Mnih et al. 2015, as in Stable-Baselines3): the untrained network's argmax would fill the buffer with one action."""
    gamma: float = 0.99
    """Discount factor."""
    train_freq: int = 4
    """Vector steps between training phases."""
    gradient_steps: int = -1
    """Gradient steps per training phase; -1 = as many as env steps collected (train_freq * num_envs)."""
    target_update_interval: int = 250
    """Env steps between target-network updates."""
    tau: float = 1.0
    """Target update coefficient: 1.0 = hard copy, < 1 = Polyak averaging."""
    exploration_fraction: float = 0.12
    """Fraction of total_steps over which ε decays linearly."""
    exploration_initial_eps: float = 1.0
    """ε at step 0."""
    exploration_final_eps: float = 0.1
    """ε after the decay."""
    double: bool = False
    """Double DQN: the online network picks the next action, the target network values it."""
    loss: TDLoss = TDLoss.huber
    """TD-error loss."""
    max_grad_norm: float = 10.0
    """Gradient-norm clip; 0 disables."""
    bf16: bool = False
    """Update matmuls in bfloat16, as torch.autocast runs them (on a CPU written out, rlrun/backprop.py): faster on
    AVX512-BF16/AMX CPUs, less precise; off = fp32."""


def td_target(rewards: torch.Tensor, terminated: torch.Tensor, next_values: torch.Tensor,
              gamma: float) -> torch.Tensor:
    """r + γ(1 − terminated)·V(s'). Truncated transitions have terminated=0 and bootstrap from s'."""
    return rewards + gamma * (1.0 - terminated) * next_values


def next_state_values(target_q_next: torch.Tensor, online_q_next: torch.Tensor | None) -> torch.Tensor:
    """max_a Q_target(s', a) for DQN; Q_target(s', argmax_a Q_online(s', a)) for Double DQN."""
    if online_q_next is None:
        return target_q_next.max(dim=1).values
    best = online_q_next.argmax(dim=1, keepdim=True)
    return target_q_next.gather(1, best).squeeze(1)


def td_loss(q_taken: torch.Tensor, targets: torch.Tensor, loss: TDLoss) -> torch.Tensor:
    """The mean Huber (δ = 1) or squared TD error."""
    if loss == TDLoss.huber:
        return F.smooth_l1_loss(q_taken, targets)
    return F.mse_loss(q_taken, targets)


def td_loss_grad(q_taken: torch.Tensor, targets: torch.Tensor, loss: TDLoss) -> torch.Tensor:
    """d td_loss / d q_taken, with the arithmetic of autograd's smooth_l1 / mse backward (bit-identical)."""
    error = q_taken - targets
    if loss == TDLoss.huber:
        return error.clamp_(-1.0, 1.0).mul_(1.0 / error.numel())
    return error.mul_(2.0 / error.numel())


def linear_schedule(start: float, end: float, duration: float, t: float) -> float:
    """Linear from `start` at t=0 to `end` at t=duration, constant after."""
    if duration <= 0:
        return end
    return start + min(t / duration, 1.0) * (end - start)


class DQNAgent:
    def __init__(self, cfg: DQNConfig, ctx: AgentContext):
        if cfg.batch_size <= 0 or cfg.train_freq <= 0 or cfg.target_update_interval <= 0:
            raise ValueError("algo.batch_size, algo.train_freq and algo.target_update_interval must be > 0")
        self.cfg = cfg
        self.ctx = ctx
        self.device = ctx.device
        self.q = MLP(obs_dim(ctx.observation_space), action_dim(ctx.action_space), ctx.network).to(ctx.device)
        self.q_target = copy.deepcopy(self.q)
        self.q_target.requires_grad_(False)
        self.optimizer = make_adam(self.q.parameters(), cfg.learning_rate, max_grad_norm=cfg.max_grad_norm)
        self.backprop = MLPBackprop(self.q, cfg.bf16)
        self.buffer = ReplayBuffer(cfg.buffer_size, ctx.observation_space.shape, (), torch.int64, ctx.device)
        self.rng = ctx.agent_rng()
        self.num_actions = action_dim(ctx.action_space)
        self.gradient_steps = (cfg.gradient_steps if cfg.gradient_steps >= 0
                               else cfg.train_freq * ctx.num_envs)
        self.n_updates = 0

    def epsilon(self, step: int) -> float:
        return linear_schedule(self.cfg.exploration_initial_eps, self.cfg.exploration_final_eps,
                               self.cfg.exploration_fraction * self.ctx.total_steps, step)

    @torch.inference_mode()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """Greedy actions."""
        q_values = self.q(torch.as_tensor(obs, dtype=torch.float32, device=self.device))
        return q_values.argmax(dim=1).cpu().numpy()

    def _explore(self, obs: np.ndarray, epsilon: float) -> np.ndarray:
        n = len(obs)
        random_mask = self.rng.random(n) < epsilon
        if random_mask.all():  # skip the forward pass: most early steps are random
            return self.rng.integers(0, self.num_actions, size=n)
        actions = self.act(obs)
        random_actions = self.rng.integers(0, self.num_actions, size=n)
        return np.where(random_mask, random_actions, actions)

    def train_iteration(self, runner: EnvRunner) -> dict[str, Any]:
        cfg = self.cfg
        metrics: dict[str, Any] = {}
        for _ in range(cfg.train_freq):
            before = runner.global_step
            epsilon = self.epsilon(before)
            if before < cfg.learning_starts:
                actions = self.rng.integers(0, self.num_actions, size=runner.num_envs)
            else:
                actions = self._explore(runner.obs, epsilon)
            step = runner.step(actions)
            self.buffer.add(step.obs, step.action, step.reward, step.next_obs, step.terminated)
            # Target update whenever the step counter crosses a multiple of the interval.
            if runner.global_step // cfg.target_update_interval > before // cfg.target_update_interval:
                polyak_update(self.q_target, self.q, cfg.tau)
        metrics["charts/epsilon"] = epsilon
        if runner.global_step > cfg.learning_starts and self.buffer.size >= 1 and self.gradient_steps > 0:
            metrics.update(self.update())
        return metrics

    def update(self) -> dict[str, torch.Tensor]:
        """One training phase: `gradient_steps` gradient steps; the metrics of the last one.

        Neither the buffer nor the target network changes within a phase (both change only between env
        steps), so all the phase's batches are drawn at once and Q_target(s', ·) comes from one forward pass
        over all of them: the same batches and targets as step by step, in fewer, larger kernels (+5% env
        steps/s at rl-zoo's LunarLander settings, median of 5 side by side). DQN's TD targets depend on the
        target network only, so they too are computed once per phase; Double DQN's online argmax uses the
        online network as it is at each step.
        """
        cfg = self.cfg
        size, steps = cfg.batch_size, self.gradient_steps
        batches = self.buffer.sample(size * steps, self.rng)
        with bf16_autocast(self.device, cfg.bf16), torch.no_grad():  # hidden layers only: fp32 Q-values out
            all_target_q_next = self.q_target(batches.next_obs)
            all_targets = None if cfg.double else td_target(
                batches.rewards, batches.terminated, next_state_values(all_target_q_next, None), cfg.gamma)
        # Each step's rows as views made once per phase (one split per field, not a slice per field and step:
        # +2.1-3.6% env steps/s at rl-zoo's settings, medians of 6-8 alternations in one process, session 26).
        obs, actions = batches.obs.split(size), batches.actions.unsqueeze(1).split(size)
        step_targets = all_targets.split(size) if all_targets is not None else None
        # The gradients written out, without autograd, where that gives the same ones bit for bit (on a CPU, in
        # fp32 or algo.bf16's mixed precision, rlrun/backprop.py, which casts as autocast does): fp32 +18% env
        # steps/s at rl-zoo's settings (688 against 581, medians of 4 alternations in one process;
        # bench/results.md, session 28).
        written_out = self.backprop.usable()
        for k in range(steps):
            with bf16_autocast(self.device, cfg.bf16 and not written_out):
                if step_targets is not None:
                    targets = step_targets[k]
                else:
                    rows = slice(k * size, (k + 1) * size)
                    with torch.no_grad():
                        next_obs = batches.next_obs[rows]
                        online_q_next = self.backprop.forward(next_obs, keep=False) if written_out else self.q(next_obs)
                        targets = td_target(batches.rewards[rows], batches.terminated[rows],
                                            next_state_values(all_target_q_next[rows], online_q_next), cfg.gamma)
                if written_out:
                    q_values = self.backprop.forward(obs[k])
                    q_taken = q_values.gather(1, actions[k]).squeeze(1)
                    grad_q_taken = td_loss_grad(q_taken, targets, cfg.loss)
                    self.backprop.backward(torch.zeros_like(q_values).scatter_(1, actions[k],
                                                                                grad_q_taken.unsqueeze(1)))
                else:
                    q_taken = self.q(obs[k]).gather(1, actions[k]).squeeze(1)
            if not written_out:
                self.optimizer.zero_grad(set_to_none=True)
                td_loss(q_taken, targets, cfg.loss).backward()
            self.optimizer.step()  # clips to max_grad_norm first
            self.n_updates += 1
        with torch.no_grad():
            loss = td_loss(q_taken, targets, cfg.loss)
        return {"losses/td_loss": loss.detach(), "losses/q_values": q_taken.detach().mean()}

    # -- checkpointing -------------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"q": self.q, "q_target": self.q_target}

    def training_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "n_updates": self.n_updates,
                "rng": json.dumps(self.rng.bit_generator.state)}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.n_updates = int(state["n_updates"])
        self.rng.bit_generator.state = json.loads(state["rng"])

    def buffer_arrays(self) -> dict[str, np.ndarray]:
        return self.buffer.arrays()

    def load_buffer_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.buffer.load_arrays(arrays)
