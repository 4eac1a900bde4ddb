"""bench/run_bench.py (`make bench`) as a script: it writes its table, and refuses bad arguments before it
measures anything. The throughput figures themselves are measured by `make bench`, never asserted here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / "run_bench.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


def test_bench_writes_the_raw_env_table_below_earlier_ones(tmp_path):
    out = tmp_path / "results.md"
    for _ in range(2):
        proc = _bench("--algos", "", "--repeats", "1", "--no-sb3", "--out", str(out))
        assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# rlrun benchmark — ")
    assert text.count("\n## rlrun benchmark — ") == 1  # the second run's table, below the first one's
    assert text.count("Medians of 1 alternating measurements") == 2
    for env_id in ("LunarLander-v3", "LunarLanderContinuous-v3"):
        rates = re.findall(rf"^\| {env_id} \| ([\d,]+) \|$", text, re.M)
        assert len(rates) == 2, text
        assert all(int(rate.replace(",", "")) > 0 for rate in rates)


def test_bench_ratios_are_medians_of_each_repeats_ratio():
    """A row's ratios pair each repeat's rlrun rate with the SB3 and raw env rates measured beside it (the ratio
    of the medians, 110 / 60 here, would pair rates from different repeats)."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from run_bench import paired_medians
    finally:
        sys.path.remove(str(REPO / "bench"))
    ours, theirs, raws = [200.0, 110.0, 100.0], [100.0, 50.0, 60.0], [400.0, 220.0, 250.0]
    assert paired_medians(ours, theirs, raws) == (60.0, 2.0, 0.5)
    # a repeat SB3 did not run in is left out of its figures, not of rlrun's
    assert paired_medians(ours, [None, 50.0, None], raws) == (50.0, 2.2, 0.5)
    assert paired_medians([90.0, 120.0, 100.0], [None] * 3, [300.0, 200.0, 400.0]) == (None, None, 0.3)


def test_bench_refuses_bad_arguments_before_measuring(tmp_path):
    out = tmp_path / "results.md"
    for args, message in [(["--algos", "dqn,nope"], "--algos: unknown ['nope']"),
                          (["--algos", "td3_graphs"], "CUDA graphs need --device cuda"),
                          (["--solve", "--solve-algos", "a2c", "--algos", ""], "no solve target for ['a2c']"),
                          (["--solve", "--seeds", "0,one", "--algos", ""], "--seeds '0,one': give integers"),
                          (["--later", "-5", "--algos", "dqn"], "--later -5 --window 0: give numbers of env steps >= 0")]:
        proc = _bench(*args, "--no-sb3", "--out", str(out))
        assert proc.returncode == 2, (args, proc.stdout[-2000:], proc.stderr[-2000:])
        assert message in proc.stderr, (args, proc.stderr[-2000:])
    assert not out.exists()


def _hot_loops(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / "hot_loops.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


def test_hot_loops_writes_a_phase_split_and_an_operator_table(tmp_path):
    """bench/hot_loops.py (the per-algorithm profile), for an on-policy agent (its update is what the collection
    leaves) and an off-policy one (its own `update()`): each of the three phases was timed (none empty or negative,
    so neither timer was lost), and the operator shares are shares (positive, at most 100% together)."""
    out = tmp_path / "profiles.md"
    proc = _hot_loops("--algos", "reinforce,dqn", "--steps-scale", "0.05", "--top", "5", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# rlrun hot-loop profiles — ")
    splits = re.findall(r"^\*\*(\w+) .*Per 1,000 env steps: ([\d,.]+) ms, of which env ([\d,.]+) ms \(\d+%\), update "
                        r"([\d,.]+) ms \(\d+%\), acting and the rest (-?[\d,.]+) ms", text, re.M)
    assert [algo for algo, *_ in splits] == ["reinforce", "dqn"], text
    for _algo, *figures in splits:
        total, env, update, rest = (float(x.replace(",", "")) for x in figures)
        assert env > 0 and update > 0 and rest > 0, text
        assert env + update + rest == pytest.approx(total, abs=0.2)  # four one-decimal figures
    shares = [float(x) for x in re.findall(r"^\| `[^`]+` \| ([\d.]+)% \|", text, re.M)]
    assert len(shares) == 10 and all(s > 0 for s in shares), text
    assert sum(shares[:5]) <= 100.05 and sum(shares[5:]) <= 100.05


def test_hot_loops_refuses_bad_arguments(tmp_path):
    out = tmp_path / "profiles.md"
    for args, message in [(["--algos", "dqn,nope"], "--algos: unknown ['nope']"),
                          (["--steps-scale", "0"], "must be positive")]:
        proc = _hot_loops(*args, "--out", str(out))
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr[-2000:])
    assert not out.exists()
