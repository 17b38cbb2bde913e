"""Atomic checkpoints and the random-number state needed to resume a run exactly.

A checkpoint is written to a temporary file in the same directory and moved into place with
``os.replace``, so a crash never leaves a truncated ``checkpoint.pt``. It is read back with
``torch.load(..., weights_only=True)``: only tensors and plain containers, so every entry
(including the RNG states) is stored as tensors, numbers, strings, lists and dicts.
"""
from __future__ import annotations

import os
import random
import tempfile

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "get_rng_state", "set_rng_state"]


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Save ``state`` to ``path`` atomically (temp file in the same directory + os.replace)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pt", dir=directory)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    return torch.load(os.fspath(path), map_location=map_location, weights_only=True)


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
