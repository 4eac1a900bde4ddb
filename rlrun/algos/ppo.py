"""PPO-Clip.

Schulman et al., "Proximal Policy Optimization Algorithms", 2017 (arXiv:1707.06347); the implementation
details follow CleanRL's `ppo.py` and Huang et al., "The 37 Implementation Details of PPO" (ICLR blog 2022).

Each iteration collects `num_steps` steps from each of `num_envs` envs, computes GAE(λ) advantages
(truncation bootstrapped from the true final observation), then takes `update_epochs` passes of Adam over
shuffled minibatches of the clipped surrogate − ent_coef·entropy + vf_coef·value loss. Separate actor and
critic networks share one optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlrun.algos.protocol import AgentContext
from rlrun.backprop import MLPBackprop
from rlrun.compiled import compiled
from rlrun.envs import EnvRunner
from rlrun.networks import make_adam
from rlrun.onpolicy import (
    CategoricalDist,
    Distribution,
    OnPolicyCheckpoint,
    PolicyParts,
    check_batch,
    compute_gae,
    linear_decay,
    normalize_per_minibatch,
    set_learning_rate,
)


@dataclass
class PPOConfig:
    name: str = "ppo"
    """Registry name."""
    num_envs: int = 16
    """Parallel envs collecting each rollout."""
    num_steps: int = 1024
    """Steps per env per rollout (the batch is num_steps × num_envs)."""
    learning_rate: float = 3e-4
    """Adam step size (at the start, if annealed)."""
    anneal_lr: bool = False
    """Decay the learning rate linearly to 0 over total_steps."""
    adam_eps: float = 1e-5
    """Adam ε (SB3 and CleanRL use 1e-5)."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE λ."""
    minibatch_size: int = 64
    """Samples per gradient step; must not exceed num_steps × num_envs."""
    update_epochs: int = 4
    """Passes over each rollout."""
    norm_adv: bool = True
    """Normalise advantages per minibatch."""
    clip_coef: float = 0.2
    """Policy ratio clip ε."""
    anneal_clip: bool = False
    """Decay clip_coef linearly to 0 over total_steps."""
    clip_vloss: bool = False
    """Clip the value update around the rollout's values (by clip_coef)."""
    ent_coef: float = 0.0
    """Entropy bonus weight."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip; 0 disables."""
    target_kl: float | None = None
    """Stop the epochs early once the approximate KL of an epoch exceeds this; null = never."""
    normalize_obs: bool = False
    """Running observation normalisation."""
    normalize_reward: bool = False
    """Scale rewards by the running std of the discounted return."""
    log_std_init: float = 0.0
    """Initial log-std of the Gaussian policy (continuous actions)."""
    compile: bool = False
    """Compile the minibatch step with torch.compile (rlrun/compiled.py). On a CPU that is the written-out step
    (rlrun/backprop.py), whose element-wise work between the matmuls Inductor fuses: 13,035 against 12,147 env
    steps/s at rl-zoo's settings (medians of 3, bench/results.md, session 29), after ~25 s of compiling (less
    from Inductor's cache); since session 31 called from Inductor's C++ wrapper (+12% env steps/s, ~20 s
    more compiling the first time on a machine). On a GPU it is autograd's loss, forward and backward."""


def ppo_policy_loss(new_logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor,
                    clip_coef: float, diagnostics: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Clipped surrogate −E[min(ρA, clip(ρ, 1−ε, 1+ε)A)]; with `diagnostics` also the approx KL
    (k3 estimator, Schulman's "Approximating KL divergence") and the clip fraction, else None for both."""
    log_ratio = new_logprob - old_logprob
    ratio = log_ratio.exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef) * advantages
    loss = -torch.minimum(unclipped, clipped).mean()
    if not diagnostics:
        return loss, None, None
    with torch.no_grad():
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
        clip_fraction = ((ratio - 1.0).abs() > clip_coef).float().mean()
    return loss, approx_kl, clip_fraction


def value_loss(new_values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               clip_coef: float | None) -> torch.Tensor:
    """Mean (V − R)², or with clip_coef the max of that and the clipped-update version (PPO2's value clip).

    Plain MSE as in SB3 (so the zoo presets' vf_coef means the same); CleanRL halves it.
    """
    unclipped = (new_values - returns).pow(2)
    if clip_coef is None:
        return unclipped.mean()
    clipped_values = old_values + (new_values - old_values).clamp(-clip_coef, clip_coef)
    return torch.maximum(unclipped, (clipped_values - returns).pow(2)).mean()


def policy_loss_grad(new_logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor,
                     clip_coef: float) -> torch.Tensor:
    """d ppo_policy_loss / d new_logprob, as autograd computes it: torch.minimum passes the gradient to the smaller
    of ρA and clip(ρ)A (half to each at a tie), ρA's derivative is ρA, and clip(ρ)A's is ρA inside the clip range
    and 0 outside it. A non-finite ρA gives NaN, as through autograd (a diverging run must not look healthy)."""
    ratio = (new_logprob - old_logprob).exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef) * advantages
    in_range = (ratio >= 1.0 - clip_coef) & (ratio <= 1.0 + clip_coef)
    weight = (unclipped < clipped) + (unclipped == clipped) * (0.5 + 0.5 * in_range)
    return (unclipped * weight).mul_(-1.0 / new_logprob.numel())


def value_loss_grad(new_values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                    clip_coef: float | None) -> torch.Tensor:
    """d value_loss / d new_values; with value clipping, the derivative of the larger term (at a tie, the mean of
    both, as torch.maximum's backward)."""
    scale = 2.0 / new_values.numel()
    unclipped_grad = (new_values - returns) * scale
    if clip_coef is None:
        return unclipped_grad
    delta = new_values - old_values
    clipped_values = old_values + delta.clamp(-clip_coef, clip_coef)
    clipped_grad = (clipped_values - returns) * scale * (delta.abs() <= clip_coef)  # clamp passes inside its range
    unclipped, clipped = (new_values - returns).square(), (clipped_values - returns).square()
    return torch.where(unclipped > clipped, unclipped_grad,
                       torch.where(unclipped < clipped, clipped_grad, 0.5 * (unclipped_grad + clipped_grad)))


def policy_output_grads(dist: Distribution, actions: torch.Tensor, logprob_grad: torch.Tensor,
                        ent_coef: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gradients, at the policy network's output (logits, or the Gaussian's mean) and at a Gaussian's log σ
    (None for a categorical policy), of  Σ logprob_grad·log π(a|s) − ent_coef·mean entropy."""
    n = len(actions)
    if isinstance(dist, CategoricalDist):
        log_probs = dist.log_probs
        probs = log_probs.exp()
        # −ent_coef·mean(−Σ p log p): d/d log p_j = ent_coef/n · p_j (log p_j + 1); then log π(a|s)'s part
        grad = probs * (log_probs + 1.0) * (ent_coef / n)
        grad.scatter_add_(1, actions.long().unsqueeze(1), logprob_grad.unsqueeze(1))
        return grad - probs * grad.sum(-1, keepdim=True), None  # through log_softmax
    z = (actions - dist.mean) / dist.std  # log π = Σ −z²/2 − log σ − log √(2π)
    weight = logprob_grad.unsqueeze(1)
    mean_grad = weight * z / dist.std
    log_std_grad = (weight * (z.square() - 1.0)).sum(0) - ent_coef  # entropy: Σ log σ + const per sample
    return mean_grad, log_std_grad


class PPOAgent(OnPolicyCheckpoint):
    def __init__(self, cfg: PPOConfig, ctx: AgentContext):
        self.batch_size = check_batch(cfg.num_steps, ctx.num_envs, cfg.minibatch_size, "ppo")
        if cfg.update_epochs <= 0:
            raise ValueError(f"algo.update_epochs must be positive, got {cfg.update_epochs}")
        if not 0.0 < cfg.clip_coef:
            raise ValueError(f"algo.clip_coef must be positive, got {cfg.clip_coef}")
        self.cfg, self.ctx = cfg, ctx
        self.parts = PolicyParts(ctx, cfg.num_steps, cfg.gamma, True, cfg.normalize_obs,
                                 cfg.normalize_reward, cfg.log_std_init)
        self.actor, self.critic = self.parts.actor, self.parts.critic
        self.params = [*self.actor.parameters(), *self.critic.parameters()]
        self.optimizer = make_adam(self.params, cfg.learning_rate, max_grad_norm=cfg.max_grad_norm, eps=cfg.adam_eps)
        self.n_updates = 0
        self.actor_backprop, self.critic_backprop = MLPBackprop(self.actor), MLPBackprop(self.critic)
        # algo.compile compiles whichever step runs: the written-out one (a CPU) or autograd's loss (a GPU).
        self.loss_fn = compiled(self.minibatch_loss, "algo.compile") if cfg.compile else self.minibatch_loss
        # The written-out step runs on a CPU only; its many small kernels are called from Inductor's C++ wrapper:
        # 5,885 against 5,252 env steps/s with its Python one (medians of 3 alternating processes, session 31).
        self.written_out_fn = (compiled(self.written_out_step, "algo.compile", self.params, cpp_wrapper=True)
                               if cfg.compile else self.written_out_step)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.parts.act(obs)

    def train_iteration(self, runner: EnvRunner) -> dict[str, Any]:
        cfg = self.cfg
        progress_step = runner.global_step
        lr = linear_decay(cfg.learning_rate, progress_step, self.ctx.total_steps) if cfg.anneal_lr \
            else cfg.learning_rate
        clip_coef = linear_decay(cfg.clip_coef, progress_step, self.ctx.total_steps) if cfg.anneal_clip \
            else cfg.clip_coef
        set_learning_rate(self.optimizer, lr)

        rollout = self.parts.collect(runner)
        advantages = compute_gae(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated,
                                 rollout.dones, cfg.gamma, cfg.gae_lambda)
        returns = advantages + rollout.values
        b_obs = rollout.obs.flatten(0, 1)
        b_actions = rollout.actions.flatten(0, 1)
        b_logprobs = rollout.logprobs.flatten(0, 1)
        b_advantages = advantages.flatten()
        b_returns = returns.flatten()
        b_values = rollout.values.flatten()

        # A compiled loss takes the clip coefficient as a tensor: a float would be baked into the compiled code,
        # and an annealed one would recompile it every iteration.
        clip_arg = torch.tensor(clip_coef, device=b_obs.device) if cfg.compile else clip_coef
        metrics: dict[str, Any] = {}
        # The gradients written out, without autograd, where that is possible (fp32 on a CPU, rlrun/backprop.py):
        # autograd's up to float rounding, +32% env steps/s at rl-zoo's settings (9,589 against 7,262, medians of
        # 3 alternations in one process; bench/results.md, session 28). With algo.compile, compiled.
        written_out = self.actor_backprop.usable() and self.critic_backprop.usable()
        for _epoch in range(cfg.update_epochs):
            # Shuffle the whole batch once per epoch; minibatches are then contiguous slices (views),
            # which saves six gathers per gradient step.
            order = torch.randperm(self.batch_size, device=b_obs.device)
            e_obs, e_actions, e_logprobs = b_obs[order], b_actions[order], b_logprobs[order]
            e_advantages, e_returns, e_values = b_advantages[order], b_returns[order], b_values[order]
            if cfg.norm_adv:  # per minibatch, as SB3 and CleanRL do, computed for the whole epoch at once
                e_advantages = normalize_per_minibatch(e_advantages, cfg.minibatch_size)
            # Each minibatch's rows as views made once per epoch: one split per field, not a slice per field and
            # minibatch (as DQN's phase does).
            minibatches = list(zip(*(x.split(cfg.minibatch_size) for x in (
                e_obs, e_actions, e_logprobs, e_advantages, e_values, e_returns))))
            step = self.written_out_fn if written_out else self.autograd_step
            for index, minibatch in enumerate(minibatches):
                # KL and clip fraction only on an epoch's last minibatch (the early stop reads that one).
                last = index == len(minibatches) - 1
                pg_loss, v_loss, entropy, kl, clipped = step(*minibatch, clip_arg, last)
                if last:
                    approx_kl, clip_fraction = kl, clipped
                self.optimizer.step()  # clips to max_grad_norm first
                self.n_updates += 1
            if cfg.target_kl is not None and approx_kl > cfg.target_kl:
                break
        with torch.no_grad():
            # 1 − Var[returns − values] / Var[returns]; NaN where the returns do not vary (a batch of one), as in SB3
            # and CleanRL: a diagnostic, not a loss (check_finite leaves it out)
            returns_var = b_returns.var(unbiased=False)
            explained_var = torch.where(returns_var > 0, 1.0 - (b_returns - b_values).var(unbiased=False) / returns_var,
                                        torch.nan)
        metrics.update({
            "losses/policy_loss": pg_loss.detach(), "losses/value_loss": v_loss.detach(),
            "losses/entropy": entropy.detach(), "losses/approx_kl": approx_kl,
            "losses/clipfrac": clip_fraction, "losses/explained_variance": explained_var,
            "charts/learning_rate": lr, "charts/clip_coef": clip_coef,
        })
        return metrics

    def minibatch_loss(self, obs: torch.Tensor, actions: torch.Tensor, old_logprobs: torch.Tensor,
                       advantages: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       clip_coef: float | torch.Tensor, diagnostics: bool) -> tuple[torch.Tensor, ...]:
        """The PPO loss of one minibatch and its parts: (loss, policy loss, value loss, entropy, approx KL,
        clip fraction); the last two are None without `diagnostics`."""
        return self.loss_from(self.actor.dist(obs), self.critic(obs).squeeze(-1), actions, old_logprobs,
                              advantages, old_values, returns, clip_coef, diagnostics)

    def loss_from(self, dist: Distribution, new_values: torch.Tensor, actions: torch.Tensor,
                  old_logprobs: torch.Tensor, advantages: torch.Tensor, old_values: torch.Tensor,
                  returns: torch.Tensor, clip_coef: float | torch.Tensor, diagnostics: bool) -> tuple[torch.Tensor, ...]:
        """`minibatch_loss`, given the policy's distribution and the critic's values."""
        cfg = self.cfg
        pg_loss, kl, clipped = ppo_policy_loss(dist.log_prob(actions), old_logprobs, advantages, clip_coef,
                                               diagnostics=diagnostics)
        v_loss = value_loss(new_values, old_values, returns, clip_coef if cfg.clip_vloss else None)
        entropy = dist.entropy().mean()
        loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
        return loss, pg_loss, v_loss, entropy, kl, clipped

    def autograd_step(self, *minibatch: Any) -> tuple[torch.Tensor | None, ...]:
        """The minibatch's gradients into `.grad` through autograd; returns the loss's parts (policy loss, value
        loss, entropy, approx KL, clip fraction)."""
        loss, *parts = self.loss_fn(*minibatch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return tuple(parts)

    def written_out_step(self, obs: torch.Tensor, actions: torch.Tensor, old_logprobs: torch.Tensor,
                         advantages: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                         clip_coef: float, diagnostics: bool) -> tuple[torch.Tensor | None, ...]:
        """`autograd_step` without autograd: the loss's gradients at the networks' outputs written out
        (`policy_loss_grad`, `value_loss_grad`, `policy_output_grads`), the networks' by rlrun/backprop.py. The
        loss parts are computed only with `diagnostics` (the epoch's last minibatch, whose values are reported)."""
        with torch.no_grad():  # inside, not a decorator: torch.compile keys its cache on this code
            cfg = self.cfg
            dist = self.actor.dist_from(self.actor_backprop.forward(obs))
            values = self.critic_backprop.forward(obs).squeeze(-1)
            new_logprobs = dist.log_prob(actions)
            logprob_grad = policy_loss_grad(new_logprobs, old_logprobs, advantages, clip_coef)
            output_grad, log_std_grad = policy_output_grads(dist, actions, logprob_grad, cfg.ent_coef)
            value_grad = cfg.vf_coef * value_loss_grad(values, old_values, returns,
                                                       clip_coef if cfg.clip_vloss else None)
            self.actor_backprop.backward(output_grad)
            self.critic_backprop.backward(value_grad.unsqueeze(-1))
            log_std = getattr(self.actor, "log_std", None)  # the Gaussian policy's own parameter, outside the MLP
            if log_std is not None and log_std.requires_grad:
                if log_std.grad is None:
                    log_std.grad = log_std_grad
                else:
                    log_std.grad.copy_(log_std_grad)  # a view of the optimizer's flat gradient
            if not diagnostics:
                return None, None, None, None, None
            _, pg_loss, v_loss, entropy, kl, clipped = self.loss_from(
                dist, values, actions, old_logprobs, advantages, old_values, returns, clip_coef, True)
            return pg_loss, v_loss, entropy, kl, clipped

    # -- checkpointing (the rest is OnPolicyCheckpoint) ---------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"optimizer": self.optimizer}
