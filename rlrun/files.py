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


LOCK_FILE = ".lock"
"""In every run dir: locked (a POSIX record lock, released when the process ends however it ends) by the rlrun process
training there, so that a second one, a requeued job overlapping the first say, is refused instead of interleaving
its rows and checkpoints with the first's. It holds that process's pid and host."""

_TMP = re.compile(r"^\..+\.tmp-\d+$")  # atomic_write's temp files


class RunDirInUse(ValueError):
    """Another rlrun process trains in this run directory."""


class RunDirLock:
    """The lock on a run dir's LOCK_FILE, held from `acquire` until `release` or the process's end. A POSIX lock
    (fcntl.lockf): other processes are refused, this process may take it again (tests build several runs in one
    directory). Where fcntl does not exist (Windows) there is no lock."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None
        self.before: bytes | None = None
        """The lock file's content before this process wrote itself there (None: there was no file)."""

    def acquire(self) -> None:
        """Lock, and write this process's pid and host into the file (what another's refusal names)."""
        try:
            import fcntl
        except ImportError:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # until the file locked is the one at the path (a refused run may remove its own)
            existed = self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    return  # a file system without locks: run unlocked, as before
                raise RunDirInUse(f"{self.path.parent} is in use by another rlrun process ({holder}): two runs in "
                                  f"one directory would interleave their evaluations.csv rows and checkpoints. Wait "
                                  f"for it to end (resume=auto then continues from its last checkpoint), or choose "
                                  f"another hydra.run.dir") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            return  # the file keeps being replaced: run unlocked rather than not at all
        self.before = os.pread(fd, 4096, 0) if existed else None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
        self.fd = fd

    def release(self, refused: bool = False) -> None:
        """Drop the lock (closing the descriptor drops it). `refused`: the run did not start, so the directory is
        left as it was: the previous content written back, or the file removed where there was none."""
        if self.fd is None:
            return
        if refused and self.before is None:
            self.path.unlink(missing_ok=True)
        elif refused:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, self.before, 0)
        os.close(self.fd)
        self.fd = None


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Remove the `atomic_write` temp files that training processes left in `run_dir` and its checkpoints/ when
    killed mid-write (a `kill -9` during a checkpoint leaves up to a checkpoint's size each time). Called with the
    run dir's lock held, so no other training process writes there; `rlrun-eval`, which takes no lock, writes only
    `eval_*.json`, whose temp files are left alone. Returns what was removed."""
    removed = []
    for directory in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            if _TMP.match(path.name) is None or path.name.startswith(".eval_"):
                continue
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says why and what was kept."""


class DiskFull(CheckpointError):
    """A write failed for want of space (a full disk, a quota, a file-size limit): the run failed, its input was
    not bad (exit status 1, not 2)."""


NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


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
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            raise DiskFull(f"no space left ({exc.strerror}) while writing {path}; the previous {path.name} (if any) "
                           f"is kept unchanged") from exc
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
