"""`rlrun-plot RUN_OR_SWEEP_DIR… -o FILE.png`: learning curves from evaluations.csv, grouped by configuration.

Runs are the directories holding `evaluations.csv` under the given paths. They are grouped by the settings
that differ between them, minus the seed (rlrun/sweep.py reads `.hydra/` as plain YAML; nothing is
instantiated), and each group is drawn as its mean over seeds with a shaded ±1 std band. Runs on different
envs go to separate panels, each with the env's reward threshold as a dashed line.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlrun.files import EvaluationsError, read_evaluations
from rlrun.sweep import RunRecord, find_runs, group_runs

EXIT_BAD_INPUT = 2


class PlotError(Exception):
    """Nothing to plot, or a path that is not there."""


@dataclass
class Curve:
    steps: np.ndarray
    wall: np.ndarray
    returns: np.ndarray


def read_curve(path: Path) -> Curve | None:
    """evaluations.csv → arrays; None for a file without rows (a run that never evaluated)."""
    try:
        data = read_evaluations(path)
    except EvaluationsError as exc:
        raise PlotError(str(exc)) from None
    if not len(data["step"]):
        return None
    return Curve(data["step"], data["wall_time_s"], data["return_mean"])


def mean_and_spread(curves: list[tuple[np.ndarray, np.ndarray]], points: int = 200
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Curves (x, y) of one configuration → common x, mean and std over seeds.

    Seeds evaluate at slightly different x (rollouts overshoot eval.every_steps; wall time always differs),
    so each curve is linearly interpolated onto a grid spanning the x range every seed covers. Where the seeds
    have no x range in common (one stopped before another's first evaluation), each x of any seed is drawn as the
    mean over the seeds that cover it, never a value extrapolated from another seed's data.
    """
    if len(curves) == 1:
        x, y = curves[0]
        return x, y, np.zeros_like(y)
    start = max(float(x[0]) for x, _ in curves)
    stop = min(float(x[-1]) for x, _ in curves)
    if stop < start:
        grid = np.unique(np.concatenate([x for x, _ in curves]))
    elif stop == start:
        grid = np.array([stop])
    else:
        grid = np.unique(np.concatenate([np.linspace(start, stop, points),
                                         *[x[(x >= start) & (x <= stop)] for x, _ in curves]]))
    values = np.stack([np.interp(grid, x, y) for x, y in curves])
    covered = np.stack([(grid >= x[0]) & (grid <= x[-1]) for x, _ in curves])
    counts = covered.sum(axis=0)
    mean = (values * covered).sum(axis=0) / counts
    std = np.sqrt((np.square(values - mean) * covered).sum(axis=0) / counts)
    return grid, mean, std


def coverage_note(curves: list[tuple[np.ndarray, np.ndarray]], x_axis: str = "steps") -> str:
    """What `mean_and_spread` leaves out of a group's curve, for its legend line and the command's output: "" when
    every seed covers the drawn range (up to half an evaluation interval, a rollout's overshoot); otherwise where
    the curve stops although some seed goes on (a seed stopped early), or that the seeds share no range."""
    if len(curves) < 2:
        return ""
    start = max(float(x[0]) for x, _ in curves)
    stop = min(float(x[-1]) for x, _ in curves)
    first = min(float(x[0]) for x, _ in curves)
    last = max(float(x[-1]) for x, _ in curves)

    def at(value: float) -> str:
        return f"step {value:,.0f}" if x_axis == "steps" else f"{value:,.1f} s"

    if stop < start:
        return "their ranges do not overlap: each point is the mean of the runs that reach it"
    gaps = np.concatenate([np.diff(x) for x, _ in curves])
    interval = float(np.median(gaps)) if gaps.size else 0.0
    left_out = []
    if start - first > interval / 2:
        left_out.append(f"from {at(start)} (one starts at {at(first)})")
    if last - stop > interval / 2:
        left_out.append(f"to {at(stop)} (one reaches {at(last)})")
    return f"drawn where all have data, {' and '.join(left_out)}" if left_out else ""


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def runs_and_seeds(runs: list[RunRecord]) -> str:
    """"3 seeds" for a group of runs with distinct seeds; "4 runs, 3 seeds" where runs share a seed (a repeated run,
    a continuation in another directory), "2 runs" where no seed is known."""
    seeds = {run.seed for run in runs if run.seed is not None}
    if len(seeds) == len(runs):
        return _plural(len(runs), "seed")
    if not seeds:
        return _plural(len(runs), "run")
    return f"{len(runs)} runs, {_plural(len(seeds), 'seed')}"


def _env_and_threshold(record: RunRecord) -> tuple[str, float | None]:
    from omegaconf import OmegaConf

    summary = record.summary or {}
    env_id = summary.get("env_id")
    threshold = summary.get("reward_threshold")
    if record.config is not None:
        env_id = env_id or OmegaConf.select(record.config, "env.id", default=None)
        if threshold is None:
            threshold = OmegaConf.select(record.config, "env.reward_threshold", default=None)
    try:
        threshold = float(threshold) if threshold is not None else None
    except (TypeError, ValueError):  # a hand-edited summary.json or config: draw no threshold line
        threshold = None
    return str(env_id or "unknown env"), threshold


def plot(paths: list[Path], output: Path, x_axis: str = "steps", title: str | None = None) -> dict[str, str]:
    """Draw the figure; returns {configuration label: its runs and seeds, as `runs_and_seeds` says them}."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    for path in paths:
        if not path.exists():
            raise PlotError(f"{path} does not exist")
    records = find_runs(paths, marker="evaluations.csv")
    curves = {}
    for record in records:
        curve = read_curve(record.run_dir / "evaluations.csv")
        if curve is not None:
            curves[record.run_dir] = curve
    records = [r for r in records if r.run_dir in curves]
    if not records:
        raise PlotError(f"no runs found in {', '.join(map(str, paths))}: a run directory holds an "
                        f"evaluations.csv with at least one evaluation (rlrun writes it while training)")

    by_env: dict[str, list[RunRecord]] = {}
    thresholds: dict[str, float | None] = {}
    for record in records:
        env_id, threshold = _env_and_threshold(record)
        by_env.setdefault(env_id, []).append(record)
        thresholds[env_id] = thresholds.get(env_id) or threshold

    drawn: dict[str, str] = {}
    fig, axes = plt.subplots(1, len(by_env), figsize=(7.5 * len(by_env), 4.8), squeeze=False)
    for ax, (env_id, env_records) in zip(axes[0], by_env.items()):
        for label, runs in group_runs(env_records).items():
            xy = [((curves[r.run_dir].steps if x_axis == "steps" else curves[r.run_dir].wall),
                   curves[r.run_dir].returns) for r in runs]
            grid, mean, std = mean_and_spread(xy)
            note = coverage_note(xy, x_axis)
            counted = runs_and_seeds(runs) + (f"; {note}" if note else "")
            line, = ax.plot(grid, mean, linewidth=1.8, marker="o" if len(grid) < 25 else None, markersize=3,
                            label=textwrap.fill(f"{label} ({counted})", 70))
            if len(runs) > 1:
                ax.fill_between(grid, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
            drawn[label if len(by_env) == 1 else f"{env_id}: {label}"] = counted
        threshold = thresholds.get(env_id)
        if threshold is not None:
            ax.axhline(threshold, color="0.3", linestyle="--", linewidth=1,
                       label=f"reward threshold {threshold:g}")
        ax.set_title(env_id)
        ax.set_xlabel("environment steps" if x_axis == "steps" else "wall time (s)")
        ax.set_ylabel("evaluation return (mean ± std over runs)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(output, dpi=120)
    except OSError as exc:
        raise PlotError(f"cannot write {output}: {exc.strerror or exc}") from None
    except (RuntimeError, ValueError) as exc:  # a format whose writer is missing (.pgf needs LaTeX) or failed
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PlotError(f"cannot write {output} in the {output.suffix} format: {reason}. Choose another "
                        f"suffix (.png, .pdf, .svg)") from None
    finally:
        plt.close(fig)
    return drawn


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rlrun-plot", description="Learning curves (evaluation return) of "
                                     "rlrun runs, grouped by configuration: mean and ±1 std over seeds.")
    parser.add_argument("paths", nargs="+", type=Path, help="run directories, sweep directories, or folders "
                        "holding them")
    parser.add_argument("-o", "--output", type=Path, default=Path("learning_curves.png"),
                        help="image to write, format by suffix: .png (default learning_curves.png), .pdf, .svg, …")
    parser.add_argument("--x", dest="x_axis", choices=["steps", "wall"], default="steps",
                        help="x axis: environment steps (default) or wall-clock seconds")
    parser.add_argument("--title", default=None, help="figure title")
    args = parser.parse_args(argv)
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()  # matplotlib picks the format from the suffix
    if args.output.suffix.lower().lstrip(".") not in formats:
        parser.error(f"--output {args.output}: the file name must end in an image format matplotlib writes "
                     f"({', '.join('.' + name for name in formats)})")
    try:
        drawn = plot(args.paths, args.output, args.x_axis, args.title)
    except PlotError as exc:
        print(f"rlrun-plot error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    for label, counted in drawn.items():
        print(f"{label}: {counted}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
