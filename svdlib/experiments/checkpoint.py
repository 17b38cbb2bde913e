"""Atomic checkpoints and the random-number state needed to resume a run exactly.

A checkpoint is written to a temporary file ``.NAME.<random>.tmp`` in the same directory,
flushed to disk (``fsync``), moved into place with ``os.replace`` and the directory entry
flushed too, so neither a crash nor a power cut leaves a truncated ``checkpoint.pt``. The
temporary file of a save that was killed (SIGKILL, power cut) is removed by the next save of
the same checkpoint (one writer per checkpoint path: the training harness holds a lock on its
run folder). It is read back with ``torch.load(..., weights_only=True)``: only tensors and plain
containers, so every entry (including the RNG states) is stored as tensors, numbers, strings,
lists and dicts; a file that cannot be read that way raises :class:`CheckpointError`.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from .atomic import write_atomic

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "remove_stale_temporaries",
           "get_rng_state", "set_rng_state"]


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be read (truncated, empty, not a checkpoint)."""


def _temporary_prefix(path: str) -> str:
    return f".{os.path.basename(path)}."


def remove_stale_temporaries(path: str | os.PathLike) -> list[str]:
    """Delete the temporary files that killed saves of checkpoint ``path`` left beside it;
    returns their paths. Call it only while no other process saves ``path``."""
    path = os.path.abspath(os.fspath(path))
    directory, prefix = os.path.dirname(path), _temporary_prefix(path)
    removed = []
    for name in sorted(os.listdir(directory)):
        if name.startswith(prefix) and name.endswith(".tmp"):
            try:
                os.unlink(os.path.join(directory, name))
                removed.append(os.path.join(directory, name))
            except FileNotFoundError:
                pass
    return removed


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Save ``state`` to ``path`` atomically and durably (:func:`svdlib.experiments.atomic.write_atomic`:
    temporary file in the same directory, fsync, os.replace, fsync of the directory), removing
    temporaries of earlier killed saves."""
    path = os.path.abspath(os.fspath(path))
    remove_stale_temporaries(path)
    write_atomic(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    CheckpointError
        ``path`` is empty, truncated or not a torch checkpoint; the message names the file.
    """
    path = os.fspath(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception as e:  # torch.load raises RuntimeError, EOFError, UnpicklingError, ...
        first = str(e).strip().split(". ")[0].splitlines()   # torch's messages run long
        reason = f"{type(e).__name__}: {first[0].rstrip('.')}" if first else type(e).__name__
        size = os.path.getsize(path)
        raise CheckpointError(
            f"{path} ({size} bytes) is not a readable checkpoint, it is damaged (truncated, "
            f"empty or another file): {reason}") from e


def get_rng_state() -> dict:
    """State of the Python, NumPy, torch CPU and (when present) CUDA generators, as tensors
    and plain values (loadable with ``weights_only=True``)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore generators saved by :func:`get_rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
