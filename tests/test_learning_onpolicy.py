"""The on-policy algorithms learn (CLI runs on CartPole and Pendulum), and their runs resume exactly."""

from __future__ import annotations

import pytest
import torch
from conftest import read_evaluations, read_summary, rlrun

RANDOM_CARTPOLE = 22.0  # mean return of a uniformly random CartPole policy

# Each uses the shipped tuned defaults for CartPole with a smaller budget; stop early once clearly learnt.
CARTPOLE_BUDGETS = {
    "ppo": 60_000,
    "a2c": 100_000,
    "trpo": 60_000,
    "vpg": 80_000,
    "reinforce": 80_000,
}


@pytest.mark.slow
@pytest.mark.parametrize("algo", sorted(CARTPOLE_BUDGETS))
def test_learns_cartpole(tmp_path, algo):
    run_dir = tmp_path / algo
    rlrun(run_dir, f"algo={algo}", "env=cartpole", f"total_steps={CARTPOLE_BUDGETS[algo]}",
          "eval.every_steps=10000", "eval.episodes=5", "stop_at_return=300", "log.tensorboard=false",
          timeout=300)
    summary = read_summary(run_dir)
    assert summary["best_return_mean"] >= 150, (algo, read_evaluations(run_dir))
    assert summary["best_return_mean"] > 5 * RANDOM_CARTPOLE


@pytest.mark.slow
def test_ppo_learns_pendulum_continuous(tmp_path):
    """Gaussian policy: a random policy scores about −1200 on Pendulum."""
    run_dir = tmp_path / "pendulum"
    rlrun(run_dir, "algo=ppo", "env=pendulum", "total_steps=100000", "algo.num_envs=8", "algo.num_steps=256",
          "algo.minibatch_size=256", "algo.update_epochs=10", "algo.learning_rate=1e-3", "algo.gae_lambda=0.95",
          "algo.normalize_obs=true", "algo.normalize_reward=true", "network.hidden=[64,64]",
          "network.activation=tanh", "eval.every_steps=20000", "eval.episodes=5", "stop_at_return=-400",
          "log.tensorboard=false", timeout=300)
    assert read_summary(run_dir)["best_return_mean"] > -700


@pytest.mark.parametrize("algo,env", [
    ("ppo", "cartpole"), ("trpo", "pendulum"),
    pytest.param("a2c", "cartpole", marks=pytest.mark.slow),
    pytest.param("reinforce", "cartpole", marks=pytest.mark.slow),
    pytest.param("vpg", "pendulum", marks=pytest.mark.slow),
])
def test_resume_is_exact(tmp_path, algo, env):
    """Two iterations straight == one iteration, checkpoint, resume, one more (weights and optimizer)."""
    common = [f"algo={algo}", f"env={env}", "algo.num_envs=2", "algo.num_steps=64", "eval.every_steps=0",
              "eval.episodes=1", "log.tensorboard=false", "network.hidden=[16]", "torch_threads=1"]
    if algo == "ppo":
        common += ["algo.minibatch_size=32", "algo.normalize_obs=true", "algo.normalize_reward=true",
                   "algo.anneal_lr=true"]
    if algo == "trpo":
        common += ["algo.minibatch_size=32", "algo.normalize_obs=true"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    rlrun(straight, *common, "total_steps=256", timeout=120)
    rlrun(split, *common, "total_steps=128", timeout=120)
    rlrun(split, *common, "total_steps=256", f"resume={split}", timeout=120)
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(split / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 256
    for key, value in a["model"].items():
        torch.testing.assert_close(value, b["model"][key], rtol=0, atol=0, msg=key)
