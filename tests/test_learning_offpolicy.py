"""Learning tests: SAC, TD3 and DDPG must actually learn to swing up Pendulum-v1 (a random policy scores about
-1200 to -1500; a swing-up about -150). Small nets keep each run well under two minutes on 2 shared cores."""

from __future__ import annotations

import pytest
from conftest import read_summary, rlrun

FAST = ["env=pendulum", "network.hidden=[64,64]", "algo.learning_starts=1000", "algo.batch_size=128",
        "eval.every_steps=1000", "eval.episodes=5", "stop_at_return=-300", "log.tensorboard=false"]


@pytest.mark.slow
@pytest.mark.parametrize("algo, steps", [("sac", 8000), ("td3", 10000), ("ddpg", 10000)])
def test_learns_pendulum(tmp_path, algo, steps):
    rlrun(tmp_path / "run", f"algo={algo}", f"total_steps={steps}", *FAST)
    summary = read_summary(tmp_path / "run")
    assert summary["best_return_mean"] > -400, summary
