"""REINFORCE: Monte-Carlo policy gradient with reward-to-go, optionally with a learned baseline.

Williams, "Simple Statistical Gradient-Following Algorithms for Connectionist Reinforcement Learning",
Machine Learning 1992; reward-to-go as in Spinning Up's "Intro to Policy Optimization".

Each iteration collects num_steps × num_envs steps and takes one gradient step on
−E[log π(a_t|s_t)·G_t], G_t the discounted reward-to-go.

Without a baseline there is no value function to bootstrap from, so G_t must be a complete Monte-Carlo
return: steps whose episode has not ended by the end of the rollout are left out of the loss (the next
rollout picks the episode up again: reward-to-go needs only future rewards), and a time-limit truncation
counts as the end of the return. With `baseline: true` a value network V is fitted to the returns, the
weight becomes G_t − V(s_t), and both the unfinished tail and truncation bootstrap from V.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlrun.algos.protocol import AgentContext
from rlrun.algos.vpg import policy_gradient_loss
from rlrun.envs import EnvRunner
from rlrun.networks import make_adam
from rlrun.onpolicy import (
    OnPolicyCheckpoint,
    PolicyParts,
    check_batch,
    episode_complete,
    fit_critic,
    reward_to_go,
)


@dataclass
class REINFORCEConfig:
    name: str = "reinforce"
    """Registry name."""
    num_envs: int = 4
    """Parallel envs collecting each rollout."""
    num_steps: int = 1000
    """Steps per env per update."""
    learning_rate: float = 1e-3
    """Adam step size of the policy."""
    gamma: float = 0.99
    """Discount factor."""
    norm_returns: bool = True
    """Standardise the weights (returns or advantages) per update: a cheap variance reduction."""
    baseline: bool = False
    """Learn a value baseline V(s) and weight by G − V."""
    vf_learning_rate: float = 1e-3
    """Adam step size of the baseline."""
    vf_iters: int = 80
    """Baseline regression steps per update."""
    ent_coef: float = 0.0
    """Entropy bonus weight."""
    max_grad_norm: float = 0.0
    """Gradient-norm clip; 0 disables."""
    normalize_obs: bool = False
    """Running observation normalisation."""
    log_std_init: float = -0.5
    """Initial log-std of the Gaussian policy (continuous actions)."""


def masked_normalize(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Standardise x using only the entries where mask = 1."""
    count = mask.sum().clamp(min=1.0)
    mean = (x * mask).sum() / count
    std = (((x - mean) * mask).pow(2).sum() / count).sqrt()
    return (x - mean) / (std + eps)


class REINFORCEAgent(OnPolicyCheckpoint):
    def __init__(self, cfg: REINFORCEConfig, ctx: AgentContext):
        check_batch(cfg.num_steps, ctx.num_envs, None, "reinforce")
        if cfg.baseline and cfg.vf_iters <= 0:
            raise ValueError(f"algo.vf_iters must be positive with algo.baseline=true, got {cfg.vf_iters}")
        self.cfg, self.ctx = cfg, ctx
        self.parts = PolicyParts(ctx, cfg.num_steps, cfg.gamma, cfg.baseline, cfg.normalize_obs, False,
                                 cfg.log_std_init)
        self.actor, self.critic = self.parts.actor, self.parts.critic
        self.optimizer = make_adam(self.actor.parameters(), cfg.learning_rate, max_grad_norm=cfg.max_grad_norm)
        self.vf_optimizer = (make_adam(self.critic.parameters(), cfg.vf_learning_rate)
                             if self.critic is not None else None)
        self.n_updates = 0

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.parts.act(obs)

    def train_iteration(self, runner: EnvRunner) -> dict[str, Any]:
        cfg = self.cfg
        rollout = self.parts.collect(runner)
        # Without a critic next_values are all 0: pure Monte-Carlo returns.
        returns = reward_to_go(rollout.rewards, rollout.next_values, rollout.terminated, rollout.dones,
                               cfg.gamma).flatten()
        if self.critic is None:
            mask = episode_complete(rollout.dones).flatten()
            weights = returns
        else:
            mask = torch.ones_like(returns)
            weights = returns - rollout.values.flatten()
        if cfg.norm_returns:
            weights = masked_normalize(weights, mask)
        b_obs = rollout.obs.flatten(0, 1)
        dist = self.actor.dist(b_obs)
        policy_loss = policy_gradient_loss(dist.log_prob(rollout.actions.flatten(0, 1)), weights, mask)
        entropy = (dist.entropy() * mask).sum() / mask.sum().clamp(min=1.0)
        self.optimizer.zero_grad(set_to_none=True)
        (policy_loss - cfg.ent_coef * entropy).backward()
        self.optimizer.step()  # clips to max_grad_norm first
        metrics = {"losses/policy_loss": policy_loss.detach(), "losses/entropy": entropy.detach(),
                   "charts/complete_fraction": mask.mean()}
        if self.critic is not None:
            metrics["losses/value_loss"] = fit_critic(self.critic, self.vf_optimizer, b_obs, returns,
                                                      cfg.vf_iters)
        self.n_updates += 1
        return metrics

    # -- checkpointing (the rest is OnPolicyCheckpoint) ---------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        optimizers = {"optimizer": self.optimizer}
        if self.vf_optimizer is not None:
            optimizers["vf_optimizer"] = self.vf_optimizer
        return optimizers
