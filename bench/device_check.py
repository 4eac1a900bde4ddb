"""The off-policy update on a GPU against the CPU of the same machine (issues 5 and 9).

    python bench/device_check.py --out DIR [--device cuda]

Per gradient step at rl-zoo's LunarLander settings (DQN, TD3, SAC; DDPG with the TD3 preset's networks): the
agent's own `update()` after its warm-up, synchronised, median of 5 blocks; on the CPU (one thread) and on
`--device`, and on CUDA also the bfloat16 update (`algo.bf16=true`) and, for DDPG, TD3 and SAC, the update
replayed from CUDA graphs (`algo.cuda_graphs=true`, rlrun/cudagraph.py). Writes DIR/device.md. `device=cuda`
end to end for every algorithm is tests/test_cuda.py; bench/device_run.sh runs both on a lent GPU machine. On a
CPU-only machine `--device cpu` checks the script itself.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from run_bench import bench_run  # noqa: E402  (bench/, beside this file)

from rlrun.networks import bf16_autocast, has_native_bf16  # noqa: E402
from rlrun.run import Run  # noqa: E402

# name → (overrides, update() calls per block); the TD3 preset's [400, 300] nets and batch 256 for DDPG too.
UPDATES: dict[str, tuple[list[str], int]] = {
    "dqn": (["experiment=zoo_dqn_lunarlander"], 100),
    "ddpg": (["algo=ddpg", "env=lunarlander_continuous", "network=large", "algo.batch_size=256",
              "algo.learning_starts=10000", "algo.gamma=0.98"], 100),
    "td3": (["experiment=zoo_td3_lunarlander"], 100),
    "sac": (["experiment=zoo_sac_lunarlander"], 100),
}
GRAPHED = ("ddpg", "td3", "sac")  # the algorithms with algo.cuda_graphs


# -- update time ---------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_run(overrides: list[str], device: str, tmp: Path) -> Run:
    run = bench_run(overrides, tmp, threads=1, device=device)
    warm = max(run.agent.cfg.learning_starts, 1000)  # DQN's zoo warm-up is 0: fill 1000 transitions anyway
    while run.runner.global_step < warm:
        run.agent.train_iteration(run.runner)
    return run


def time_blocks(step, device: torch.device, per_block: int, blocks: int = 5, warmup: int = 20) -> float:
    """Median over `blocks` of the mean ms per call of `step` (synchronised around each block)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(blocks):
        _sync(device)
        start = time.perf_counter()
        for _ in range(per_block):
            step()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000 / per_block)
    return statistics.median(times)


def update_ms(name: str, device: str, tmp: Path, variant: str = "") -> float:
    """ms per gradient step of the agent's update: eager, or `variant` "bf16" (algo.bf16=true) or "graphs"
    (algo.cuda_graphs=true: the agent's own graphed update, rlrun/cudagraph.py)."""
    overrides, per_block = UPDATES[name]
    extra = {"": [], "bf16": ["algo.bf16=true"], "graphs": ["algo.cuda_graphs=true"]}[variant]
    run = make_run([*overrides, *extra], device, tmp / f"upd_{name}_{device}_{variant}")
    agent = run.agent

    update = agent.graphed if variant == "graphs" else agent.update

    def step() -> None:
        with bf16_autocast(agent.device, variant == "bf16"):
            update()

    ms = time_blocks(step, agent.device, per_block) / getattr(agent, "gradient_steps", 1)
    run.close()
    return ms


def run_updates(device: str, tmp: Path) -> list[str]:
    cuda = device == "cuda"
    lines = ["| algo (settings) | CPU ms / gradient step | " + (
        "CUDA ms | CPU / CUDA | CUDA bf16 ms | CUDA graphs ms |" if cuda else f"{device} ms |"),
        "|---|---|---|---|---|---|" if cuda else "|---|---|---|"]
    for name in UPDATES:
        try:
            cpu = update_ms(name, "cpu", tmp)
            row = f"| {name} ({' '.join(UPDATES[name][0])}) | {cpu:.2f} |"
            if not cuda:
                lines.append(row + f" {cpu:.2f} |")
                continue
            gpu = update_ms(name, "cuda", tmp)
            bf16 = f"{update_ms(name, 'cuda', tmp, 'bf16'):.2f}" if has_native_bf16(torch.device("cuda")) else "—"
            graphs = f"{update_ms(name, 'cuda', tmp, 'graphs'):.3f}" if name in GRAPHED else "—"
            lines.append(row + f" {gpu:.3f} | {cpu / gpu:.1f}× | {bf16} | {graphs} |")
        except Exception as exc:
            lines.append(f"| {name} | failed: {type(exc).__name__}: {exc} |")
            traceback.print_exc()
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    lines = [f"# rlrun device check — {time.strftime('%Y-%m-%d')}", "",
             f"{gpu}, torch {torch.__version__} (CUDA {torch.version.cuda}), 1 torch thread on the CPU.", "",
             *run_updates(args.device, out / "work")]
    (out / "device.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
