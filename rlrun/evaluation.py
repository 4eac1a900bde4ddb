"""Deterministic evaluation on envs separate from the training envs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlrun.config import EnvConfig
from rlrun.envs import make_env


@dataclass(frozen=True)
class EvalResult:
    return_mean: float
    return_std: float
    length_mean: float
    returns: tuple[float, ...]


class Evaluator:
    """Runs `episodes` episodes side by side with the agent's deterministic policy.

    Episode k of evaluation number i is reset with seed `base_seed + i * episodes + k`, so evaluations
    see fresh start states, and a resumed run evaluates on exactly the states the uninterrupted run would.
    """

    def __init__(self, env_cfg: EnvConfig, episodes: int, base_seed: int):
        if episodes <= 0:
            raise ValueError(f"eval.episodes must be positive, got {episodes}")
        self.env_cfg = env_cfg
        self.episodes = episodes
        self.base_seed = base_seed
        self.envs = [make_env(env_cfg) for _ in range(episodes)]

    def evaluate(self, act, eval_index: int) -> EvalResult:
        """`act(obs_batch) -> actions`; runs all episodes to their end."""
        seeds = [self.base_seed + eval_index * self.episodes + k for k in range(self.episodes)]
        observations = [env.reset(seed=s)[0] for env, s in zip(self.envs, seeds)]
        returns = np.zeros(self.episodes)
        lengths = np.zeros(self.episodes, dtype=np.int64)
        active = list(range(self.episodes))
        while active:
            actions = act(np.stack([observations[i] for i in active]))
            still_active = []
            for i, action in zip(active, actions):
                obs, reward, terminated, truncated, _ = self.envs[i].step(action)
                observations[i] = obs
                returns[i] += reward
                lengths[i] += 1
                if not (terminated or truncated):
                    still_active.append(i)
            active = still_active
        return EvalResult(float(returns.mean()), float(returns.std()), float(lengths.mean()),
                          tuple(float(r) for r in returns))

    def close(self) -> None:
        for env in self.envs:
            env.close()
