"""bench/run_bench.py (`make bench`) as a script: it writes its table, and refuses bad arguments before it
measures anything. The throughput figures themselves are measured by `make bench`, never asserted here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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


def test_bench_refuses_bad_arguments_before_measuring(tmp_path):
    out = tmp_path / "results.md"
    for args, message in [(["--algos", "dqn,nope"], "--algos: unknown ['nope']"),
                          (["--algos", "td3_graphs"], "CUDA graphs need --device cuda"),
                          (["--solve", "--solve-algos", "a2c", "--algos", ""], "no solve target for ['a2c']"),
                          (["--solve", "--seeds", "0,one", "--algos", ""], "--seeds '0,one': give integers")]:
        proc = _bench(*args, "--no-sb3", "--out", str(out))
        assert proc.returncode == 2, (args, proc.stdout[-2000:], proc.stderr[-2000:])
        assert message in proc.stderr, (args, proc.stderr[-2000:])
    assert not out.exists()
