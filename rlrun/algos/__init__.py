"""The algorithm registry and the small protocol `Run` needs from an algorithm.

No base-class tree: an algorithm is a module with a config dataclass and an agent class that satisfies
`Agent`. Register it in `ALGORITHMS` below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

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


# Ranges of settings that several algorithms share, checked by name before an agent is built (`Run`): a bad value is
# refused naming its key, where torch's own error names none ("Invalid learning rate: -1.0") and where torch would
# train on it silently (gamma=2, a negative noise scale).
UNIT_INTERVAL = ("gamma", "gae_lambda", "exploration_initial_eps", "exploration_final_eps", "rmsprop_alpha")
NON_NEGATIVE = ("learning_rate", "vf_learning_rate", "actor_lr", "critic_lr", "alpha_lr", "adam_eps",
                "optimizer_eps", "max_grad_norm", "ent_coef", "vf_coef", "exploration_fraction", "learning_starts",
                "noise_sigma", "target_noise", "noise_clip", "cg_damping")
POSITIVE_OR_NULL = ("target_kl",)
FINITE = ("log_std_init", "target_entropy")  # any real number (a NaN or inf would train on NaN actions or losses)


def check_hyperparameters(algo_cfg: Any) -> None:
    """Raise a ValueError naming `algo.<key>` for a shared setting out of its range (the tables above); the rest
    are checked where the agent is built. `gradient_steps` may be -1 (one per env step collected). Each test is
    written so that NaN fails it; infinity passes (max_grad_norm=inf means no clipping; an infinite learning rate
    stops the run at its first non-finite loss)."""
    for field in fields(algo_cfg):
        key, value = field.name, getattr(algo_cfg, field.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key in UNIT_INTERVAL and not 0.0 <= value <= 1.0:
            raise ValueError(f"algo.{key} must be in [0, 1], got {value}")
        if key == "tau" and not 0.0 < value <= 1.0:  # the Polyak coefficient: 0 would never move the target
            raise ValueError(f"algo.tau must be in (0, 1], got {value}")
        if key in NON_NEGATIVE and not value >= 0:
            raise ValueError(f"algo.{key} must be >= 0, got {value}")
        if key in POSITIVE_OR_NULL and not value > 0:
            raise ValueError(f"algo.{key} must be positive (or null: off), got {value}")
        if key in FINITE and not math.isfinite(value):
            raise ValueError(f"algo.{key} must be a finite number, got {value}")
        if key == "gradient_steps" and value < -1:
            raise ValueError(f"algo.gradient_steps must be >= 0, or -1 (one per env step collected), got {value}")
