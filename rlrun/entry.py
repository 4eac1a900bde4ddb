"""The console scripts (pyproject's `[project.scripts]`): each imports its command inside a Ctrl-C guard.

Importing `rlrun.cli` takes ~3 s (torch and the algorithms) before its own `main` can catch anything, and
`rlrun-eval` and `rlrun-plot` write their one result only when they are done. A Ctrl-C in those moments ends with
one line and exit status 130, not a traceback. Once `rlrun` trains, a Ctrl-C is the run's (rlrun/run.py: it
checkpoints, writes summary.json with status interrupted, and says how to resume).
"""

from __future__ import annotations

import importlib
import signal
import sys

EXIT_INTERRUPTED = 128 + signal.SIGINT


def interrupted(prog: str, detail: str) -> None:
    """One line on stderr, exit 130 (the shell's code for SIGINT). Plain stderr: nothing here may take long to
    import."""
    sys.stderr.write(f"{prog}: interrupted {detail}\n")
    sys.exit(EXIT_INTERRUPTED)


def _guarded(prog: str, module: str, function: str, detail: str) -> None:
    try:
        command = getattr(importlib.import_module(module), function)
        command()
    except KeyboardInterrupt:
        interrupted(prog, _sweep_detail() or detail)


def _sweep_detail() -> str | None:
    """What a Ctrl-C that reaches a sweep's own process says, once the sweep has begun (rlrun/sweep.py notes its
    directory): a parallel launcher (joblib) may stop its jobs before they finish writing."""
    sweep = sys.modules.get("rlrun.sweep")
    sweep_dir = getattr(getattr(sweep, "SweepCallback", None), "running_sweep_dir", None)
    if sweep_dir is None:
        return None
    return (f"during the sweep in {sweep_dir}; its jobs' last checkpoints are kept, but jobs that a parallel launcher "
            f"stopped may lack summary.json. Run the same command with resume=auto and the same hydra.sweep.dir "
            f"to continue them")


def rlrun() -> None:
    # Once the run trains, its own handler takes a Ctrl-C (it checkpoints) and raises no KeyboardInterrupt here.
    _guarded("rlrun", "rlrun.cli", "main", "while starting, before training began; run the same command again to "
             "start (or, with resume=auto, to resume a run that had been started)")


def rlrun_eval() -> None:
    _guarded("rlrun-eval", "rlrun.cli", "eval_main", "before the evaluation finished; its report was not written")


def rlrun_plot() -> None:
    _guarded("rlrun-plot", "rlrun.plot", "main", "before the figure was written")
