"""Shared pieces of the on-policy family (REINFORCE, VPG, A2C, PPO, TRPO).

- `compute_gae` and `reward_to_go`: advantage and return estimators over a (num_steps, num_envs) rollout.
  Truncation (time limit) is bootstrapped with the value of the episode's TRUE final observation
  (`Step.next_obs`), termination is not bootstrapped (Pardo et al., "Time Limits in RL", ICML 2018).
- `CategoricalActor` and `GaussianActor`: policy heads. The Gaussian is diagonal with a state-independent,
  learned log-std. Sampled actions are stored unclipped (their log-prob is exact); the env receives them
  clipped to the action-space bounds (the SB3/CleanRL convention; no tanh squashing).
- `RolloutStorage` and `collect_rollout`: preallocated tensors filled by stepping the `EnvRunner`.
- `ObsNormalizer` and `RewardScaler`: running statistics (SB3's VecNormalize), saved in training_state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rlrun.backprop import MLPBackprop
from rlrun.config import NetworkConfig
from rlrun.envs import EnvRunner
from rlrun.networks import MLP, action_dim, obs_dim, orthogonal_init

# -- advantage and return estimators -----------------------------------------------------------------------


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
                terminated: torch.Tensor, dones: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimates (Schulman et al. 2016), all tensors shaped (num_steps, num_envs).

    `next_values[t]` is V of the observation that followed step t: V(s_{t+1}) inside an episode, V of the
    true final observation where the episode was truncated at t, V of the next rollout's first observation
    at the last step. `terminated[t]` = 1 stops bootstrapping; `dones[t]` = terminated or truncated stops
    the λ-recursion from carrying the next episode's errors back.
    """
    deltas = rewards + gamma * (1.0 - terminated) * next_values - values
    carry = gamma * lam * (1.0 - dones)
    advantages = torch.empty_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        last = deltas[t] + carry[t] * last
        advantages[t] = last
    return advantages


def reward_to_go(rewards: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
                 dones: torch.Tensor, gamma: float) -> torch.Tensor:
    """Discounted reward-to-go R_t = r_t + γ·R_{t+1}, cut at episode ends.

    Where the recursion is cut — a truncated step, or the last step of the rollout — it bootstraps with
    `next_values[t]`; a terminated step adds nothing. With next_values = 0 this is the Monte-Carlo return.
    """
    returns = torch.empty_like(rewards)
    num_steps = rewards.shape[0]
    following = next_values[-1]
    for t in range(num_steps - 1, -1, -1):
        cut = dones[t] if t < num_steps - 1 else torch.ones_like(dones[t])
        following = torch.where(cut.bool(), next_values[t], following)
        returns[t] = rewards[t] + gamma * (1.0 - terminated[t]) * following
        following = returns[t]
    return returns


def episode_complete(dones: torch.Tensor) -> torch.Tensor:
    """1 where the step's episode ends inside the rollout (its Monte-Carlo return is complete)."""
    complete = torch.empty_like(dones)
    last = torch.zeros_like(dones[0])
    for t in range(dones.shape[0] - 1, -1, -1):
        last = torch.maximum(dones[t], last)
        complete[t] = last
    return complete


def normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit (unbiased) std; a single element has no spread and is returned as it is (not NaN)."""
    if x.numel() <= 1:
        return x
    return (x - x.mean()) / (x.std() + eps)


def normalize_per_minibatch(x: torch.Tensor, size: int, eps: float = 1e-8) -> torch.Tensor:
    """`normalize` applied to each consecutive slice of `size` elements (the last may be shorter; one of a
    single element is left as it is) — in a few batched ops instead of five per minibatch."""
    if size == 1:
        return x
    full = x.shape[0] // size * size
    rows = x[:full].view(-1, size)
    parts = [(rows - rows.mean(1, keepdim=True)) / (rows.std(1, keepdim=True) + eps)]
    rest = x[full:]
    if rest.shape[0] > 0:
        parts.append(normalize(rest, eps))
    return torch.cat([parts[0].flatten(), *parts[1:]])


# -- distributions and policy heads ------------------------------------------------------------------------


def inverse_cdf_sample(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Categorical samples from `probs` [..., K] and uniforms `u` [..., 1]: the index of the first cumulative
    probability ≥ u. A few small ops, where torch.multinomial costs ~50 µs per call on a (16, 4) batch. The clamp
    covers a last cumulative probability rounded just below u."""
    return (u > probs.cumsum(-1)).sum(-1).clamp_max_(probs.shape[-1] - 1)


class CategoricalDist:
    """A batch of categorical distributions from logits (lighter than torch.distributions)."""

    def __init__(self, logits: torch.Tensor):
        self.log_probs = torch.log_softmax(logits, dim=-1)

    def sample(self) -> torch.Tensor:
        probs = self.log_probs.exp()
        return inverse_cdf_sample(probs, torch.rand_like(probs[..., :1]))

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return self.log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.log_probs.exp() * self.log_probs).sum(-1)

    def mode(self) -> torch.Tensor:
        return self.log_probs.argmax(-1)

    def kl(self, other: CategoricalDist) -> torch.Tensor:
        """KL(self ‖ other) per batch element."""
        return (self.log_probs.exp() * (self.log_probs - other.log_probs)).sum(-1)


class DiagGaussianDist:
    """A batch of diagonal Gaussians; log-prob and entropy are summed over action dimensions."""

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor):
        self.mean = mean
        self.log_std = log_std.expand_as(mean)
        self.std = self.log_std.exp()

    def sample(self) -> torch.Tensor:
        return self.mean + self.std * torch.randn_like(self.mean)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        z = (actions - self.mean) / self.std
        return (-0.5 * z.pow(2) - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (self.log_std + 0.5 * (1.0 + math.log(2 * math.pi))).sum(-1)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: DiagGaussianDist) -> torch.Tensor:
        var_ratio = (self.std / other.std).pow(2)
        mean_term = ((self.mean - other.mean) / other.std).pow(2)
        return (0.5 * (var_ratio + mean_term - 1.0 - var_ratio.log())).sum(-1)


Distribution = CategoricalDist | DiagGaussianDist


class CategoricalActor(MLP):
    """Logits over discrete actions."""

    def dist(self, obs: torch.Tensor) -> CategoricalDist:
        return CategoricalDist(self(obs))

    def dist_from(self, output: torch.Tensor) -> CategoricalDist:
        """`dist`, given the MLP's output."""
        return CategoricalDist(output)

    def sampling_noise(self, *batch: int) -> torch.Tensor:
        """The randomness of `batch` samples, drawn at once: a uniform per sample."""
        return torch.rand((*batch, 1), device=self.head.weight.device)

    def sample_from(self, output: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """`dist_from(output).sample()`, its randomness given (`sampling_noise`), in fewer ops."""
        return inverse_cdf_sample(torch.softmax(output, -1), noise)

    def env_action(self, action: torch.Tensor) -> np.ndarray:
        return self.to_env(action.cpu().numpy())

    def to_env(self, action: np.ndarray) -> np.ndarray:
        return action


class GaussianActor(MLP):
    """Mean from the MLP, state-independent learned log-std; env actions clipped to the bounds."""

    def __init__(self, in_dim: int, out_dim: int, net: NetworkConfig, low: np.ndarray, high: np.ndarray,
                 log_std_init: float = 0.0):
        super().__init__(in_dim, out_dim, net)
        self.log_std = nn.Parameter(torch.full((out_dim,), float(log_std_init)))
        self.low = np.asarray(low, dtype=np.float32)
        self.high = np.asarray(high, dtype=np.float32)

    def dist(self, obs: torch.Tensor) -> DiagGaussianDist:
        return DiagGaussianDist(self(obs), self.log_std)

    def dist_from(self, output: torch.Tensor) -> DiagGaussianDist:
        """`dist`, given the MLP's output."""
        return DiagGaussianDist(output, self.log_std)

    def sampling_noise(self, *batch: int) -> torch.Tensor:
        """The randomness of `batch` samples, drawn at once: a standard normal per sample and action dimension."""
        return torch.randn((*batch, *self.log_std.shape), device=self.log_std.device)

    def sample_from(self, output: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """`dist_from(output).sample()`, its randomness given (`sampling_noise`)."""
        return output + self.log_std.exp() * noise

    def env_action(self, action: torch.Tensor) -> np.ndarray:
        return self.to_env(action.cpu().numpy())

    def to_env(self, action: np.ndarray) -> np.ndarray:
        return np.clip(action, self.low, self.high)


Actor = CategoricalActor | GaussianActor


def make_actor(ctx_obs_space: gym.Space, action_space: gym.Space, net: NetworkConfig,
               log_std_init: float = 0.0) -> Actor:
    """Policy network for the action space, orthogonally initialised (policy head gain 0.01)."""
    in_dim = obs_dim(ctx_obs_space)
    if isinstance(action_space, gym.spaces.Discrete):
        actor: Actor = CategoricalActor(in_dim, action_dim(action_space), net)
    else:
        actor = GaussianActor(in_dim, action_dim(action_space), net, action_space.low, action_space.high,
                              log_std_init)
    orthogonal_init(actor.body)
    orthogonal_init(actor.head, gain=0.01)
    return actor


def make_critic(obs_space: gym.Space, net: NetworkConfig) -> MLP:
    """State-value network V(s), separate from the actor (value head gain 1)."""
    critic = MLP(obs_dim(obs_space), 1, net)
    orthogonal_init(critic.body)
    orthogonal_init(critic.head, gain=1.0)
    return critic


def action_shape_and_dtype(action_space: gym.Space) -> tuple[tuple[int, ...], torch.dtype]:
    if isinstance(action_space, gym.spaces.Discrete):
        return (), torch.int64
    return (action_dim(action_space),), torch.float32


# -- running normalisation ---------------------------------------------------------------------------------


class RunningMeanStd:
    """Running mean and variance by the parallel algorithm (Chan et al.), float64."""

    def __init__(self, shape: tuple[int, ...] = ()):
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = 1e-4

    def update(self, batch: np.ndarray) -> None:
        batch_mean, batch_var, batch_count = batch.mean(axis=0), batch.var(axis=0), batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var = m2 / total
        self.count = total

    def state(self) -> dict[str, Any]:
        # np.asarray: a 0-d statistic is a NumPy scalar, which the checkpoint (weights_only) cannot hold.
        return {"mean": np.array(self.mean, dtype=np.float64), "var": np.array(self.var, dtype=np.float64),
                "count": float(self.count)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.mean = np.asarray(state["mean"], dtype=np.float64).copy()
        self.var = np.asarray(state["var"], dtype=np.float64).copy()
        self.count = float(state["count"])


class ObsNormalizer:
    """(obs − mean) / std, clipped; an identity when disabled. Stats update only while training."""

    def __init__(self, shape: tuple[int, ...], enabled: bool, clip: float = 10.0, eps: float = 1e-8):
        self.enabled = enabled
        self.rms = RunningMeanStd(shape)
        self.clip = clip
        self.eps = eps

    def update(self, obs: np.ndarray) -> None:
        if self.enabled:
            self.rms.update(obs)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return np.asarray(obs, dtype=np.float32)
        scaled = (obs - self.rms.mean) / np.sqrt(self.rms.var + self.eps)
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    def state(self) -> dict[str, Any]:
        return self.rms.state()

    def load_state(self, state: dict[str, Any]) -> None:
        self.rms.load_state(state)


def observation_normalizer(agent: Any) -> ObsNormalizer | None:
    """The agent's observation normaliser when it normalises observations (on-policy agents with
    `normalize_obs`), else None. Its statistics belong with the weights wherever the policy is used."""
    obs_norm = getattr(getattr(agent, "parts", None), "obs_norm", None)
    return obs_norm if obs_norm is not None and obs_norm.enabled else None


class RewardScaler:
    """Divide rewards by the running std of the discounted return (VecNormalize's norm_reward)."""

    def __init__(self, num_envs: int, gamma: float, enabled: bool, clip: float = 10.0, eps: float = 1e-8):
        self.enabled = enabled
        self.gamma = gamma
        self.rms = RunningMeanStd(())
        self.running_return = np.zeros(num_envs, dtype=np.float64)
        self.clip = clip
        self.eps = eps

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return rewards
        self.running_return = self.running_return * self.gamma + rewards
        self.rms.update(self.running_return)
        self.running_return[dones] = 0.0
        return np.clip(rewards / np.sqrt(self.rms.var + self.eps), -self.clip, self.clip)

    def state(self) -> dict[str, Any]:
        return {**self.rms.state(), "running_return": self.running_return.copy()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.rms.load_state(state)
        self.running_return = np.asarray(state["running_return"], dtype=np.float64).copy()


# -- rollout storage and collection ------------------------------------------------------------------------


@dataclass
class RolloutStorage:
    """One rollout, every tensor shaped (num_steps, num_envs, ...), preallocated once."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    rewards: torch.Tensor
    values: torch.Tensor
    next_values: torch.Tensor
    terminated: torch.Tensor
    dones: torch.Tensor

    @classmethod
    def allocate(cls, num_steps: int, num_envs: int, obs_space: gym.Space, action_space: gym.Space,
                 device: torch.device) -> RolloutStorage:
        action_shape, action_dtype = action_shape_and_dtype(action_space)

        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros((num_steps, num_envs, *shape), dtype=dtype, device=device)

        return cls(obs=zeros(*obs_space.shape), actions=zeros(*action_shape, dtype=action_dtype),
                   logprobs=zeros(), rewards=zeros(), values=zeros(), next_values=zeros(),
                   terminated=zeros(), dones=zeros())

    @property
    def num_steps(self) -> int:
        return self.rewards.shape[0]


def _as_tensor(array: np.ndarray, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.as_tensor(array, dtype=dtype, device=device)


Sampler = Callable[[np.ndarray, int], np.ndarray]
"""Per-step sampling for one rollout: (normalised observations of step t, t) → the actions, unclipped."""

# The activations `NumpySampler` runs, in place on their input.
NUMPY_ACTIVATIONS: dict[type[nn.Module], Callable[[np.ndarray], Any]] = {
    nn.Tanh: lambda x: np.tanh(x, out=x),
    nn.ReLU: lambda x: np.maximum(x, 0.0, out=x),
}


class NumpySampler:
    """The actor's forward pass and sampling for one rollout in NumPy, on the actor's weights (views, not copies).

    On a CPU a NumPy operation on a (16, 64) array costs ~1 µs, a torch one ~3-5 µs of dispatch, and a rollout
    step's sampling is ~10 of them on tiny arrays. The same distribution as `sample_from` with the same noise, the
    forward pass rounded by another BLAS; the log-probabilities are torch's (`collect_rollout`). For a CPU actor of
    tanh or ReLU layers without hooks (`supports`); elsewhere `rollout_sampler` samples with torch.
    """

    def __init__(self, actor: Actor, backprop: MLPBackprop, noise: torch.Tensor):
        self.layers = [(linear.weight.detach().numpy(), linear.bias.detach().numpy(),
                        None if activation is None else NUMPY_ACTIVATIONS[type(activation)])
                       for linear, activation in backprop.layers]
        self.noise = noise.numpy()
        self.std = actor.log_std.detach().exp().numpy() if isinstance(actor, GaussianActor) else None

    @staticmethod
    def supports(backprop: MLPBackprop) -> bool:
        return backprop.usable() and all(activation is None or type(activation) in NUMPY_ACTIVATIONS
                                         for _, activation in backprop.layers)

    def __call__(self, obs: np.ndarray, t: int) -> np.ndarray:
        x = obs
        for weight, bias, activation in self.layers:
            x = x @ weight.T
            x += bias
            if activation is not None:
                activation(x)
        if self.std is not None:
            return x + self.std * self.noise[t]
        x -= x.max(axis=-1, keepdims=True)  # softmax's numerator; the inverse CDF scales u by its total instead
        np.exp(x, out=x)
        cdf = x.cumsum(axis=-1)
        return np.minimum((self.noise[t] * cdf[:, -1:] > cdf).sum(axis=-1, dtype=np.int64), cdf.shape[-1] - 1)


def rollout_sampler(actor: Actor, num_steps: int, num_envs: int, backprop: MLPBackprop | None = None) -> Sampler:
    """The sampling of one rollout, its randomness drawn for the whole rollout at once (`sampling_noise`): in
    NumPy where `NumpySampler` supports the actor (given its `backprop`), else with torch (the layers called
    through `backprop` where it is usable, the module elsewhere)."""
    noise = actor.sampling_noise(num_steps, num_envs)
    if backprop is not None and NumpySampler.supports(backprop):
        return NumpySampler(actor, backprop, noise)
    forward = partial(backprop.forward, keep=False) if backprop is not None and backprop.usable() else actor
    device = noise.device

    def sample(obs: np.ndarray, t: int) -> np.ndarray:
        return actor.sample_from(forward(torch.from_numpy(obs).to(device)), noise[t]).cpu().numpy()

    return sample


@torch.inference_mode()
def collect_rollout(runner: EnvRunner, storage: RolloutStorage, actor: Actor, critic: nn.Module | None,
                    obs_norm: ObsNormalizer, reward_scaler: RewardScaler, sample: Sampler | None = None) -> None:
    """Fill `storage` with `num_steps` vector steps of the current stochastic policy.

    Each step computes only what the envs need: a sample of the policy for the current observations (`sample`,
    by default `rollout_sampler`'s with torch). The policy does not change during a rollout, so the
    log-probabilities and values of the stored observations are computed after the loop, in one batched pass
    each: what per-step passes would give, up to float rounding, in far fewer ops (inside PPO's rollouts at
    rl-zoo's LunarLander settings the time outside the envs went from ~14.5 to ~9.6 ms per 1,000 env steps with
    torch's sampling; session 30).

    `next_values` are filled for GAE: V of the following observation, V of the true final observation where
    an episode was truncated (where it terminated, `compute_gae` masks them out). Without a critic all values
    are 0. (A forward hook on the actor or critic therefore sees the batched calls, not one call per step.)
    """
    device = storage.rewards.device
    sample = rollout_sampler(actor, *storage.rewards.shape) if sample is None else sample
    # Per-step NumPy results are staged in NumPy and copied to the device once, after the loop.
    obs_staged = np.empty(storage.obs.shape, dtype=np.float32)
    rewards = np.empty(storage.rewards.shape, dtype=np.float32)
    terminated = np.empty(storage.terminated.shape, dtype=np.float32)
    dones = np.empty(storage.dones.shape, dtype=np.float32)
    actions = []
    truncated_obs: list[tuple[int, np.ndarray, np.ndarray]] = []  # (step, envs, their normalised final obs)
    for t in range(storage.num_steps):
        obs_norm.update(runner.obs)
        obs_staged[t] = obs_norm(runner.obs)
        action = sample(obs_staged[t], t)
        actions.append(action)
        step = runner.step(actor.to_env(action))
        rewards[t] = reward_scaler(step.reward, step.done)
        terminated[t] = step.terminated
        dones[t] = step.done
        cut = step.truncated & ~step.terminated
        if critic is not None and cut.any():
            index = np.flatnonzero(cut)
            truncated_obs.append((t, index, obs_norm(step.next_obs[index])))
    for target, staged in ((storage.obs, obs_staged), (storage.actions, np.stack(actions)),
                           (storage.rewards, rewards), (storage.terminated, terminated), (storage.dones, dones)):
        target.copy_(torch.from_numpy(staged))
    flat_obs = storage.obs.flatten(0, 1)
    storage.logprobs.copy_(actor.dist(flat_obs).log_prob(storage.actions.flatten(0, 1)).view_as(storage.logprobs))
    if critic is None:
        return
    storage.values.copy_(critic(flat_obs).view_as(storage.values))
    storage.next_values[:-1] = storage.values[1:]
    storage.next_values[-1] = critic(_as_tensor(obs_norm(runner.obs), device)).squeeze(-1)
    if truncated_obs:
        steps = np.concatenate([np.full(len(index), t) for t, index, _ in truncated_obs])
        envs = np.concatenate([index for _, index, _ in truncated_obs])
        final_values = critic(_as_tensor(np.concatenate([obs for *_, obs in truncated_obs]), device)).squeeze(-1)
        storage.next_values[torch.as_tensor(steps, device=device), torch.as_tensor(envs, device=device)] = final_values


# -- small helpers shared by the agents --------------------------------------------------------------------


def linear_decay(start: float, global_step: int, total_steps: int) -> float:
    """`start` decayed linearly to 0 over the run; derived from the global step, so resume is exact."""
    return start * max(1.0 - global_step / max(total_steps, 1), 0.0)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # per-group multiplier set by rlrun/transfer.py


def check_batch(num_steps: int, num_envs: int, minibatch_size: int | None, algo: str,
                minibatch_key: str = "minibatch_size") -> int:
    """Validate the rollout shape; returns the batch size num_steps × num_envs. `minibatch_key` names the
    minibatch setting in messages (VPG's is vf_minibatch_size)."""
    if num_steps <= 0:
        raise ValueError(f"algo.num_steps must be positive, got {num_steps}")
    batch_size = num_steps * num_envs
    if minibatch_size is not None:
        if minibatch_size <= 0:
            raise ValueError(f"algo.{minibatch_key} must be positive, got {minibatch_size}")
        if minibatch_size > batch_size:
            raise ValueError(
                f"algo={algo}: {minibatch_key}={minibatch_size} is larger than one rollout "
                f"(num_steps × num_envs = {num_steps} × {num_envs} = {batch_size}). Lower algo.{minibatch_key} "
                f"or raise algo.num_steps / algo.num_envs.")
    return batch_size


class Deterministic:
    """`act` for evaluation: normalise with frozen stats, take the mode, clip to the bounds."""

    def __init__(self, actor: Actor, obs_norm: ObsNormalizer, device: torch.device):
        self.actor, self.obs_norm, self.device = actor, obs_norm, device

    @torch.inference_mode()
    def __call__(self, obs: np.ndarray) -> np.ndarray:
        dist = self.actor.dist(_as_tensor(self.obs_norm(obs), self.device))
        return self.actor.env_action(dist.mode())



class PolicyParts:
    """What every on-policy agent owns: actor, optional critic, normalisers and rollout storage.

    Composition, not a base class: each algorithm file builds one and writes its own update.
    """

    def __init__(self, ctx: Any, num_steps: int, gamma: float, with_critic: bool, normalize_obs: bool,
                 normalize_reward: bool, log_std_init: float = 0.0):
        obs_space, action_space = ctx.observation_space, ctx.action_space
        self.device = ctx.device
        self.actor = make_actor(obs_space, action_space, ctx.network, log_std_init).to(ctx.device)
        self.critic = make_critic(obs_space, ctx.network).to(ctx.device) if with_critic else None
        self.obs_norm = ObsNormalizer(obs_space.shape, normalize_obs)
        self.reward_scaler = RewardScaler(ctx.num_envs, gamma, normalize_reward)
        self.storage = RolloutStorage.allocate(num_steps, ctx.num_envs, obs_space, action_space, ctx.device)
        self.act = Deterministic(self.actor, self.obs_norm, ctx.device)
        self._acting = MLPBackprop(self.actor)  # its own: the update's keeps its activations between passes

    def collect(self, runner: EnvRunner) -> RolloutStorage:
        sample = rollout_sampler(self.actor, *self.storage.rewards.shape, self._acting)
        collect_rollout(runner, self.storage, self.actor, self.critic, self.obs_norm, self.reward_scaler, sample)
        return self.storage

    def modules(self) -> dict[str, nn.Module]:
        modules: dict[str, nn.Module] = {"actor": self.actor}
        if self.critic is not None:
            modules["critic"] = self.critic
        return modules

    def normaliser_state(self) -> dict[str, Any]:
        return {"obs_norm": self.obs_norm.state(), "reward_scaler": self.reward_scaler.state()}

    def load_normaliser_state(self, state: dict[str, Any]) -> None:
        self.obs_norm.load_state(state["obs_norm"])
        self.reward_scaler.load_state(state["reward_scaler"])


class OnPolicyCheckpoint:
    """The checkpoint half of the Agent protocol, shared by the on-policy agents (a mixin).

    Saves the networks of `self.parts`, each optimizer's state under the name `optimizers()` gives it, the
    update counter and the normalisers' statistics. On-policy agents keep no replay buffer.
    """

    parts: PolicyParts
    n_updates: int

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def modules(self) -> dict[str, nn.Module]:
        return self.parts.modules()

    def training_state(self) -> dict[str, Any]:
        optimizers = {name: optimizer.state_dict() for name, optimizer in self.optimizers().items()}
        return {**optimizers, "n_updates": self.n_updates, **self.parts.normaliser_state()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        for name, optimizer in self.optimizers().items():
            optimizer.load_state_dict(state[name])
        self.n_updates = int(state["n_updates"])
        self.parts.load_normaliser_state(state)

    def buffer_arrays(self) -> None:
        return None

    def load_buffer_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        pass


def fit_critic(critic: nn.Module, optimizer: torch.optim.Optimizer, obs: torch.Tensor, returns: torch.Tensor,
               epochs: int, minibatch_size: int | None = None) -> torch.Tensor:
    """Regress V(s) on `returns` by MSE: `epochs` passes, full-batch steps or shuffled minibatches."""
    size = obs.shape[0]
    step = size if minibatch_size is None else minibatch_size
    loss = torch.zeros((), device=obs.device)
    for _ in range(epochs):
        order = torch.randperm(size, device=obs.device) if step < size else None
        for start in range(0, size, step):
            index = order[start:start + step] if order is not None else slice(None)
            loss = (critic(obs[index]).squeeze(-1) - returns[index]).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return loss.detach()
