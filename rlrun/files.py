"""Files rlrun writes and reads back as plain data, without torch: atomic writes and `evaluations.csv`.

Kept free of torch so `rlrun-plot`, sweep summaries and transfer metrics start quickly.
"""

from __future__ import annotations

import csv
import errno
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

CSV_HEADER = "step,wall_time_s,return_mean,return_std,length_mean\n"
CSV_COLUMNS = tuple(CSV_HEADER.strip().split(","))
RUNNING_MARKER = ".running"
"""In the run dir of a sweep's job while it trains, from before its first step until its summary.json is written:
what a parallel sweep stopping on Ctrl-C waits for (rlrun/sweep.py runs_in_progress)."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says why and what was kept."""


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], None], committed: Callable[[], None] | None = None) -> None:
    """Write via a temp file in the same directory, fsync it, then rename over `path`; `committed` is called right
    after the rename (from then on `path` is the new file, even if what follows is interrupted).

    A crash at any moment leaves either the old file or the new one, never a torn one. On failure (a full
    disk, say) the temp file is removed and the old file is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        if committed is not None:
            committed()
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(f"no space left on the device while writing {path}; the previous "
                                  f"{path.name} (if any) is kept unchanged") from exc
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


class EvaluationsError(ValueError):
    """An evaluations.csv that cannot be read as rlrun writes it."""


def read_evaluations(path: Path) -> dict[str, np.ndarray]:
    """evaluations.csv → one float array per column (empty arrays when it holds the header only)."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        return {name: np.array([float(row[name]) for row in rows]) for name in CSV_COLUMNS}
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as exc:
        raise EvaluationsError(f"{path} is not a readable evaluations.csv ({type(exc).__name__}: {exc}); rlrun "
                               f"writes the columns {CSV_HEADER.strip()}") from None


def literal(data: Any) -> Any:
    """YAML data from another run's files with every OmegaConf interpolation escaped, for OmegaConf to hold as plain
    text: such a file is data, and a `${oc.env:…}` in it must not read this machine's environment (nor any `${…}`
    resolve). Backslashes right before a `${` are doubled too (OmegaConf reads `\\${` as a backslash, then a live
    interpolation). A checkpoint's config is stored resolved; a run's .hydra/config.yaml holds the config as
    composed, so an interpolation a user wrote there is shown as written."""
    if isinstance(data, str):
        return re.sub(r"(\\*)\$\{", lambda match: match.group(1) * 2 + "\\${", data)
    if isinstance(data, dict):
        return {key: literal(value) for key, value in data.items()}
    if isinstance(data, list):
        return [literal(value) for value in data]
    return data


def print_line(text: str) -> None:
    """`print` to stdout that outlives its reader (`rlrun … | head`, a closed terminal's pipe): the run must still
    write its checkpoints and summary.json, so once stdout is a closed pipe, the rest of the output goes to
    /dev/null (Python's advice for SIGPIPE) instead of a BrokenPipeError ending the run."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first non-empty line (torch, moviepy and Optuna write pages); its type's
    name where it has no message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
