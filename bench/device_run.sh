#!/usr/bin/env bash
# The GPU session's one command (issues 5 and 9), run from the repo root on a lent CUDA machine whose Python has
# torch but not rlrun's other dependencies: those travel as wheels in .whl/ (pure Python, plus Box2D for the
# machine's Python; bench/fetch_wheels.sh fetches them). Runs tests/test_cuda.py, then writes under $OUT:
# log.txt (everything), device.md (bench/device_check.py: update times) and bench_cuda.md (bench/run_bench.py
# --device cuda, SB3 beside rlrun). On an H200 (2026-11-26) the three steps took 137 s (17 tests, one worker
# each), 95 s and ~50 s per bench row: ~9.5 minutes in all with the machine's start, inside a 15-minute lease.
set -u
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
lscpu | grep -E "Model name|^CPU\(s\)"
python3 -c "import torch, gymnasium, hydra, stable_baselines3; print('torch', torch.__version__, torch.cuda.get_device_name(), 'gymnasium', gymnasium.__version__, 'sb3', stable_baselines3.__version__)"
date; timeout "${PYTEST_S:-200}" python3 -m pytest -q -ra -p no:cacheprovider -p no:benchmark -n 17 --durations=5 tests/test_cuda.py
date; timeout "${UPDATES_S:-150}" python3 bench/device_check.py --out "$OUT"
date; timeout "${BENCH_S:-270}" python3 bench/run_bench.py --device cuda --algos "${BENCH_ALGOS:-td3_graphs,td3,sac_graphs,sac,dqn}" --repeats 3 --out "$OUT/bench_cuda.md"
date
