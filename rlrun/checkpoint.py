"""Atomic checkpoint files and safe loading.

A checkpoint is a `torch.save`d dict of tensors and plain Python data, read back with
`torch.load(..., weights_only=True)`: a checkpoint from someone else is data, never code. A replay buffer
goes beside it as `.npz` (read with `allow_pickle=False`), named by step so the pair written last always
stays consistent: the `.pt` names its buffer file, and older buffer files are removed only after the new
`.pt` is in place.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlrun.files import (  # noqa: F401  (CheckpointError and DiskFull re-exported)
    CheckpointError,
    DiskFull,
    atomic_write,
    atomic_write_text,
    first_line,
)

FORMAT = "rlrun-checkpoint-v1"


def save_checkpoint(path: Path, payload: dict[str, Any], buffer: dict[str, np.ndarray] | None = None,
                    step: int = 0, committed: Callable[[], None] | None = None) -> None:
    """Write `payload` (and optionally its replay buffer) atomically as `path`; `committed` is called the moment
    `path` is the new checkpoint (see `atomic_write`)."""
    path = Path(path)
    payload = dict(payload, format=FORMAT)
    new_buffer = None
    if buffer is not None:
        buffer_name = f"{path.stem}-buffer-{step}.npz"
        if not path.with_name(buffer_name).exists():  # else the previous checkpoint's, of this same step
            new_buffer = path.with_name(buffer_name)
        try:
            atomic_write(path.with_name(buffer_name), lambda handle: np.savez(handle, **buffer))
        except DiskFull as exc:  # atomic_write names the new buffer file: what is kept is the old pair
            raise DiskFull(f"no space left ({exc.__cause__.strerror}) while writing {path.with_name(buffer_name)} "
                           f"(the replay buffer of {path.name}); the previous {path.name} and the buffer file it "
                           f"names are kept unchanged") from exc.__cause__
        payload["buffer_file"] = buffer_name
    old_inode = path.stat().st_ino if path.exists() else None
    try:
        # Serialised in memory first: torch's zip writer reports a failed write to a file (a full disk) as a
        # RuntimeError ("unexpected pos"), not as the OSError atomic_write turns into a clear message.
        data = io.BytesIO()
        torch.save(payload, data)
        atomic_write(path, lambda handle: handle.write(data.getbuffer()), committed)
    except BaseException:
        # Unless the new checkpoint is in place (a second Ctrl-C can land right after the rename), no checkpoint
        # names the new buffer file: it would only take the space the disk lacked.
        replaced = path.exists() and path.stat().st_ino != old_inode
        if new_buffer is not None and not replaced:
            new_buffer.unlink(missing_ok=True)
        raise
    # Only now is the old buffer file unreferenced.
    for old in path.parent.glob(f"{path.stem}-buffer-*.npz"):
        if buffer is None or old.name != payload["buffer_file"]:
            old.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely; a clear `CheckpointError` for missing, corrupt or unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file" if path.exists()
                              else f"checkpoint {path} does not exist")
    if path.suffix == ".npz":
        raise CheckpointError(f"{path} is a replay buffer file (arrays beside a checkpoint), not a checkpoint; give "
                              f"the checkpoint that names it (checkpoints/last.pt) or its run directory")
    try:
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as handle:
                head = handle.read(2)
            if head and head[:1] != b"\x80" and head != b"PK":  # not a zip (maybe cut short), not a pickle
                raise CheckpointError(f"{path} is not a checkpoint: torch.save did not write it (rlrun's "
                                      f"checkpoints are checkpoints/last.pt and best.pt in a run directory)")
        else:  # torch.load does not check the zip members' CRCs: a flipped byte would load as a wrong weight
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
            if damaged is not None:
                raise CheckpointError(f"checkpoint {path} is corrupt: its member {damaged} fails its CRC check")
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as exc:
        # torch's message suggests weights_only=False; a file from elsewhere is data, never code, so not here.
        reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(exc))
        raise CheckpointError(f"refused to load {path}: it holds objects other than tensors and plain data, or "
                              f"torch.save did not write it (torch.load with weights_only=True rejected it"
                              f"{f': {reason[1]}' if reason else ''}); nothing in it was executed. rlrun's "
                              f"checkpoints are checkpoints/last.pt and best.pt in a run directory") from None
    except Exception as exc:  # noqa: BLE001  (whatever a damaged file makes torch's reader raise)
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated and cannot be read "
                              f"({type(exc).__name__}: {first_line(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or not isinstance(payload.get("model"), dict):
        raise CheckpointError(f"{path} is not an rlrun checkpoint (expected a dict with format={FORMAT!r})")
    step = payload.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise CheckpointError(f"{path} is damaged: its step is {step!r}, not a number of env steps")
    return payload


def load_buffer(checkpoint_path: Path, payload: dict[str, Any]) -> dict[str, np.ndarray] | None:
    name = payload.get("buffer_file")
    if name is None:
        return None
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
        raise CheckpointError(f"{checkpoint_path} is damaged: it names its replay buffer {name!r}, which is not the "
                              f"name of a file beside it")
    buffer_path = Path(checkpoint_path).with_name(name)
    try:
        with np.load(buffer_path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"replay buffer {buffer_path} next to {checkpoint_path} is missing or "
                              f"corrupt ({exc})") from None


def _obs_norm_in(payload: dict[str, Any], path: Path) -> dict[str, np.ndarray] | None:
    stats = payload.get("obs_norm")
    if stats is None and isinstance(payload.get("agent_state"), dict):
        stats = payload["agent_state"].get("obs_norm")
    if stats is None:
        return None
    try:
        mean, var = np.asarray(stats["mean"], dtype=np.float64), np.asarray(stats["var"], dtype=np.float64)
        count = float(stats["count"])
        valid = (mean.ndim == 1 and mean.shape == var.shape and bool(np.isfinite(mean).all())
                 and bool(np.isfinite(var).all()) and bool((var >= 0).all()) and math.isfinite(count) and count > 0)
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        raise CheckpointError(f"{path} holds damaged observation-normalisation statistics (obs_norm needs a mean "
                              f"and a non-negative variance of one shape, both finite, and a positive count)")
    return {"mean": mean, "var": var, "count": np.asarray(count)}


def stored_obs_norm(path: Path, payload: dict[str, Any]) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """The observation-normalisation statistics that go with the weights in `payload` (read from `path`) and
    the file they come from, or (None, None).

    Checkpoints hold them under "obs_norm" (best.pt too: the policy acts on normalised observations); a best.pt
    written before that held weights only, so then they come from the full state of last.pt beside it.
    """
    stats = _obs_norm_in(payload, Path(path))
    if stats is not None:
        return stats, str(path)
    last = Path(path).with_name("last.pt")
    if last != Path(path) and last.is_file():
        stats = _obs_norm_in(load_checkpoint(last), last)
        if stats is not None:
            return stats, str(last)
    return None, None
