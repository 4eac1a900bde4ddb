"""GPU check (issues 5 and 9): `device=cuda` end to end for every algorithm, and the off-policy update on the GPU
against the CPU of the same machine.

    python bench/device_check.py --out DIR [--work DIR] [--device cuda] [--jobs 11] [--skip-e2e] [--skip-updates]

1. End to end, every algorithm on `--device` (subprocesses, `--jobs` at a time): train through the CLI with
   evaluations and checkpoints; resume that run in place to twice the budget (`resume=auto`); `rlrun-eval` its
   best checkpoint on the device and on the CPU; resume its checkpoint on the CPU into a new directory (a
   GPU-trained run continued where there is no GPU); for DQN and PPO, the same run twice, compared.
2. Update time per gradient step, CPU against `--device`, at rl-zoo's LunarLander settings (DQN, TD3, SAC; DDPG
   with the TD3 preset's networks): the agent's own `update()` after its warm-up, synchronised, median of blocks.
   On CUDA also the bfloat16 update (`algo.bf16=true`) and, for DDPG, TD3 and SAC, the update replayed from CUDA
   graphs (`algo.cuda_graphs=true`, rlrun/cudagraph.py).
Writes DIR/device.md (the tables) and DIR/e2e_logs.tar.gz (each end-to-end job's log); the runs themselves go
under --work (default DIR/work). Used on a lent GPU machine; on a CPU-only
machine `--device cpu` checks the script itself.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tarfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rlrun.config import compose  # noqa: E402
from rlrun.networks import bf16_autocast, has_native_bf16  # noqa: E402
from rlrun.run import Run  # noqa: E402

# name → overrides of a short end-to-end run (budget `steps`; off-policy warm-ups shortened so updates run).
E2E: dict[str, tuple[list[str], int]] = {
    "dqn": (["algo=dqn", "env=cartpole", "algo.learning_starts=500"], 4000),
    "double_dqn": (["algo=double_dqn", "env=cartpole", "algo.learning_starts=500"], 4000),
    "reinforce": (["algo=reinforce", "env=cartpole"], 4000),
    "vpg": (["algo=vpg", "env=cartpole"], 4000),
    "a2c": (["algo=a2c", "env=cartpole"], 4000),
    "ppo": (["algo=ppo", "env=lunarlander"], 8192),
    "trpo": (["algo=trpo", "env=pendulum"], 4096),
    "ddpg": (["algo=ddpg", "env=pendulum", "algo.learning_starts=500"], 3000),
    "td3": (["algo=td3", "env=pendulum", "algo.learning_starts=500"], 3000),
    "sac": (["algo=sac", "env=pendulum", "algo.learning_starts=500"], 3000),
    "sac_bf16": (["algo=sac", "env=pendulum", "algo.learning_starts=500", "algo.bf16=true"], 3000),
}
DETERMINISM = ("dqn", "ppo")

# name → (overrides, update() calls per block); the TD3 preset's [400, 300] nets and batch 256 for DDPG too.
UPDATES: dict[str, tuple[list[str], int]] = {
    "dqn": (["experiment=zoo_dqn_lunarlander"], 100),
    "ddpg": (["algo=ddpg", "env=lunarlander_continuous", "network=large", "algo.batch_size=256",
              "algo.learning_starts=10000", "algo.gamma=0.98"], 100),
    "td3": (["experiment=zoo_td3_lunarlander"], 100),
    "sac": (["experiment=zoo_sac_lunarlander"], 100),
}
GRAPHED = ("ddpg", "td3", "sac")  # the algorithms with algo.cuda_graphs


# -- 1. end to end --------------------------------------------------------------------------------------------
def _cli(args: list[str], log: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rlrun.cli", *args]
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        return subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)


def _eval(run_dir: Path, device: str, log: Path) -> dict:
    code = "import sys; from rlrun.cli import eval_main; eval_main(sys.argv[1:])"
    done = subprocess.run([sys.executable, "-c", code, str(run_dir), "--device", device, "--episodes", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    with log.open("a") as out:
        out.write(f"$ rlrun-eval {run_dir} --device {device}\n{done.stdout}{done.stderr}")
    if done.returncode != 0:
        raise RuntimeError(f"rlrun-eval --device {device} exited {done.returncode}")
    return json.loads(done.stdout)


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _eval_rows(run_dir: Path, max_step: int) -> list[dict]:
    """evaluations.csv up to `max_step`, without the wall-clock column."""
    with (run_dir / "evaluations.csv").open() as f:
        rows = [{k: v for k, v in row.items() if k != "wall_time_s"} for row in csv.DictReader(f)]
    return [row for row in rows if int(row["step"]) <= max_step]


def e2e_job(name: str, device: str, root: Path) -> dict:
    overrides, steps = E2E[name]
    run_dir, log = root / name, root / f"{name}.log"
    common = [*overrides, "seed=0", "log.progress=none", "eval.episodes=2", f"eval.every_steps={steps // 2}",
              f"checkpoint.every_steps={steps // 2}"]
    result: dict = {"algo": name, "ok": False}
    start = time.perf_counter()
    try:
        if _cli([*common, f"device={device}", f"total_steps={steps}", f"hydra.run.dir={run_dir}"], log).returncode:
            raise RuntimeError("training exited non-zero")
        first = _summary(run_dir)
        if first["status"] != "completed" or first["steps_done"] < steps or not first["device"].startswith(device):
            raise RuntimeError(f"unexpected summary {first}")
        result["sps"] = first["steps_per_second"]
        if _cli([*common, f"device={device}", f"total_steps={2 * steps}", f"hydra.run.dir={run_dir}",
                 "resume=auto"], log).returncode:
            raise RuntimeError("resume in place exited non-zero")
        second = _summary(run_dir)
        if second["status"] != "completed" or second["steps_done"] < 2 * steps:
            raise RuntimeError(f"resumed run did not complete: {second}")
        result["return_device"] = round(_eval(run_dir, device, log)["return_mean"], 1)
        result["return_cpu"] = round(_eval(run_dir, "cpu", log)["return_mean"], 1)
        moved = root / f"{name}_on_cpu"
        if _cli([*common, "device=cpu", f"total_steps={3 * steps}", f"hydra.run.dir={moved}",
                 f"resume={run_dir}"], log).returncode:
            raise RuntimeError("resume on the CPU exited non-zero")
        third = _summary(moved)
        if third["status"] != "completed" or third["steps_done"] < 3 * steps or third["device"] != "cpu":
            raise RuntimeError(f"CPU resume did not complete: {third}")
        if name in DETERMINISM:
            twin = root / f"{name}_twin"
            _cli([*common, f"device={device}", f"total_steps={steps}", f"hydra.run.dir={twin}"], log)
            result["same_as_twin"] = _eval_rows(run_dir, steps) == _eval_rows(twin, steps)
        result["ok"] = True
    except Exception as exc:  # reported in the table; the log holds the details
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def run_e2e(device: str, root: Path, jobs: int, names: list[str]) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda n: e2e_job(n, device, root), names))
    lines = [f"| algo | end to end on {device} | steps/s (first run) | eval return on {device} | on cpu | "
             f"same result twice | wall s | error |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['algo']} | {'ok' if r['ok'] else 'FAILED'} | {r.get('sps', '—')} | "
                     f"{r.get('return_device', '—')} | {r.get('return_cpu', '—')} | {r.get('same_as_twin', '—')} | "
                     f"{r['wall_s']} | {r.get('error', '')} |")
    return lines


# -- 2. update time ---------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_run(overrides: list[str], device: str, tmp: Path) -> Run:
    cfg = compose([*overrides, "eval.every_steps=0", "eval.episodes=1", "log.tensorboard=false",
                   "log.progress=none", f"device={device}", "torch_threads=1"])
    run = Run(OmegaConf.to_object(cfg), tmp, OmegaConf.to_yaml(cfg, resolve=True))
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
    parser.add_argument("--work", default=None, help="where the runs go (default OUT/work)")
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--jobs", type=int, default=len(E2E))
    parser.add_argument("--algos", default=",".join(E2E), help="end-to-end jobs to run")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--skip-updates", action="store_true")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else out / "work"
    torch.set_num_threads(1)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    lines = [f"# rlrun device check — {time.strftime('%Y-%m-%d')}", "",
             f"{gpu}, torch {torch.__version__} (CUDA {torch.version.cuda}), 1 torch thread on the CPU.", ""]
    report = out / "device.md"
    if not args.skip_e2e:
        start = time.perf_counter()
        lines += run_e2e(args.device, work / "e2e", args.jobs, [a for a in args.algos.split(",") if a])
        with tarfile.open(out / "e2e_logs.tar.gz", "w:gz") as tar:
            for log in sorted((work / "e2e").glob("*.log")):
                tar.add(log, arcname=log.name)
        lines += ["", f"End to end: {time.perf_counter() - start:.0f} s for all jobs, {args.jobs} at a time.", ""]
        report.write_text("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)
    if not args.skip_updates:
        lines += run_updates(args.device, work / "updates")
        report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
