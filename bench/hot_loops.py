"""Where each algorithm's training time goes (issue 9's profile of every hot loop), at `make bench`'s settings.

    python bench/hot_loops.py [--algos dqn,ppo] [--steps-scale 1.0] [--top 8] [--threads 1] [--out bench/profiles.md]

For each algorithm, built exactly as `bench/run_bench.py` builds it (rl-zoo's hyperparameters, evaluation and
logging off) and trained past its warm-up:
  1. a plain pass, no profiler: wall time per 1,000 env steps, split into the env (`EnvRunner.step`, the vector
     env included), the update (the off-policy agents' `update()`, their replay sampling included; for the
     on-policy ones everything outside the rollout collection) and the rest (acting, storing transitions,
     the normalisers, bookkeeping);
  2. a `torch.profiler` pass over a quarter as many steps (whole iterations): the operators with the most self CPU time. The profiler adds
     ~1-2 µs to every operator, so these are shares, not timings; the plain pass gives the timings.
It writes a dated Markdown section to `--out`, below what the file already holds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from run_bench import ZOO, bench_run, machine, train_for  # noqa: E402

from rlrun.files import atomic_write_text  # noqa: E402

DEFAULT_ALGOS = ("dqn", "ppo", "a2c", "trpo", "ddpg", "td3", "sac", "reinforce", "vpg")


class Stopwatch:
    """Seconds spent inside the wrapped callables, by name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        self.seconds.setdefault(name, 0.0)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start

        return timed

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)


def profile_algo(algo: str, scale: float, top: int, threads: int, tmp: Path) -> list[str]:
    preset, steps, warmup, *rest = ZOO[algo]
    steps = max(1, int(steps * scale))
    run = bench_run([*([f"experiment={preset}"] if preset else []), *(rest[0] if rest else [])], tmp / algo, threads)
    watch = Stopwatch()
    run.runner.step = watch.wrap("env", run.runner.step)
    on_policy = hasattr(run.agent, "parts")
    if on_policy:
        run.agent.parts.collect = watch.wrap("collect", run.agent.parts.collect)
    else:
        run.agent.update = watch.wrap("update", run.agent.update)
    try:
        train_for(run, warmup)
        watch.reset()
        start = time.perf_counter()
        done = train_for(run, steps)
        total = time.perf_counter() - start
        env = watch.seconds["env"]
        update = total - watch.seconds["collect"] if on_policy else watch.seconds["update"]
        rest_s = total - env - update
        with profile(activities=[ProfilerActivity.CPU]) as prof:  # a quarter: the profiler's tables are slow
            profiled = train_for(run, max(1, steps // 4))
    finally:
        run.close()
    per_k = 1000.0 / done
    label = f"{algo} ({', '.join(filter(None, [preset, ' '.join(rest[0]) if rest else '']))})"
    lines = [f"**{label}**: {done:,} env steps after {warmup:,} of warm-up, {done / total:,.0f} steps/s. "
             f"Per 1,000 env steps: {total * per_k * 1e3:,.1f} ms, of which env {env * per_k * 1e3:,.1f} ms "
             f"({env / total:.0%}), update {update * per_k * 1e3:,.1f} ms ({update / total:.0%}), "
             f"acting and the rest {rest_s * per_k * 1e3:,.1f} ms ({rest_s / total:.0%}).", "",
             "| operator (torch.profiler, self CPU) | share of operator time | calls per 1,000 env steps |",
             "|---|---|---|"]
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    all_self = sum(e.self_cpu_time_total for e in events)
    for event in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]:
        lines.append(f"| `{event.key}` | {event.self_cpu_time_total / all_self:.1%} | "
                     f"{event.count * 1000.0 / profiled:,.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", default=",".join(DEFAULT_ALGOS), help=f"from {','.join(DEFAULT_ALGOS)}")
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiply each algorithm's timed steps (run_bench's) by this")
    parser.add_argument("--top", type=int, default=8, help="operators listed per algorithm")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "bench" / "profiles.md"))
    args = parser.parse_args()
    algos = [a for a in args.algos.split(",") if a]
    if unknown := [a for a in algos if a not in DEFAULT_ALGOS]:
        parser.error(f"--algos: unknown {unknown}; choose from {','.join(DEFAULT_ALGOS)}")
    if not args.steps_scale > 0 or args.top <= 0 or args.threads <= 0:
        parser.error("--steps-scale, --top and --threads must be positive")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    held = out.read_text().strip() if out.exists() else ""
    earlier = held + "\n\n" if held else ""
    command = " ".join(["python bench/hot_loops.py", *sys.argv[1:]])
    title = f"rlrun hot-loop profiles — {dt.date.today().isoformat()}"
    lines = [f"## {title}" if earlier else f"# {title}", "",
             f"Machine: {machine('cpu')}; {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, "
             f"Python {platform.python_version()}. `{command}`."]
    tmp = REPO / "outputs" / "bench"
    for algo in algos:
        lines += ["", *profile_algo(algo, args.steps_scale, args.top, args.threads, tmp)]
        print("\n".join(lines[-(args.top + 4):]), flush=True)
        atomic_write_text(out, earlier + "\n".join(lines) + "\n")  # a stopped run keeps what it measured
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
