"""What `Run` needs from an algorithm, and what an algorithm gets to build itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch

from rlrun.config import NetworkConfig
from rlrun.envs import EnvRunner


@dataclass(frozen=True)
class AgentContext:
    """Facts about the run an algorithm needs to build its networks and schedules."""

    observation_space: gym.Space
    action_space: gym.Space
    network: NetworkConfig
    device: torch.device
    seed: int
    total_steps: int
    num_envs: int

    def agent_rng(self) -> np.random.Generator:
        """The agent's own NumPy stream (random warm-up actions, ε-greedy, exploration noise, replay sampling).

        A child of the run's seed, not the seed itself: training env i is seeded with seed + i, so a generator
        built from the bare seed would draw env 0's numbers (on Pendulum the warm-up actions were env 0's start
        states, rescaled). `SeedSequence.spawn` gives a stream that is independent by construction.
        """
        return np.random.default_rng(np.random.SeedSequence(self.seed).spawn(1)[0])


class Agent(Protocol):
    """What the run loop needs from an algorithm."""

    def train_iteration(self, runner: EnvRunner) -> dict[str, torch.Tensor | float]:
        """Step the envs through `runner` and update the networks; return this iteration's metrics."""
        ...

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic actions for a batch of observations (used by evaluation)."""
        ...

    def modules(self) -> dict[str, torch.nn.Module]:
        """Named networks; their state dicts form the checkpoint's `"model"`."""
        ...

    def training_state(self) -> dict[str, Any]:
        """Everything else the run's future depends on (optimizers, counters, RNG), tensors and plain data."""
        ...

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Inverse of `training_state`. NumPy arrays saved there come back as torch tensors
        (checkpoints hold only tensors and plain data); convert with `np.asarray` where needed."""
        ...

    def buffer_arrays(self) -> dict[str, np.ndarray] | None:
        """Replay-buffer contents to save beside the checkpoint (`.npz`), or None."""
        ...

    def load_buffer_arrays(self, arrays: dict[str, np.ndarray]) -> None: ...


