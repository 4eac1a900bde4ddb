"""Files rlrun writes and reads back as plain data, without torch: atomic writes and `evaluations.csv`.

Kept free of torch so `rlrun-plot`, sweep summaries and transfer metrics start quickly.
"""

from __future__ import annotations

import csv
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

CSV_HEADER = "step,wall_time_s,return_mean,return_std,length_mean\n"
CSV_COLUMNS = tuple(CSV_HEADER.strip().split(","))


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


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write via a temp file in the same directory, fsync it, then rename over `path`.

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
    resolve). rlrun writes resolved values where it reads them back, so its own files are unchanged by this."""
    if isinstance(data, str):
        return data.replace("${", "\\${")
    if isinstance(data, dict):
        return {key: literal(value) for key, value in data.items()}
    if isinstance(data, list):
        return [literal(value) for value in data]
    return data
