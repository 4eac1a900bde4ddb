"""The algorithm registry and the small protocol `Run` needs from an algorithm.

No base-class tree: an algorithm is a module with a config dataclass and an agent class that satisfies
`Agent`. Register it in `ALGORITHMS` below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym

from rlrun.algos import a2c, ddpg, dqn, ppo, reinforce, sac, td3, trpo, vpg
from rlrun.algos.protocol import Agent


@dataclass(frozen=True)
class AlgoSpec:
    config_cls: type
    make_agent: Callable[..., Agent]
    discrete: bool
    """Can act in a Discrete action space."""
    continuous: bool
    """Can act in a Box action space."""


ALGORITHMS: dict[str, AlgoSpec] = {
    "dqn": AlgoSpec(dqn.DQNConfig, dqn.DQNAgent, discrete=True, continuous=False),
    "ddpg": AlgoSpec(ddpg.DDPGConfig, ddpg.DDPGAgent, discrete=False, continuous=True),
    "td3": AlgoSpec(td3.TD3Config, td3.TD3Agent, discrete=False, continuous=True),
    "sac": AlgoSpec(sac.SACConfig, sac.SACAgent, discrete=False, continuous=True),
    "double_dqn": AlgoSpec(dqn.DQNConfig, dqn.DQNAgent, discrete=True, continuous=False),
    "reinforce": AlgoSpec(reinforce.REINFORCEConfig, reinforce.REINFORCEAgent, discrete=True, continuous=True),
    "vpg": AlgoSpec(vpg.VPGConfig, vpg.VPGAgent, discrete=True, continuous=True),
    "a2c": AlgoSpec(a2c.A2CConfig, a2c.A2CAgent, discrete=True, continuous=True),
    "ppo": AlgoSpec(ppo.PPOConfig, ppo.PPOAgent, discrete=True, continuous=True),
    "trpo": AlgoSpec(trpo.TRPOConfig, trpo.TRPOAgent, discrete=True, continuous=True),
}


def check_action_space(name: str, action_space: gym.Space, env_id: str) -> None:
    """Raise a clear error when the algorithm cannot act in this action space."""
    spec = ALGORITHMS[name]
    if isinstance(action_space, gym.spaces.Discrete):
        if int(action_space.start) != 0:
            # Every agent acts with indices 0 … n−1; shifted ones would be wrong or invalid actions.
            raise ValueError(
                f"{env_id} has action space {action_space}, whose actions start at {int(action_space.start)}; "
                f"rlrun's agents act with 0 … n−1. Wrap the env to take 0-based actions (e.g. a gymnasium "
                f"ActionWrapper that adds {int(action_space.start)}) and pass it as env.id.")
        if not spec.discrete:
            raise ValueError(
                f"algo={name} needs a continuous (Box) action space, but {env_id} has {action_space}. "
                f"Pick a continuous env (e.g. env=pendulum or env=lunarlander_continuous) or an algorithm "
                f"that acts in discrete spaces (dqn, double_dqn, ppo, a2c, ...)."
            )
    elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        if not spec.continuous:
            raise ValueError(
                f"algo={name} needs a discrete action space, but {env_id} has a continuous one "
                f"({action_space}). Pick a discrete env (e.g. env=lunarlander or env=cartpole) or a "
                f"continuous-control algorithm (ppo, sac, td3, ddpg, ...)."
            )
    else:
        raise ValueError(f"{env_id} has action space {action_space}, which rlrun does not support "
                         f"(only Discrete and 1-D Box).")
