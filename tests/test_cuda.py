"""`device=cuda` end to end for every algorithm: train with an evaluation and a checkpoint, resume in place, and
evaluate the GPU-trained checkpoint on the CPU. Needs a CUDA device, so it is skipped (with this reason shown
by `-ra`) on CPU-only machines, CI included; bench/device_run.sh runs it on a lent GPU machine.

Found there on its first run (2026-11-26, H200): TD3 kept its delayed actor loss as a CPU tensor beside the
critic loss on the GPU, and the non-finite-loss check could not stack them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlrun.cli import eval_main

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device here (bench/device_run.sh runs these on a GPU machine)")

CASES = {
    "dqn": ["env=cartpole", "algo.learning_starts=200"],
    "double_dqn": ["env=cartpole", "algo.learning_starts=200"],
    "reinforce": ["env=cartpole"],
    "vpg": ["env=cartpole"],
    "a2c": ["env=cartpole"],
    "ppo": ["env=cartpole"],
    "trpo": ["env=pendulum"],
    "ddpg": ["env=pendulum", "algo.learning_starts=200"],
    "td3": ["env=pendulum", "algo.learning_starts=200"],
    "sac": ["env=pendulum", "algo.learning_starts=200"],
}


def _rlrun(run_dir: Path, *overrides: str) -> None:
    """The CLI through `python -m` (a GPU machine may have rlrun importable but not installed)."""
    args = [sys.executable, "-m", "rlrun.cli", f"hydra.run.dir={run_dir}", "log.progress=none", *overrides]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=REPO,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("algo", CASES)
def test_cuda_end_to_end(algo, tmp_path, capsys):
    run_dir = tmp_path / algo
    common = [f"algo={algo}", *CASES[algo], "seed=0", "eval.episodes=2", "eval.every_steps=1000",
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
    # The same weights and episodes: the same greedy actions up to float rounding on the two devices.
    assert on_cpu["return_mean"] == pytest.approx(on_gpu["return_mean"], rel=0.05, abs=5.0)
