"""TensorBoard scalars, the progress display, and `evaluations.csv`."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rlrun.files import CSV_HEADER, print_line


def _scalar(value: Any) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


class MetricsLogger:
    """Writes scalars to TensorBoard under `tb/`.

    On resume `purge_step` tells TensorBoard to drop the killed run's points after the checkpoint, so the
    curves continue without duplicates.
    """

    def __init__(self, run_dir: Path, enabled: bool, every_steps: int, purge_step: int | None = None):
        self.every_steps = max(every_steps, 1)
        self._next_log = 0
        self._latest: dict[str, Any] = {}
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=purge_step)

    def update(self, metrics: dict[str, Any]) -> None:
        """Remember this iteration's metrics; the latest value of each key is written when `due`."""
        self._latest.update(metrics)

    def pending(self) -> bool:
        return bool(self._latest)

    def due(self, step: int) -> bool:
        return step >= self._next_log

    def flush_latest(self, step: int, extra: dict[str, Any]) -> None:
        """Write the latest value of every metric seen, plus `extra`, at `step`."""
        self._next_log = (step // self.every_steps + 1) * self.every_steps
        self.log({**self._latest, **extra}, step)
        self._latest = {}

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            self.writer.add_scalar(key, _scalar(value), step)

    def log_episode(self, episode_return: float, episode_length: int, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar("charts/episodic_return", episode_return, step)
            self.writer.add_scalar("charts/episodic_length", episode_length, step)

    def state(self) -> dict[str, Any]:
        # The metrics not yet written go with the checkpoint: an interrupted run does not write them at the
        # interrupt step (a point the uninterrupted run never has); the resumed run writes them when due.
        return {"next_log": self._next_log, "latest": {key: _scalar(value) for key, value in self._latest.items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        self._next_log = int(state["next_log"])
        self._latest = dict(state.get("latest", {}))  # absent in checkpoints from before it was saved

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


class EvaluationsCsv:
    """`evaluations.csv`, appended one flushed row per evaluation.

    The checkpoint records the file's byte length; a resumed run truncates rows the killed run wrote after
    its last checkpoint and appends from there, so the file ends exactly as an uninterrupted run's would.
    """

    def __init__(self, path: Path, resume_length: int | None = None):
        self.path = path
        self.damage: str | None = None
        """Set when a resumed run found the file shorter than its checkpoint recorded, or gone: what was lost."""
        size = path.stat().st_size if resume_length is not None and path.exists() else None
        if size is not None and size < resume_length:
            # Lengthening it would pad it with NUL bytes: keep its complete rows and append after them.
            with open(path, "rb+") as handle:
                kept = handle.read().rfind(b"\n") + 1
                handle.truncate(kept)
            self.damage = (f"{path} is shorter than the checkpoint recorded ({size:,} of {resume_length:,} bytes): "
                           f"the rows it lacks are lost; new rows follow its last complete one")
            size = kept or None
        if size is None:
            if resume_length is not None and self.damage is None:
                self.damage = f"{path} was missing: the rows before this session are lost; it starts again"
            with open(path, "w") as handle:
                handle.write(CSV_HEADER)
        elif size > resume_length:
            with open(path, "r+") as handle:
                handle.truncate(resume_length)

    def append(self, step: int, wall_time_s: float, return_mean: float, return_std: float,
               length_mean: float) -> None:
        with open(self.path, "a") as handle:
            handle.write(f"{step},{wall_time_s:.3f},{return_mean:.6f},{return_std:.6f},{length_mean:.3f}\n")
            handle.flush()
            os.fsync(handle.fileno())

    def length(self) -> int:
        return self.path.stat().st_size


def _fmt(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


class Progress:
    """A rich progress bar on a terminal; plain periodic lines otherwise (logs, CI, SLURM)."""

    def __init__(self, mode: str, total_steps: int, start_step: int, plain_every_s: float, title: str):
        self.total_steps = total_steps
        if mode == "auto":
            mode = "rich" if sys.stdout.isatty() else "plain"
        self.mode = mode
        self.plain_every_s = plain_every_s
        self.title = title
        self._start_time = time.monotonic()
        self._start_step = start_step
        self._last_refresh = 0.0
        self._last_plain = self._start_time
        self.last_episode_return: float | None = None
        self.last_eval_return: float | None = None
        self._bar = None
        if mode == "rich":
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[sps]} steps/s"), TextColumn("ep {task.fields[ep]}"),
                TextColumn("eval {task.fields[ev]}"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(),
            )
            self._task = self._bar.add_task(title, total=total_steps, completed=start_step, sps="—",
                                            ep="—", ev="—")
            self._bar.start()

    def steps_per_second(self, step: int) -> float:
        elapsed = time.monotonic() - self._start_time
        return (step - self._start_step) / elapsed if elapsed > 0 else 0.0

    def update(self, step: int, force: bool = False) -> None:
        now = time.monotonic()
        if self.mode == "rich":
            if force or now - self._last_refresh > 0.2:
                self._last_refresh = now
                self._bar.update(self._task, completed=step, sps=f"{self.steps_per_second(step):,.0f}",
                                 ep=_fmt(self.last_episode_return), ev=_fmt(self.last_eval_return))
        elif self.mode == "plain" and (force or now - self._last_plain >= self.plain_every_s):
            self._last_plain = now
            print_line(f"[{self.title}] step {step:,}/{self.total_steps:,} ({100 * step / self.total_steps:.0f}%) "
                       f"{self.steps_per_second(step):,.0f} steps/s  episodic_return "
                       f"{_fmt(self.last_episode_return)}  eval {_fmt(self.last_eval_return)}")

    def message(self, text: str) -> None:
        if self.mode == "rich":
            self._bar.console.print(text)
        elif self.mode == "plain":
            print_line(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
