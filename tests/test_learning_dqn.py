"""DQN and Double DQN must actually learn: CartPole solved (deterministic 10-episode eval mean ≥ 475)."""

import pytest
from conftest import read_evaluations, read_summary, rlrun


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["dqn", "double_dqn"])
def test_dqn_solves_cartpole(tmp_path, algo):
    rlrun(tmp_path, f"algo={algo}", "env=cartpole", "seed=0", "stop_at_return=475", "log.tensorboard=false",
          timeout=900)
    summary = read_summary(tmp_path)
    assert summary["solved_at_step"] is not None, read_evaluations(tmp_path)
    assert summary["best_return_mean"] >= 475
    assert summary["status"] == "stopped"
