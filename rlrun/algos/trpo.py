"""TRPO: trust region policy optimisation.

Schulman et al., "Trust Region Policy Optimization", ICML 2015; the practical details (critic fitted
separately by Adam minibatches, line search that needs both the KL limit and an improved surrogate)
follow SB3-contrib's TRPO, which rl-zoo's TRPO presets run.

Each iteration: collect num_steps × num_envs steps, GAE(λ) advantages; g = ∇ of the surrogate
L(θ) = E[π_θ(a|s)/π_old(a|s)·Â]; solve F·s = g by conjugate gradient, F the Hessian of the mean
KL(π_old ‖ π_θ) (Fisher-vector products by double backprop, plus cg_damping·s); the largest step along s
allowed by the quadratic KL model is β = sqrt(2δ / sᵀFs); backtrack β·shrinkᵏ until the real mean KL is
< δ (target_kl) and L improved; keep the old policy if no step qualifies. Then fit V for n_critic_updates
epochs of minibatch Adam on the returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn.utils import parameters_to_vector

from rlrun.algos.protocol import AgentContext
from rlrun.envs import EnvRunner
from rlrun.networks import make_adam
from rlrun.onpolicy import OnPolicyCheckpoint, PolicyParts, check_batch, compute_gae, fit_critic, normalize


@dataclass
class TRPOConfig:
    name: str = "trpo"
    """Registry name."""
    num_envs: int = 1
    """Parallel envs collecting each rollout."""
    num_steps: int = 2048
    """Steps per env per update."""
    learning_rate: float = 1e-3
    """Adam step size of the critic (the policy step comes from the trust region)."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE λ."""
    target_kl: float = 0.01
    """Trust-region radius δ on the mean KL between old and new policy."""
    cg_max_steps: int = 15
    """Conjugate-gradient iterations."""
    cg_damping: float = 0.1
    """Added to the Fisher-vector product (F + damping·I) for stability."""
    line_search_shrinking_factor: float = 0.8
    """Backtracking factor of the line search."""
    line_search_max_iter: int = 10
    """Backtracking steps before giving up (the policy then stays unchanged)."""
    n_critic_updates: int = 10
    """Epochs of critic regression per rollout."""
    minibatch_size: int = 128
    """Samples per critic step."""
    norm_adv: bool = True
    """Normalise advantages per rollout."""
    normalize_obs: bool = False
    """Running observation normalisation."""
    normalize_reward: bool = False
    """Scale rewards by the running std of the discounted return."""
    log_std_init: float = 0.0
    """Initial log-std of the Gaussian policy (continuous actions)."""


def conjugate_gradient(matrix_vector: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
                       max_steps: int, residual_tol: float = 1e-10) -> torch.Tensor:
    """Approximately solve A x = b for symmetric positive-definite A given only x ↦ A x."""
    x = torch.zeros_like(b)
    residual = b.clone()
    direction = b.clone()
    residual_sq = residual.dot(residual)
    for _ in range(max_steps):
        if residual_sq < residual_tol:
            break
        a_direction = matrix_vector(direction)
        alpha = residual_sq / direction.dot(a_direction)
        x += alpha * direction
        residual -= alpha * a_direction
        new_residual_sq = residual.dot(residual)
        direction = residual + (new_residual_sq / residual_sq) * direction
        residual_sq = new_residual_sq
    return x


def max_step_size(direction: torch.Tensor, fisher_direction: torch.Tensor, max_kl: float) -> torch.Tensor:
    """β with ½·(βs)ᵀF(βs) = δ: the step the quadratic KL model allows along s."""
    return torch.sqrt(2.0 * max_kl / direction.dot(fisher_direction).clamp(min=1e-12))


def line_search(evaluate: Callable[[float], tuple[float, float]], objective_before: float, max_kl: float,
                shrink: float, max_iter: int) -> float | None:
    """Backtracking: the first fraction 1, shrink, shrink², … whose step keeps the mean KL < max_kl AND
    improves the surrogate. `evaluate(fraction)` applies that fraction of the full step and returns
    (surrogate, kl). None if no fraction qualifies."""
    fraction = 1.0
    for _ in range(max_iter):
        objective, kl = evaluate(fraction)
        if kl < max_kl and objective > objective_before:
            return fraction
        fraction *= shrink
    return None


@torch.no_grad()
def assign_flat(params: list[torch.nn.Parameter], vector: torch.Tensor) -> None:
    """Copy a flat vector into the parameters in place. (torch's vector_to_parameters rebinds .data to views
    of the vector instead; their different memory alignment changes float rounding in later matmuls, which
    broke bit-exact resume.)"""
    offset = 0
    for param in params:
        param.copy_(vector[offset:offset + param.numel()].view_as(param))
        offset += param.numel()


class TRPOAgent(OnPolicyCheckpoint):
    def __init__(self, cfg: TRPOConfig, ctx: AgentContext):
        self.batch_size = check_batch(cfg.num_steps, ctx.num_envs, cfg.minibatch_size, "trpo")
        if not (cfg.target_kl > 0 and cfg.cg_max_steps > 0 and cfg.line_search_max_iter > 0 and cfg.n_critic_updates > 0):
            raise ValueError("algo.target_kl, algo.cg_max_steps, algo.line_search_max_iter and algo.n_critic_updates "
                             "must be positive (n_critic_updates = 0 would never fit the critic)")
        if not 0.0 < cfg.line_search_shrinking_factor < 1.0:
            raise ValueError(f"algo.line_search_shrinking_factor must be in (0, 1), "
                             f"got {cfg.line_search_shrinking_factor}")
        self.cfg, self.ctx = cfg, ctx
        self.parts = PolicyParts(ctx, cfg.num_steps, cfg.gamma, True, cfg.normalize_obs,
                                 cfg.normalize_reward, cfg.log_std_init)
        self.actor, self.critic = self.parts.actor, self.parts.critic
        self.actor_params = list(self.actor.parameters())
        self.vf_optimizer = make_adam(self.critic.parameters(), cfg.learning_rate, eps=1e-5)
        self.n_updates = 0

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.parts.act(obs)

    def train_iteration(self, runner: EnvRunner) -> dict[str, Any]:
        cfg = self.cfg
        rollout = self.parts.collect(runner)
        advantages = compute_gae(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated,
                                 rollout.dones, cfg.gamma, cfg.gae_lambda)
        returns = (advantages + rollout.values).flatten()
        advantages = advantages.flatten()
        if cfg.norm_adv:
            advantages = normalize(advantages)
        b_obs = rollout.obs.flatten(0, 1)
        b_actions = rollout.actions.flatten(0, 1)
        b_logprobs = rollout.logprobs.flatten(0, 1)
        metrics = self.policy_step(b_obs, b_actions, b_logprobs, advantages)
        metrics["losses/value_loss"] = fit_critic(self.critic, self.vf_optimizer, b_obs, returns,
                                                  cfg.n_critic_updates, cfg.minibatch_size)
        self.n_updates += 1
        return metrics

    def policy_step(self, obs: torch.Tensor, actions: torch.Tensor, old_logprobs: torch.Tensor,
                    advantages: torch.Tensor) -> dict[str, Any]:
        cfg, params = self.cfg, self.actor_params
        with torch.no_grad():
            old_dist = self.actor.dist(obs)

        def surrogate_and_kl() -> tuple[torch.Tensor, torch.Tensor]:
            dist = self.actor.dist(obs)
            ratio = (dist.log_prob(actions) - old_logprobs).exp()
            return (ratio * advantages).mean(), old_dist.kl(dist).mean()

        surrogate, kl = surrogate_and_kl()
        policy_gradient = parameters_to_vector(torch.autograd.grad(surrogate, params, retain_graph=True))
        kl_gradient = parameters_to_vector(torch.autograd.grad(kl, params, create_graph=True))

        def fisher_vector(vector: torch.Tensor) -> torch.Tensor:
            product = torch.autograd.grad(kl_gradient.dot(vector), params, retain_graph=True)
            return parameters_to_vector(product) + cfg.cg_damping * vector

        direction = conjugate_gradient(fisher_vector, policy_gradient, cfg.cg_max_steps)
        full_step = max_step_size(direction, fisher_vector(direction), cfg.target_kl) * direction
        start = parameters_to_vector(params).detach()

        @torch.no_grad()
        def evaluate(fraction: float) -> tuple[float, float]:
            assign_flat(params, start + fraction * full_step)
            new_surrogate, new_kl = surrogate_and_kl()
            return float(new_surrogate), float(new_kl)

        fraction = line_search(evaluate, float(surrogate.detach()), cfg.target_kl, cfg.line_search_shrinking_factor,
                               cfg.line_search_max_iter)
        with torch.no_grad():
            assign_flat(params, start + (fraction or 0.0) * full_step)
            final_surrogate, final_kl = surrogate_and_kl()
        return {"losses/surrogate": final_surrogate, "losses/kl": final_kl,
                "losses/surrogate_gain": final_surrogate - surrogate.detach(),
                "charts/line_search_fraction": fraction or 0.0,
                "charts/line_search_success": float(fraction is not None)}

    # -- checkpointing (the rest is OnPolicyCheckpoint) ---------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"vf_optimizer": self.vf_optimizer}  # the actor moves by natural gradient, not an optimizer
