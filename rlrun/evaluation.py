"""Deterministic evaluation on envs separate from the training envs."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

from rlrun.config import EnvConfig
from rlrun.envs import make_env


def eval_base_seed(seed: int) -> int:
    """The reset seed of the first evaluation episode of run `seed` (`Evaluator`'s `base_seed`).

    Drawn from `SeedSequence([seed, 1])`, so runs with neighbouring seeds evaluate on unrelated start states. A
    fixed offset (seed + 1,000,003 until 2026-11-26) gave seeds s and s + 1 nine of every ten evaluation episodes
    in common, which made a sweep's spread over seeds, and the mean of a multi-seed objective, look steadier than
    it is. The base lies in [2^20, 2^32 − 2^20): away from the training envs' seeds (seed + i), and with room for
    2^20 episodes below 2^32, so an env that hands its seed to a 32-bit seeding API (NumPy's legacy
    `RandomState`) takes every one of them.
    """
    draw = int(np.random.SeedSequence([seed, 1]).generate_state(1, dtype=np.uint32)[0])
    return (1 << 20) + draw % ((1 << 32) - (1 << 21))


@dataclass(frozen=True)
class EvalResult:
    return_mean: float
    return_std: float
    length_mean: float
    returns: tuple[float, ...]
    videos: tuple[Path, ...] = ()


class Evaluator:
    """Runs `episodes` episodes side by side with the agent's deterministic policy.

    Episode k of evaluation number i is reset with seed `base_seed + i * episodes + k`, so evaluations
    see fresh start states, and a resumed run evaluates on exactly the states the uninterrupted run would.
    """

    def __init__(self, env_cfg: EnvConfig, episodes: int, base_seed: int, video_dir: Path | None = None,
                 video_episodes: int = 1):
        if episodes <= 0:
            raise ValueError(f"eval.episodes must be positive, got {episodes}")
        self.env_cfg = env_cfg
        self.episodes = episodes
        self.base_seed = base_seed
        self.video_dir = Path(video_dir) if video_dir is not None else None
        # The first `video_episodes` envs render to RGB arrays for Gymnasium's RecordVideo (issue 8);
        # rendering does not touch the env's RNG, so the returns are the same with or without video.
        recorded = min(video_episodes, episodes) if video_dir is not None else 0
        self.envs = [_recording_env(env_cfg, self.video_dir) if k < recorded else make_env(env_cfg)
                     for k in range(episodes)]

    def evaluate(self, act, eval_index: int, video_name: str | None = None) -> EvalResult:
        """`act(obs_batch) -> actions`; runs all episodes to their end.

        With `video_name` (and a `video_dir`), the recorded episodes are written as video_dir/<video_name>.mp4
        (or <video_name>-ep<k>.mp4 when several are recorded).
        """
        seeds = [self.base_seed + eval_index * self.episodes + k for k in range(self.episodes)]
        recorders = [env for env in self.envs if isinstance(env, gym.wrappers.RecordVideo)]
        for k, env in enumerate(recorders):
            env.name_prefix = video_name if len(recorders) == 1 else f"{video_name}-ep{k}"
            env.episode_trigger = (lambda _episode: True) if video_name is not None else (lambda _episode: False)
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
        videos = []
        for env in recorders:
            if env.recording:  # write the file now rather than at the next reset
                name = f"{env.name_prefix}-episode-{env.episode_id}.mp4"
                env.stop_recording()
                videos.append((self.video_dir / name).replace(self.video_dir / f"{env.name_prefix}.mp4"))
        return EvalResult(float(returns.mean()), float(returns.std()), float(lengths.mean()),
                          tuple(float(r) for r in returns), tuple(videos))

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _recording_env(env_cfg: EnvConfig, video_dir: Path) -> gym.Env:
    try:
        import moviepy  # noqa: F401  (RecordVideo encodes through moviepy)
    except ImportError:
        raise ValueError("recording video needs moviepy: pip install moviepy") from None
    # Off-screen rendering: no display or sound device is needed (and SDL stops complaining about them).
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    env = make_env(env_cfg, render_mode="rgb_array")
    try:  # a renderer's missing package (pygame, for Box2D and classic control) fails here, not at an evaluation
        env.reset(seed=0)  # every evaluation episode resets with its own seed: this one leaves no trace
        env.render()
    except gym.error.DependencyNotInstalled as exc:
        env.close()
        raise ValueError(f"recording video of {env_cfg.id} needs a package that is not installed: {exc}") from None
    with warnings.catch_warnings():  # "overwriting existing videos": several envs share the folder on purpose
        warnings.simplefilter("ignore")
        return gym.wrappers.RecordVideo(env, str(video_dir), episode_trigger=lambda _episode: False,
                                        disable_logger=True)
