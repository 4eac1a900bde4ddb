"""`device=cuda` end to end for every algorithm: train with an evaluation and a checkpoint, resume in place,
evaluate the GPU-trained checkpoint on the GPU and on the CPU, and continue it on the CPU. Needs a CUDA device,
so it is skipped (with this reason shown by `-ra`) on CPU-only machines, CI included; bench/device_run.sh runs it
on a lent GPU machine.

Found there on its first run (2026-11-26, H200): TD3 kept its delayed actor loss as a CPU tensor beside the
critic loss on the GPU, and the non-finite-loss check could not stack them. This version: 17 passed in 137 s on an
H200 with 17 xdist workers (2026-11-26, session 18).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rlrun.cli import eval_main
from rlrun.config import compose
from rlrun.run import Run

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device here (bench/device_run.sh runs these on a GPU machine)")

CASES = {
    "dqn": ["algo=dqn", "env=cartpole", "algo.learning_starts=200"],
    "double_dqn": ["algo=double_dqn", "env=cartpole", "algo.learning_starts=200"],
    "reinforce": ["algo=reinforce", "env=cartpole"],
    "vpg": ["algo=vpg", "env=cartpole"],
    "a2c": ["algo=a2c", "env=cartpole"],
    "ppo": ["algo=ppo", "env=cartpole"],
    "trpo": ["algo=trpo", "env=pendulum"],
    "ddpg": ["algo=ddpg", "env=pendulum", "algo.learning_starts=200"],
    "td3": ["algo=td3", "env=pendulum", "algo.learning_starts=200"],
    "sac": ["algo=sac", "env=pendulum", "algo.learning_starts=200"],
    "td3_graphs": ["algo=td3", "env=pendulum", "algo.learning_starts=200", "algo.cuda_graphs=true"],
    "sac_graphs": ["algo=sac", "env=pendulum", "algo.learning_starts=200", "algo.cuda_graphs=true",
                   "algo.lr_schedule=linear"],
    "ppo_compile": ["algo=ppo", "env=cartpole", "algo.compile=true"],  # Triton kernels on a GPU
}


def _rlrun(run_dir: Path, *overrides: str) -> None:
    """The CLI through `python -m` (a GPU machine may have rlrun importable but not installed)."""
    args = [sys.executable, "-m", "rlrun.cli", f"hydra.run.dir={run_dir}", "log.progress=none", *overrides]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=REPO,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("case", CASES)
def test_cuda_end_to_end(case, tmp_path, capsys):
    run_dir = tmp_path / case
    common = [*CASES[case], "seed=0", "eval.episodes=2", "eval.every_steps=1000",
              "checkpoint.every_steps=1000", "device=cuda"]
    _rlrun(run_dir, *common, "total_steps=2000")
    first = json.loads((run_dir / "summary.json").read_text())
    assert first["status"] == "completed" and first["device"].startswith("cuda")
    assert first["final_return_mean"] is not None

    budget = first["steps_done"] + 2000  # REINFORCE's whole-episode batches can overshoot the first budget
    _rlrun(run_dir, *common, f"total_steps={budget}", "resume=auto")
    second = json.loads((run_dir / "summary.json").read_text())
    assert second["status"] == "completed" and second["steps_done"] >= budget

    capsys.readouterr()
    eval_main([str(run_dir), "--checkpoint", "last", "--device", "cpu", "--episodes", "2"])
    on_cpu = json.loads(capsys.readouterr().out)
    eval_main([str(run_dir), "--checkpoint", "last", "--device", "cuda", "--episodes", "2"])
    on_gpu = json.loads(capsys.readouterr().out)
    assert on_cpu["step"] == on_gpu["step"] == second["steps_done"]
    # The GPU run continued on a CPU (where there is no GPU): into a new directory, graphs off.
    moved = tmp_path / f"{case}_on_cpu"
    _rlrun(moved, *[o for o in common if o not in ("device=cuda", "algo.cuda_graphs=true")], "device=cpu",
           *(["algo.cuda_graphs=false"] if "algo.cuda_graphs=true" in common else []),
           f"total_steps={second['steps_done'] + 1000}", f"resume={run_dir}")
    third = json.loads((moved / "summary.json").read_text())
    assert third["status"] == "completed" and third["device"] == "cpu"
    assert third["steps_done"] >= second["steps_done"] + 1000
    # The same weights and episodes: the same greedy actions up to float rounding on the two devices.
    assert on_cpu["return_mean"] == pytest.approx(on_gpu["return_mean"], rel=0.05, abs=5.0)


def _run(tmp_path: Path, name: str, overrides: list[str]) -> Run:
    cfg = compose([*overrides, "device=cuda", "seed=3", "log.progress=none", "log.tensorboard=false",
                   "eval.every_steps=0"])
    return Run(OmegaConf.to_object(cfg), tmp_path / name, OmegaConf.to_yaml(cfg, resolve=True))


def _flat(run: Run) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for m in run.agent.modules().values() for p in m.parameters()])


@pytest.mark.parametrize("algo, extra", [
    ("ddpg", []),
    ("td3", ["algo.policy_delay=3"]),  # a branch every third update: two graphs
    ("td3", ["algo.policy_delay=2", "algo.gradient_steps=2"]),  # two replays per env step
    ("sac", ["algo.lr_schedule=linear", "algo.target_update_interval=2"]),  # moving LRs, two graphs
])
def test_cuda_graphs_follow_the_eager_update(algo, extra, tmp_path):
    """The same run with and without algo.cuda_graphs, each on its own CUDA random stream: the same
    transitions, batches, noise and steps, so the same weights up to float rounding (on the H200, before the
    streams were separated, DDPG's came out bit-identical)."""
    overrides = [f"algo={algo}", "env=pendulum", "algo.learning_starts=300", "total_steps=2000", *extra]
    runs = [_run(tmp_path, "eager", overrides), _run(tmp_path, "graphed", [*overrides, "algo.cuda_graphs=true"])]
    start = _flat(runs[0])
    assert torch.equal(start, _flat(runs[1]))
    streams = [torch.cuda.get_rng_state(), torch.cuda.get_rng_state()]  # both runs seeded alike
    metrics: list[dict] = [{}, {}]
    for _ in range(400):
        for k, run in enumerate(runs):  # SAC explores and both add noise on the GPU: one stream per run
            torch.cuda.set_rng_state(streams[k])
            metrics[k] = run.agent.train_iteration(run.runner) or metrics[k]
            streams[k] = torch.cuda.get_rng_state()
    eager, graphed = runs
    assert eager.agent.n_updates == graphed.agent.n_updates == 100 * eager.agent.gradient_steps
    moved = (_flat(eager) - start).norm()
    apart = (_flat(graphed) - _flat(eager)).norm()
    print(f"{algo} {extra}: eager moved {moved:.4g}, graphed differs from eager by {apart:.4g}")
    assert moved > 0
    assert apart <= 1e-5 * moved
    assert metrics[0].keys() == metrics[1].keys()
    for key in metrics[0]:
        assert float(metrics[1][key]) == pytest.approx(float(metrics[0][key]), rel=1e-4, abs=1e-6), key
    eager.close()
    graphed.close()
