"""Transfer metrics (Taylor & Stone 2009, "Transfer Learning for Reinforcement Learning Domains: A Survey", §2.1).

Each transfer run is compared with the from-scratch run of the same seed, from their evaluations.csv:

- jumpstart: first evaluation of the transfer run minus the scratch run's first evaluation;
- time to threshold: first evaluated step whose mean return reaches the threshold (env.reward_threshold by
  default), for both, and the steps saved (scratch − transfer; a run that never reaches it counts as its
  last evaluated step, a lower bound, and is flagged);
- area ratio: (A_transfer − A_scratch) / A_scratch, A the area under the learning curve above `floor` over the
  step range both runs evaluated (trapezoids on the union of their evaluation steps, each curve linearly
  interpolated). Returns can be negative (LunarLander starts near −200), so areas are measured above a floor,
  by default the lowest evaluation of all the runs compared; the ratio depends on that choice, the sign does not;
- final performance: last evaluation of each, and the difference;
- negative transfer: flagged when the transfer run's area is below the scratch run's (area ratio < 0).

`python -m rlrun.transfer_metrics --scratch DIR… --transfer [LABEL=]DIR… [--transfer LABEL=DIR…]` prints a
Markdown table (mean ± std over seeds) and, with `--json FILE`, writes every per-seed number.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlrun.files import CheckpointError, EvaluationsError, atomic_write_text, read_evaluations

EXIT_BAD_INPUT = 2


class MetricsError(ValueError):
    """Runs that cannot be compared (no evaluations, seeds without a partner)."""


@dataclass
class Curve:
    run_dir: Path
    seed: int | None
    steps: np.ndarray
    returns: np.ndarray
    threshold: float | None


def read_curve(run_dir: Path) -> Curve:
    run_dir = Path(run_dir)
    path = run_dir / "evaluations.csv"
    if not path.is_file():
        raise MetricsError(f"{run_dir} has no evaluations.csv")
    try:
        evaluations = read_evaluations(path)
    except EvaluationsError as exc:
        raise MetricsError(str(exc)) from None
    if not len(evaluations["step"]):
        raise MetricsError(f"{path} has no evaluations")
    seed, threshold = None, None
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            data = json.loads(summary.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MetricsError(f"{summary} is not readable JSON ({exc})") from None
        seed, threshold = data.get("seed"), data.get("reward_threshold")
    return Curve(run_dir, seed, evaluations["step"], evaluations["return_mean"], threshold)


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """The run directories (holding evaluations.csv) at or under `paths`, sorted."""
    runs: list[Path] = []
    for path in map(Path, paths):
        if (path / "evaluations.csv").is_file():
            runs.append(path)
        elif path.is_dir():
            runs += sorted(p.parent for p in path.rglob("evaluations.csv"))
        else:
            raise MetricsError(f"{path} is not a run directory or a folder of runs")
    if not runs:
        raise MetricsError(f"no evaluations.csv under {', '.join(map(str, paths))}")
    return runs


def time_to_threshold(steps: np.ndarray, returns: np.ndarray, threshold: float) -> float | None:
    """First evaluated step at which the return reaches `threshold`; None if it never does."""
    reached = np.nonzero(returns >= threshold)[0]
    return float(steps[reached[0]]) if len(reached) else None


def area_above(steps: np.ndarray, returns: np.ndarray, floor: float, start: float, stop: float,
               grid: np.ndarray | None = None) -> float:
    """∫ (return − floor) d step over [start, stop], trapezoids on `grid` (default: the curve's own steps)."""
    points = np.unique(np.concatenate([[start, stop], grid if grid is not None else steps]))
    points = points[(points >= start) & (points <= stop)]
    values = np.interp(points, steps, returns) - floor
    return float(np.sum((values[1:] + values[:-1]) * np.diff(points) / 2.0))


def compare(scratch: Curve, transfer: Curve, threshold: float | None, floor: float) -> dict[str, Any]:
    """The Taylor & Stone metrics of one transfer run against the scratch run of the same seed."""
    start = max(scratch.steps[0], transfer.steps[0])
    stop = min(scratch.steps[-1], transfer.steps[-1])
    if stop <= start:
        raise MetricsError(f"{scratch.run_dir} and {transfer.run_dir} share no evaluated step range")
    grid = np.union1d(scratch.steps, transfer.steps)
    area_s = area_above(scratch.steps, scratch.returns, floor, start, stop, grid)
    area_t = area_above(transfer.steps, transfer.returns, floor, start, stop, grid)
    out: dict[str, Any] = {
        "seed": transfer.seed, "scratch_dir": str(scratch.run_dir), "transfer_dir": str(transfer.run_dir),
        "jumpstart": float(transfer.returns[0] - scratch.returns[0]),
        "first_scratch": float(scratch.returns[0]), "first_transfer": float(transfer.returns[0]),
        "area_scratch": area_s, "area_transfer": area_t,
        "area_ratio": (area_t - area_s) / area_s if area_s > 0 else None,
        "final_scratch": float(scratch.returns[-1]), "final_transfer": float(transfer.returns[-1]),
        "final_difference": float(transfer.returns[-1] - scratch.returns[-1]),
        "negative_transfer": bool(area_t < area_s),
    }
    if threshold is not None:
        t_s = time_to_threshold(scratch.steps, scratch.returns, threshold)
        t_t = time_to_threshold(transfer.steps, transfer.returns, threshold)
        out.update(threshold=threshold, time_to_threshold_scratch=t_s, time_to_threshold_transfer=t_t,
                   steps_saved=(t_s if t_s is not None else float(scratch.steps[-1]))
                   - (t_t if t_t is not None else float(transfer.steps[-1])),
                   steps_saved_is_bound=t_s is None or t_t is None)
    return out


def pair_by_seed(scratch: list[Curve], transfer: list[Curve]) -> list[tuple[Curve, Curve]]:
    by_seed = {c.seed: c for c in scratch}
    if len(by_seed) != len(scratch) or None in by_seed:
        raise MetricsError("the scratch runs need distinct seeds (summary.json) to be paired with transfer runs")
    pairs = []
    for curve in transfer:
        if curve.seed not in by_seed:
            raise MetricsError(f"{curve.run_dir} (seed {curve.seed}) has no scratch run with the same seed "
                               f"(scratch seeds: {sorted(by_seed)})")
        pairs.append((by_seed[curve.seed], curve))
    return pairs


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of each metric, plus how many seeds reached the threshold."""
    out: dict[str, Any] = {"seeds": len(per_seed)}
    for key in ("jumpstart", "first_transfer", "area_ratio", "final_transfer", "final_difference", "steps_saved"):
        values = [row[key] for row in per_seed if row.get(key) is not None]
        if values:
            out[key] = _mean_std(values)
    if per_seed and "threshold" in per_seed[0]:
        reached = [row["time_to_threshold_transfer"] for row in per_seed if row["time_to_threshold_transfer"]]
        out["reached_threshold"] = len(reached)
        out["time_to_threshold"] = _mean_std(reached) if reached else None
    out["negative_transfer_seeds"] = sum(row["negative_transfer"] for row in per_seed)
    out["negative_transfer"] = bool(out.get("area_ratio", (0.0,))[0] < 0)
    return out


def scratch_row(scratch: list[Curve], threshold: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {"seeds": len(scratch), "first_transfer": _mean_std([float(c.returns[0]) for c in scratch]),
                           "final_transfer": _mean_std([float(c.returns[-1]) for c in scratch])}
    if threshold is not None:
        reached = [t for c in scratch if (t := time_to_threshold(c.steps, c.returns, threshold)) is not None]
        row["reached_threshold"] = len(reached)
        row["time_to_threshold"] = _mean_std(reached) if reached else None
    return row


def evaluate(scratch_paths: list[str | Path], transfers: dict[str, list[str | Path]],
             threshold: float | None = None, floor: float | None = None) -> dict[str, Any]:
    """Every transfer group against the scratch runs: {"scratch": …, "groups": {label: {per_seed, mean}}}."""
    scratch = [read_curve(p) for p in find_run_dirs(scratch_paths)]
    groups = {label: [read_curve(p) for p in find_run_dirs(paths)] for label, paths in transfers.items()}
    if threshold is None:
        threshold = scratch[0].threshold
    if floor is None:
        floor = float(min(c.returns.min() for curves in [scratch, *groups.values()] for c in curves))
    result: dict[str, Any] = {"threshold": threshold, "floor": floor, "scratch": scratch_row(scratch, threshold),
                              "groups": {}}
    for label, curves in groups.items():
        per_seed = [compare(s, t, threshold, floor) for s, t in pair_by_seed(scratch, curves)]
        result["groups"][label] = {"per_seed": per_seed, "mean": aggregate(per_seed)}
    return result


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, tuple):
        return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"
    return f"{value:.{digits}f}"


def markdown_table(result: dict[str, Any]) -> str:
    """One row per group: first evaluation, jumpstart, time to threshold, area ratio, final, negative transfer."""
    threshold = result["threshold"]
    lines = [f"| run | first eval | jumpstart | time to {_fmt(threshold, 0)} (seeds reaching it) | area ratio | "
             f"final eval | final − scratch | negative transfer |",
             "|---|---|---|---|---|---|---|---|"]

    def ttt(row: dict[str, Any]) -> str:
        if "reached_threshold" not in row:
            return "–"
        time = row["time_to_threshold"]
        return f"{_fmt((time[0] / 1000, time[1] / 1000), 0)}k ({row['reached_threshold']}/{row['seeds']})" \
            if time else f"never (0/{row['seeds']})"

    s = result["scratch"]
    lines.append(f"| scratch | {_fmt(s['first_transfer'])} | – | {ttt(s)} | – | {_fmt(s['final_transfer'])} | – | – |")
    for label, group in result["groups"].items():
        m = group["mean"]
        area = m.get("area_ratio")
        flag = f"**yes** ({m['negative_transfer_seeds']}/{m['seeds']} seeds)" if m["negative_transfer"] \
            else f"no ({m['negative_transfer_seeds']}/{m['seeds']} seeds)"
        lines.append(f"| {label} | {_fmt(m['first_transfer'])} | {_fmt(m['jumpstart'])} | {ttt(m)} | "
                     f"{_fmt(area, 2)} | {_fmt(m['final_transfer'])} | {_fmt(m['final_difference'])} | {flag} |")
    lines.append(f"\nArea ratio = (A_transfer − A_scratch) / A_scratch, areas above return {result['floor']:.1f}, "
                 f"per seed against the scratch run of the same seed; mean ± std over seeds.")
    return "\n".join(lines)


def parse_transfer(values: list[str]) -> tuple[str, list[str]]:
    first = values[0]
    if "=" in first:
        label, first = first.split("=", 1)
    else:
        label = Path(first).name
    return label, [first, *values[1:]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlrun.transfer_metrics", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scratch", nargs="+", required=True, help="from-scratch run dirs (or folders of runs)")
    parser.add_argument("--transfer", nargs="+", action="append", required=True, metavar="[LABEL=]DIR",
                        help="transfer run dirs (or folders); repeat for several groups")
    parser.add_argument("--threshold", type=float, default=None, help="default: the env's reward_threshold")
    parser.add_argument("--floor", type=float, default=None, help="areas are measured above this return "
                        "(default: the lowest evaluation of all the runs)")
    parser.add_argument("--json", type=Path, default=None, help="write every number (per seed) to this file")
    args = parser.parse_args(argv)
    try:
        transfers = dict(parse_transfer(values) for values in args.transfer)
        result = evaluate(args.scratch, transfers, args.threshold, args.floor)
    except MetricsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(markdown_table(result))
    if args.json is not None:
        try:
            atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
        except (CheckpointError, OSError) as exc:  # a full disk, a read-only or missing folder: one line
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
