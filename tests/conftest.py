"""Shared test helpers: run the real `rlrun` CLI as a subprocess with tiny budgets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def rlrun(run_dir: Path, *overrides: str, timeout: float = 600, check: bool = True,
          command: str = "rlrun", extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `rlrun overrides…` into `run_dir` (plain progress, no TensorBoard unless asked)."""
    args = [str(BIN / command), f"hydra.run.dir={run_dir}", "log.progress=plain", *overrides]
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                             f"stderr:\n{proc.stderr[-3000:]}")
    return proc


def read_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def read_evaluations(run_dir: Path) -> list[dict[str, float]]:
    lines = (Path(run_dir) / "evaluations.csv").read_text().strip().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, map(float, line.split(",")))) for line in lines[1:]]


@pytest.fixture(autouse=True)
def subnormals_kept_between_tests():
    """A Run built in a test process flushes subnormal floats (`flush_denormals`, a thread flag): put the flag
    back to what a process starts with, so that no test's numbers depend on which tests ran before it."""
    yield
    torch.set_flush_denormal(False)


@pytest.fixture
def run_rlrun():
    return rlrun
