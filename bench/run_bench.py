"""`make bench`: rlrun's training throughput beside Stable-Baselines3 at the same (rl-zoo) hyperparameters.

Everything is measured in this one process, side by side, with the same torch threads and the same device for
both libraries (`--threads`, default 1; `--device`, default cpu):
  1. the raw env stepping rate (random actions, one env): the physical limit of one core;
  2. per algorithm, training throughput in env steps/s with evaluation off — for off-policy algorithms the
     training phase only (after `learning_starts`) — for rlrun and, when the `.[bench]` extra is installed,
     for SB3 at the same settings; each measured `--repeats` times alternately (rlrun, the row's raw env rate,
     SB3) and reported as the median; its ratios are the medians of each repeat's ratios;
  3. with `--solve`, time to solve (median of `--seeds`): rlrun with its own presets, from `summary.json`, and
     SB3 at rl-zoo's hyperparameters, evaluated the same way (the larger of the two budgets; `--sb3-solve-timeout`).
It adds a dated Markdown table to `bench/results.md` (or `--out`), below what the file already holds.

    python bench/run_bench.py [--algos dqn,ppo] [--repeats 3] [--solve [--solve-algos ppo,dqn]] [--seeds 0,1,2]
                                [--threads 1] [--device cuda] [--later STEPS] [--window STEPS]
                                [--sb3-flush-denormals]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rlrun.config import compose  # noqa: E402
from rlrun.files import atomic_write_text  # noqa: E402
from rlrun.networks import cpuinfo_field, has_native_bf16  # noqa: E402
from rlrun.run import Run  # noqa: E402

# name → (rl-zoo preset, env steps to time, warm-up steps before timing[, extra overrides])
ZOO: dict[str, tuple] = {
    "dqn": ("zoo_dqn_lunarlander", 4_000, 1_000),
    "double_dqn": ("zoo_dqn_lunarlander", 4_000, 1_000, ["algo.double=true"]),  # SB3 has no Double DQN
    "ppo": ("zoo_ppo_lunarlander", 3 * 16_384, 16_384),
    "a2c": ("zoo_a2c_lunarlander", 20_000, 2_000),
    "trpo": ("zoo_trpo_lunarlander_continuous", 3 * 2_048, 2_048),
    "ddpg": ("zoo_ddpg_lunarlander", 1_000, 10_000),
    "td3": ("zoo_td3_lunarlander", 1_000, 10_000),
    "sac": ("zoo_sac_lunarlander", 1_000, 10_000),
    # rl-zoo has no LunarLander settings for REINFORCE or VPG, nor SB3 the algorithms: rlrun's defaults, alone.
    "reinforce": (None, 3 * 4_000, 4_000, ["algo=reinforce", "env=lunarlander"]),
    "vpg": (None, 3 * 4_000, 4_000, ["algo=vpg", "env=lunarlander"]),
    # The same settings with the opt-in bfloat16 update (algo.bf16=true): less precise, so not the default.
    "dqn_bf16": ("zoo_dqn_lunarlander", 4_000, 1_000, ["algo.bf16=true"]),
    "ddpg_bf16": ("zoo_ddpg_lunarlander", 1_000, 10_000, ["algo.bf16=true"]),
    "td3_bf16": ("zoo_td3_lunarlander", 1_000, 10_000, ["algo.bf16=true"]),
    "sac_bf16": ("zoo_sac_lunarlander", 1_000, 10_000, ["algo.bf16=true"]),
    # The CPU update's written-out gradient steps compiled by torch.compile (algo.compile=true); the warm-up's
    # first updates, past learning_starts, compile them.
    "ddpg_compile": ("zoo_ddpg_lunarlander", 1_000, 10_100, ["algo.compile=true"]),
    "td3_compile": ("zoo_td3_lunarlander", 1_000, 10_100, ["algo.compile=true"]),
    "sac_compile": ("zoo_sac_lunarlander", 1_000, 10_100, ["algo.compile=true"]),
    "ddpg_bf16_compile": ("zoo_ddpg_lunarlander", 1_000, 10_100, ["algo.bf16=true", "algo.compile=true"]),
    "td3_bf16_compile": ("zoo_td3_lunarlander", 1_000, 10_100, ["algo.bf16=true", "algo.compile=true"]),
    "sac_bf16_compile": ("zoo_sac_lunarlander", 1_000, 10_100, ["algo.bf16=true", "algo.compile=true"]),
    # The update captured in CUDA graphs (algo.cuda_graphs=true, rlrun/cudagraph.py): --device cuda only.
    "td3_graphs": ("zoo_td3_lunarlander", 1_000, 10_000, ["algo.cuda_graphs=true"]),
    "sac_graphs": ("zoo_sac_lunarlander", 1_000, 10_000, ["algo.cuda_graphs=true"]),
    # PPO's minibatch loss compiled by torch.compile (algo.compile=true); the warm-up iteration compiles it.
    "ppo_compile": ("zoo_ppo_lunarlander", 3 * 16_384, 16_384, ["algo.compile=true"]),
    # Subnormal floats kept (flush_denormals=false), to measure what flushing them buys; asked for by name only,
    # and best with --later: early in training few of Adam's moments have decayed into the subnormals yet.
    "dqn_subnormals": ("zoo_dqn_lunarlander", 4_000, 1_000, ["flush_denormals=false"]),
    "td3_subnormals": ("zoo_td3_lunarlander", 1_000, 10_000, ["flush_denormals=false"]),
}
# DDPG's, TD3's and SAC's algo.compile compiles their written-out CPU update; they refuse it on a GPU.
CPU_ONLY = {a for a in ZOO if a.endswith("_compile") and not a.startswith("ppo")}
VARIANTS = ("_bf16", "_graphs", "_compile", "_subnormals")  # a row's SB3 counterpart: its algorithm, no suffixes
SOLVE = {"ppo": ("lunarlander", 200), "dqn": ("lunarlander", 200), "sac": ("lunarlander_continuous", 200),
         "td3": ("lunarlander_continuous", 200)}


def sb3_name(row: str) -> str:
    for suffix in reversed(VARIANTS):  # td3_bf16_compile → td3
        row = row.removesuffix(suffix)
    return row


def cpu_model() -> str:
    """The CPU's model name and the vector instructions torch uses on it (the bf16 rows need AVX512-BF16/AMX)."""
    name = cpuinfo_field("model name") or platform.processor() or platform.machine()
    bf16 = "hardware bf16" if has_native_bf16(torch.device("cpu")) else "no hardware bf16"
    return f"{name} ({platform.machine()}, torch {torch.backends.cpu.get_cpu_capability()}, {bf16})"


def machine(device: str) -> str:
    """The CPU, and the GPU when the bench trains on one."""
    if device == "cuda":
        return f"{cpu_model()} with {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    return cpu_model()


def raw_env_rate(env_id: str, steps: int = 20_000) -> float:
    env = gym.make(env_id)
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(steps)]
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def bench_run(overrides: list[str], tmp: Path, threads: int, device: str = "cpu") -> Run:
    """A training run built in this process, evaluation and logging off (also used by device_check.py)."""
    cfg = compose([*overrides, "eval.every_steps=0", "eval.episodes=1", "log.tensorboard=false",
                   "log.progress=none", f"device={device}", f"torch_threads={threads}"])
    return Run(OmegaConf.to_object(cfg), tmp, OmegaConf.to_yaml(cfg, resolve=True))


def train_for(run: Run, steps: int) -> int:
    """Train whole iterations until `steps` more env steps are done; returns how many were."""
    start = run.runner.global_step
    while run.runner.global_step < start + steps:
        run.agent.train_iteration(run.runner)
    return run.runner.global_step - start


def rlrun_throughput(preset: str | None, steps: int, warmup: int, tmp: Path, extra: list[str],
                     threads: int, device: str = "cpu") -> tuple[float, str]:
    """Env steps/s over `steps` after `warmup` steps, and the env id (`experiment=preset`, if any, then `extra`)."""
    run = bench_run([*([f"experiment={preset}"] if preset else []), *extra], tmp, threads, device)
    train_for(run, warmup)
    start = time.perf_counter()
    rate = train_for(run, steps) / (time.perf_counter() - start)
    run.close()
    return rate, run.cfg.env.id


def sb3_model(algo: str, seed: int = 0, device: str = "cpu"):
    """SB3 (sb3-contrib for TRPO) at rl-zoo's LunarLander settings (BENCHMARKS.md), or None where neither has
    the algorithm or sb3-contrib is not installed."""
    from stable_baselines3 import A2C, DDPG, DQN, PPO, SAC, TD3
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.noise import NormalActionNoise

    if algo == "dqn":
        return DQN("MlpPolicy", "LunarLander-v3", learning_rate=6.3e-4, batch_size=128, buffer_size=50_000,
                   learning_starts=0, gamma=0.99, target_update_interval=250, train_freq=4, gradient_steps=-1,
                   exploration_fraction=0.12, exploration_final_eps=0.1,
                   policy_kwargs=dict(net_arch=[256, 256]), seed=seed, device=device)
    if algo == "ppo":
        return PPO("MlpPolicy", make_vec_env("LunarLander-v3", n_envs=16, seed=seed), n_steps=1024, batch_size=64,
                   gae_lambda=0.98, gamma=0.999, n_epochs=4, ent_coef=0.01, seed=seed, device=device)
    if algo == "a2c":
        return A2C("MlpPolicy", make_vec_env("LunarLander-v3", n_envs=8, seed=seed), gamma=0.995, n_steps=5,
                   learning_rate=lambda progress: 8.3e-4 * progress, ent_coef=1e-5, seed=seed, device=device)
    if algo == "trpo":
        try:
            from sb3_contrib import TRPO
        except ImportError:
            return None
        from stable_baselines3.common.vec_env import VecNormalize

        # rl-zoo's `normalize: true` is VecNormalize with its defaults (observations and rewards).
        env = VecNormalize(make_vec_env("LunarLanderContinuous-v3", n_envs=2, seed=seed))
        return TRPO("MlpPolicy", env, n_steps=1024, n_critic_updates=20, seed=seed, device=device)
    if algo in ("ddpg", "td3", "sac"):
        env = gym.make("LunarLanderContinuous-v3")
        kwargs = dict(policy_kwargs=dict(net_arch=[400, 300]), learning_starts=10_000, seed=seed, device=device)
        if algo in ("ddpg", "td3"):  # the same zoo settings (BENCHMARKS.md); SB3's DDPG is its TD3 minus the tricks
            noise = NormalActionNoise(np.zeros(2), 0.1 * np.ones(2))
            return (DDPG if algo == "ddpg" else TD3)("MlpPolicy", env, gamma=0.98, buffer_size=200_000,
                                                     learning_rate=1e-3, action_noise=noise, train_freq=1,
                                                     gradient_steps=1, **kwargs)
        return SAC("MlpPolicy", env, batch_size=256, learning_rate=lambda progress: 7.3e-4 * progress,
                   buffer_size=1_000_000, ent_coef="auto", tau=0.01, gamma=0.99, train_freq=1, gradient_steps=1,
                   **kwargs)
    return None


def sb3_throughput(algo: str, steps: int, warmup: int, device: str = "cpu",
                   flush_denormals: bool = False) -> float | None:
    """SB3's training env steps/s; by default with subnormal floats kept, as SB3 runs out of the box (rlrun's
    runs in this process switch flushing on: `flush_denormals`)."""
    from stable_baselines3.common.callbacks import BaseCallback

    torch.set_flush_denormal(flush_denormals)
    model = sb3_model(algo, device=device)
    if model is None:
        return None

    class Timer(BaseCallback):
        def __init__(self):
            super().__init__()
            self.marks: dict[str, tuple[int, float]] = {}

        def _on_step(self) -> bool:
            if "start" not in self.marks and self.num_timesteps >= warmup:
                self.marks["start"] = (self.num_timesteps, time.perf_counter())
            if "start" in self.marks and self.num_timesteps >= self.marks["start"][0] + steps:
                self.marks["end"] = (self.num_timesteps, time.perf_counter())
                return False
            return True

    timer = Timer()
    model.learn(total_timesteps=warmup + steps + 100_000, callback=timer)
    (s0, t0), (s1, t1) = timer.marks["start"], timer.marks["end"]
    return (s1 - s0) / (t1 - t0)


def solve_times(algo: str, seeds: list[int], out_dir: Path, threads: int) -> list[dict]:
    env, threshold = SOLVE[algo]
    results = []
    for seed in seeds:
        run_dir = out_dir / f"solve_{algo}_s{seed}"
        shutil.rmtree(run_dir, ignore_errors=True)  # the bench's scratch run from an earlier invocation
        subprocess.run([str(Path(sys.executable).parent / "rlrun"), f"algo={algo}", f"env={env}", f"seed={seed}",
                        f"stop_at_return={threshold}", f"hydra.run.dir={run_dir}", "log.progress=none",
                        "log.tensorboard=false", f"torch_threads={threads}"], check=True, cwd=REPO)
        summary = json.loads((run_dir / "summary.json").read_text())
        results.append({"seed": seed, "steps": summary["solved_at_step"],
                        "wall_s": summary["solved_at_wall_time_s"], "best": summary["best_return_mean"]})
        print(f"  {algo} seed {seed}: {results[-1]}", flush=True)
    return results


# rl-zoo's training budget per algorithm (n_timesteps).
ZOO_BUDGET = {"dqn": 100_000, "ppo": 1_000_000, "td3": 300_000, "sac": 500_000}


def sb3_solve_times(algo: str, seeds: list[int], timeout_s: float | None) -> list[dict]:
    """SB3 at rl-zoo's hyperparameters, evaluated as rlrun evaluates (every `eval.every_steps` of rlrun's preset
    for the pair, `eval.episodes` deterministic episodes on a separate env), stopped at the first mean ≥ the
    threshold; wall time from the start of `learn`, evaluation included (as rlrun's `solved_at_wall_time_s`).
    The budget is the larger of rl-zoo's and rlrun's preset's, so neither library gets fewer steps; with
    `timeout_s` a run also stops (unsolved) at the first evaluation due after that much wall time."""
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    torch.set_flush_denormal(False)  # SB3 as it runs out of the box
    env_name, threshold = SOLVE[algo]
    cfg = compose([f"algo={algo}", f"env={env_name}"])
    every, episodes = cfg.eval.every_steps, cfg.eval.episodes

    class SolveCheck(BaseCallback):
        def __init__(self, eval_env: gym.Env):
            super().__init__()
            self.eval_env, self.next_eval, self.start = eval_env, every, time.perf_counter()
            self.solved: tuple[int, float] | None = None
            self.best, self.eval_s = -float("inf"), 0.0

        def _on_step(self) -> bool:
            if self.num_timesteps < self.next_eval:
                return True
            if timeout_s is not None and time.perf_counter() - self.start > timeout_s:
                return False
            self.next_eval += every
            eval_start = time.perf_counter()
            mean, _ = evaluate_policy(self.model, self.eval_env, n_eval_episodes=episodes, deterministic=True)
            self.eval_s += time.perf_counter() - eval_start
            self.best = max(self.best, float(mean))
            if mean >= threshold:
                self.solved = (self.num_timesteps, time.perf_counter() - self.start)
                return False
            return True

    results = []
    for seed in seeds:
        model = sb3_model(algo, seed)
        eval_env = Monitor(gym.make(cfg.env.id))
        eval_env.reset(seed=seed + 10_000)
        check = SolveCheck(eval_env)
        model.learn(total_timesteps=max(ZOO_BUDGET[algo], cfg.total_steps), callback=check)
        steps, wall = check.solved if check.solved else (None, None)
        results.append({"seed": seed, "steps": steps, "wall_s": None if wall is None else round(wall, 3),
                        "best": round(check.best, 1), "trained_steps": model.num_timesteps,
                        "of_which_eval_s": round(check.eval_s, 1)})
        print(f"  SB3 {algo} seed {seed}: {results[-1]}", flush=True)
    return results


def solve_row(label: str, results: list[dict]) -> str:
    walls = [r["wall_s"] for r in results if r["wall_s"] is not None]
    median = f"{statistics.median(walls):.0f}" if len(walls) == len(results) else "not all solved"
    return f"| {label} | {[r['steps'] for r in results]} | {[r['wall_s'] for r in results]} | {median} |"


def paired_medians(ours: list[float], theirs: list[float | None], raws: list[float]
                   ) -> tuple[float | None, float | None, float]:
    """From one row's repeats (rlrun's rate, SB3's or None where it did not run, the raw env rate beside them): SB3's
    median rate, the median of rlrun / SB3 over the repeats SB3 ran in (None without any), and the median of rlrun /
    raw env. Ratios within a repeat, then their median: not a ratio of medians, which a machine's drift during the
    bench would skew."""
    pairs = [(a, b) for a, b in zip(ours, theirs) if b is not None]
    sb3 = statistics.median(b for _, b in pairs) if pairs else None
    ratio = statistics.median(a / b for a, b in pairs) if pairs else None
    return sb3, ratio, statistics.median(a / r for a, r in zip(ours, raws, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", default=None, help=f"from {','.join(ZOO)} (default: all this CPU can run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-sb3", action="store_true")
    parser.add_argument("--solve", action="store_true", help="also time-to-solve with rlrun's presets")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--solve-algos", default=None,
                        help=f"algos to time-to-solve (default: those of --algos among {','.join(SOLVE)})")
    parser.add_argument("--sb3-solve-timeout", type=float, default=None,
                        help="stop an SB3 time-to-solve run unsolved after this many seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for both libraries")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where both libraries train (throughput rows; time-to-solve stays on the CPU)")
    parser.add_argument("--later", type=int, default=0, metavar="STEPS",
                        help="measure each throughput row after STEPS more env steps of training than its usual "
                             "warm-up (later in training both libraries' optimizer states differ from early on)")
    parser.add_argument("--window", type=int, default=0, metavar="STEPS",
                        help="measure each throughput row over STEPS env steps instead of its usual window "
                             "(e.g. most of rl-zoo's budget, 99000 for DQN)")
    parser.add_argument("--sb3-flush-denormals", action="store_true",
                        help="SB3's throughput runs with subnormal floats flushed too, as rlrun's are by default")
    parser.add_argument("--out", default=str(REPO / "bench" / "results.md"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    torch.set_num_threads(args.threads)
    bf16_ok = has_native_bf16(torch.device(args.device))
    cuda = args.device == "cuda"
    if args.algos is None:  # *_bf16 rows need hardware bfloat16 (rlrun refuses algo.bf16 without it), *_graphs CUDA
        algos = [a for a in ZOO if (bf16_ok or "_bf16" not in a) and (cuda or not a.endswith("_graphs"))
                 and not (cuda and a in CPU_ONLY)
                 and not a.endswith("_subnormals")]
    else:
        algos = [a for a in args.algos.split(",") if a]
    if unknown := [a for a in algos if a not in ZOO]:
        parser.error(f"--algos: unknown {unknown}; choose from {','.join(ZOO)}")
    solve_algos = args.solve_algos.split(",") if args.solve_algos else [a for a in algos if a in SOLVE]
    if args.solve and (unknown := [a for a in solve_algos if a not in SOLVE]):
        parser.error(f"--solve-algos: no solve target for {unknown}; choose from {','.join(SOLVE)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: give integers separated by commas, e.g. 0,1,2")
    if args.later < 0 or args.window < 0:
        parser.error(f"--later {args.later} --window {args.window}: give numbers of env steps >= 0")
    if cuda and (cpu_only := [a for a in algos if a in CPU_ONLY]):
        parser.error(f"--algos {','.join(cpu_only)}: DDPG's, TD3's and SAC's algo.compile compiles the CPU update")
    if not cuda and (graphed := [a for a in algos if a.endswith("_graphs")]):
        parser.error(f"--algos {','.join(graphed)}: CUDA graphs need --device cuda")
    if not bf16_ok and (emulated := [a for a in algos if "_bf16" in a]):
        parser.error(f"--algos {','.join(emulated)}: this {args.device} ({machine(args.device)}) has no hardware "
                     f"bfloat16")
    try:
        import stable_baselines3  # noqa: F401

        have_sb3 = not args.no_sb3
    except ImportError:
        have_sb3 = False
        print("stable-baselines3 not installed (pip install -e '.[bench]'): rlrun figures only", flush=True)
    tmp = REPO / "outputs" / "bench"
    tmp.mkdir(parents=True, exist_ok=True)

    out = Path(args.out)
    held = out.read_text().strip() if out.exists() else ""
    earlier = held + "\n\n" if held else ""
    title = f"rlrun benchmark — {dt.date.today().isoformat()}"
    lines = [f"## {title}" if earlier else f"# {title}", "",
             f"Machine: {machine(args.device)}; training on {args.device}, {torch.get_num_threads()} torch thread(s) for "
             f"both libraries, "
             f"torch {torch.__version__}, Python {platform.python_version()}; subnormal floats flushed in rlrun's "
             f"runs (its default `flush_denormals=true`; kept in `*_subnormals` rows), {'flushed' if args.sb3_flush_denormals else 'kept'} in "
             f"SB3's. Medians of {args.repeats} alternating measurements in one process (the ratios: medians of "
             f"each repeat's ratio, its raw env rate measured right after rlrun's run)"
             f"{f', each after {args.later:,} env steps more than the usual warm-up' if args.later else ''}"
             f"{f', each over {args.window:,} env steps' if args.window else ''}.", "",
             "| raw env, random actions, one env | steps/s |", "|---|---|"]

    def report(lines: list[str], note: str = "") -> None:
        """Print the newest row and rewrite `out`: what it held before, then this run's table with every row so far.
        Earlier tables are never lost, and a run stopped by a time limit or Ctrl-C keeps what it measured."""
        print(f"{lines[-1]} {note}".rstrip(), flush=True)
        atomic_write_text(out, earlier + "\n".join(lines) + "\n")

    raw: dict[str, float] = {}
    for env_id in ("LunarLander-v3", "LunarLanderContinuous-v3"):
        raw[env_id] = statistics.median(raw_env_rate(env_id) for _ in range(args.repeats))
        lines.append(f"| {env_id} | {raw[env_id]:,.0f} |")
        report(lines)
    if algos:
        lines += ["", "| algo (preset) | rlrun steps/s | SB3 steps/s | rlrun / SB3 | rlrun / raw env |",
                  "|---|---|---|---|---|"]
    for algo in algos:
        preset, steps, warmup, *rest = ZOO[algo]
        warmup += args.later
        steps = args.window or steps
        extra = rest[0] if rest else []
        # Each repeat measures rlrun, the raw env rate, then SB3, one after the other: the ratios are taken within
        # a repeat and their medians reported, so a machine that speeds up or slows down during the bench (a shared
        # one does, by 10-20% over minutes) moves both sides of each ratio alike.
        ours, theirs, raws = [], [], []
        for _ in range(args.repeats):
            rate, env_id = rlrun_throughput(preset, steps, warmup, tmp / f"{algo}", extra, args.threads, args.device)
            ours.append(rate)
            raws.append(raw_env_rate(env_id, 40_000))  # ~1.3-3.5 s: steadier than the 20,000 steps of the table above
            if have_sb3:
                rate = sb3_throughput(sb3_name(algo), steps, warmup, args.device, args.sb3_flush_denormals)
                theirs.append(rate)
        sb3_med, ratio_med, of_raw = paired_medians(ours, theirs, raws)
        ratio = f"{ratio_med:.2f}×" if ratio_med is not None else "—"
        sb3_text = f"{sb3_med:,.0f}" if sb3_med is not None else "—"
        label = f"{algo} ({', '.join(filter(None, [preset, ' '.join(extra)]))})"
        lines.append(f"| {label} | {statistics.median(ours):,.0f} | {sb3_text} | {ratio} | {of_raw:.1%} |")
        report(lines, f"(rlrun runs: {[round(x) for x in ours]}, "
                      f"SB3 runs: {[None if x is None else round(x) for x in theirs]}, "
                      f"raw env: {[round(x) for x in raws]})")
    if args.solve:
        lines += ["", "| algo, env (rlrun: its preset; SB3: rl-zoo's) | solved at steps per seed | wall s per seed "
                  "| median wall s |", "|---|---|---|---|"]
        for algo in solve_algos:
            lines.append(solve_row(f"{algo}, {SOLVE[algo][0]}: rlrun", solve_times(algo, seeds, tmp, args.threads)))
            report(lines)
            if have_sb3:
                lines.append(solve_row(f"{algo}, {SOLVE[algo][0]}: SB3", sb3_solve_times(algo, seeds, args.sb3_solve_timeout)))
                report(lines)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
