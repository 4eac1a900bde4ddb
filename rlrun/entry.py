"""The console scripts (pyproject's `[project.scripts]`): each imports its command inside a Ctrl-C guard.

Importing `rlrun.cli` takes ~3 s (torch and the algorithms) before its own `main` can catch anything, and
`rlrun-eval` and `rlrun-plot` write their one result only when they are done. A Ctrl-C in those moments ends with
one line and exit status 130 (143 for a SIGTERM), not a traceback. Once `rlrun` trains, a Ctrl-C is the run's (rlrun/run.py: it
checkpoints, writes summary.json with status interrupted, and says how to resume).
"""

from __future__ import annotations

import importlib
import signal
import sys

EXIT_INTERRUPTED = 128 + signal.SIGINT


def interrupted(prog: str, detail: str, status: int = EXIT_INTERRUPTED) -> None:
    """One line on stderr, exit 130 (the shell's code for SIGINT) or the given status. Plain stderr: nothing here
    may take long to import."""
    sys.stderr.write(f"{prog}: interrupted {detail}\n")
    sys.exit(status)


class Terminated(KeyboardInterrupt):
    """A SIGTERM before rlrun's own handlers take over (a run's once it trains, a parallel sweep's): it ends the
    command as a Ctrl-C does, with exit status 143. Without it a SIGTERM while starting ended the process silently."""


def _raise_terminated(_signum: int, _frame: object) -> None:
    raise Terminated


def _guarded(prog: str, module: str, function: str, detail: str) -> None:
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        command = getattr(importlib.import_module(module), function)
        command()
    except KeyboardInterrupt as exc:
        message, status = _end_of_sweep() or (detail, EXIT_INTERRUPTED)
        if isinstance(exc, Terminated) and status == EXIT_INTERRUPTED:
            status = 128 + signal.SIGTERM
        interrupted(prog, message, status)


def _end_of_sweep() -> tuple[str, int] | None:
    """What a Ctrl-C that reaches a sweep's own process says, and its exit status, once the sweep has begun
    (rlrun/sweep.py notes its directory, and for a parallel sweep the signal and which of its runs did not write
    summary.json before it stopped). A parallel sweep's workers are gone by now (joblib stopped them on the
    KeyboardInterrupt): its stop marker is removed. The sweep's sweep_summary.csv is brought up to date."""
    sweep = sys.modules.get("rlrun.sweep")
    callback = getattr(sweep, "SweepCallback", None)
    sweep_dir = getattr(callback, "running_sweep_dir", None)
    if sweep_dir is None:
        return None
    resume = "Run the same command with resume=auto and the same hydra.sweep.dir to continue them"
    graceful = getattr(callback, "graceful_stop", None)
    if graceful is not None:
        graceful.uninstall()
    try:  # the interrupted jobs' summaries too (a job that ends on a signal reports no job end to Hydra)
        sweep.summarize_sweep(sweep_dir, quiet=True)
    except (Exception, KeyboardInterrupt):  # a second Ctrl-C, an unreadable run: `python -m rlrun.sweep` later
        pass
    if graceful is None or graceful.signum is None:  # not a parallel sweep's handler's stop
        return (f"during the sweep in {sweep_dir}; its jobs' last checkpoints are kept, but a job stopped by its "
                f"launcher may lack summary.json. {resume}", EXIT_INTERRUPTED)
    status = 128 + graceful.signum  # 143 for a SIGTERM
    if graceful.unfinished:
        kept = {True: "its last checkpoint is kept", False: "no checkpoint"}
        names = ", ".join(f"{run.relative_to(sweep_dir)} ({kept[(run / 'checkpoints' / 'last.pt').exists()]})"
                          for run in graceful.unfinished)
        return (f"during the sweep in {sweep_dir}; these runs were stopped before they wrote summary.json: "
                f"{names}. {resume}", status)
    return (f"during the sweep in {sweep_dir}; its running jobs checkpointed and wrote summary.json (status "
            f"interrupted), and jobs not yet started did not run. {resume}", status)


def rlrun() -> None:
    # Once the run trains, its own handler takes a Ctrl-C (it checkpoints) and raises no KeyboardInterrupt here.
    _guarded("rlrun", "rlrun.cli", "main", "while starting, before training began; run the same command again to "
             "start (or, with resume=auto, to resume a run that had been started)")


def rlrun_eval() -> None:
    _guarded("rlrun-eval", "rlrun.cli", "eval_main", "before the evaluation finished; its report was not written")


def rlrun_plot() -> None:
    _guarded("rlrun-plot", "rlrun.plot", "main", "before the figure was written")
