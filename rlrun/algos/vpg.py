"""VPG: vanilla policy gradient with a learned value function and GAE(λ).

Williams 1992 (REINFORCE) with the advantage estimator of Schulman et al., "High-Dimensional Continuous
Control Using Generalized Advantage Estimation", ICLR 2016; the algorithm as in OpenAI Spinning Up's VPG
(the course's Algorithm 1).

Each iteration collects num_steps × num_envs steps, estimates advantages by GAE(λ), takes ONE policy-gradient
step on −E[log π(a|s)·Â], then fits V by `vf_iters` regression steps on the rewards-to-go (bootstrapped from
V where an episode was truncated or the rollout ended).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlrun.algos.protocol import AgentContext
from rlrun.envs import EnvRunner
from rlrun.networks import make_adam
from rlrun.onpolicy import (
    OnPolicyCheckpoint,
    PolicyParts,
    check_batch,
    compute_gae,
    fit_critic,
    normalize,
    reward_to_go,
)


@dataclass
class VPGConfig:
    name: str = "vpg"
    """Registry name."""
    num_envs: int = 4
    """Parallel envs collecting each rollout."""
    num_steps: int = 1000
    """Steps per env per update."""
    learning_rate: float = 3e-4
    """Adam step size of the policy."""
    vf_learning_rate: float = 1e-3
    """Adam step size of the value function."""
    vf_iters: int = 80
    """Value regression steps per update."""
    vf_minibatch_size: int | None = None
    """Samples per value step; null = the full batch (Spinning Up)."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.97
    """GAE λ."""
    norm_adv: bool = True
    """Normalise advantages per update."""
    ent_coef: float = 0.0
    """Entropy bonus weight."""
    max_grad_norm: float = 0.0
    """Gradient-norm clip of the policy step; 0 disables."""
    normalize_obs: bool = False
    """Running observation normalisation."""
    normalize_reward: bool = False
    """Scale rewards by the running std of the discounted return."""
    log_std_init: float = -0.5
    """Initial log-std of the Gaussian policy (continuous actions; Spinning Up uses −0.5)."""


def policy_gradient_loss(logprob: torch.Tensor, weights: torch.Tensor,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """−mean of log π(a|s)·weight over the (masked) steps; its gradient is the policy gradient estimate."""
    if mask is None:
        return -(logprob * weights).mean()
    return -(logprob * weights * mask).sum() / mask.sum().clamp(min=1.0)


class VPGAgent(OnPolicyCheckpoint):
    def __init__(self, cfg: VPGConfig, ctx: AgentContext):
        self.batch_size = check_batch(cfg.num_steps, ctx.num_envs, cfg.vf_minibatch_size, "vpg",
                                      "vf_minibatch_size")
        if cfg.vf_iters <= 0:
            raise ValueError(f"algo.vf_iters must be positive, got {cfg.vf_iters}")
        self.cfg, self.ctx = cfg, ctx
        self.parts = PolicyParts(ctx, cfg.num_steps, cfg.gamma, True, cfg.normalize_obs,
                                 cfg.normalize_reward, cfg.log_std_init)
        self.actor, self.critic = self.parts.actor, self.parts.critic
        self.pi_optimizer = make_adam(self.actor.parameters(), cfg.learning_rate, max_grad_norm=cfg.max_grad_norm)
        self.vf_optimizer = make_adam(self.critic.parameters(), cfg.vf_learning_rate)
        self.n_updates = 0

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.parts.act(obs)

    def train_iteration(self, runner: EnvRunner) -> dict[str, Any]:
        cfg = self.cfg
        rollout = self.parts.collect(runner)
        advantages = compute_gae(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated,
                                 rollout.dones, cfg.gamma, cfg.gae_lambda).flatten()
        returns = reward_to_go(rollout.rewards, rollout.next_values, rollout.terminated, rollout.dones,
                               cfg.gamma).flatten()
        if cfg.norm_adv:
            advantages = normalize(advantages)
        b_obs = rollout.obs.flatten(0, 1)
        dist = self.actor.dist(b_obs)
        policy_loss = policy_gradient_loss(dist.log_prob(rollout.actions.flatten(0, 1)), advantages)
        entropy = dist.entropy().mean()
        self.pi_optimizer.zero_grad(set_to_none=True)
        (policy_loss - cfg.ent_coef * entropy).backward()
        self.pi_optimizer.step()  # clips to max_grad_norm first
        value_loss = fit_critic(self.critic, self.vf_optimizer, b_obs, returns, cfg.vf_iters,
                                cfg.vf_minibatch_size)
        self.n_updates += 1
        return {"losses/policy_loss": policy_loss.detach(), "losses/value_loss": value_loss,
                "losses/entropy": entropy.detach()}

    # -- checkpointing (the rest is OnPolicyCheckpoint) ---------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"pi_optimizer": self.pi_optimizer, "vf_optimizer": self.vf_optimizer}
