#!/usr/bin/env bash
# Fetch, on this machine, the wheels bench/device_run.sh installs on a GPU machine whose Python (3.12) has torch
# but none of rlrun's other dependencies and no package index. They land in .whl/ (git-ignored through
# .git/info/exclude), which the device call carries.
set -eu
cd "$(dirname "$0")/.."
mkdir -p .git/info .whl
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
  -d .whl hydra-core==1.3.8 omegaconf==2.3.1 gymnasium==1.4.0 Farama-Notifications==0.0.6 Box2D==2.3.10 \
  pygame-ce==2.5.8 stable_baselines3==2.9.2 sb3_contrib==2.9.2
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3  # published as a source archive only
ls .whl
