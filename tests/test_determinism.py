"""Same seed twice → identical evaluations and weights; another seed → different ones."""

import pytest
import torch
from conftest import rlrun

CASES = {
    "dqn": ["algo=dqn", "env=cartpole", "algo.learning_starts=200", "algo.train_freq=4",
            "algo.gradient_steps=1", "algo.batch_size=32"],
    "ppo": ["algo=ppo", "env=cartpole"],
    "sac": ["algo=sac", "env=pendulum", "algo.learning_starts=200", "algo.batch_size=32"],
}
COMMON = ["total_steps=2048", "eval.every_steps=1024", "eval.episodes=2", "network.hidden=[32,32]",
          "log.tensorboard=false"]


def outcome(run_dir):
    evaluations = (run_dir / "evaluations.csv").read_text().splitlines()
    columns = [(line.split(",")[0], line.split(",")[2]) for line in evaluations]
    return columns, torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


@pytest.mark.parametrize("algo", sorted(CASES))
def test_same_seed_same_run(tmp_path, algo):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        rlrun(tmp_path / name, *CASES[algo], *COMMON, f"seed={seed}")
    (evals_a, model_a), (evals_b, model_b), (_, model_c) = (outcome(tmp_path / n) for n in "abc")
    assert evals_a == evals_b
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)
    assert any(not torch.equal(model_a[k], model_c[k]) for k in model_a)  # the seed matters
