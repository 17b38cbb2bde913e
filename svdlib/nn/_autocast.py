"""Mixed precision in the layers: under ``torch.autocast`` the statistics and the spectral
function are computed in float32 (the eigensolver in ``compute_dtype`` when one is set), with
autocast off, and the result is returned in the autocast dtype, as autocast's own
reduced-precision operations return theirs.

Covariances of float16/bfloat16 features lose about three digits before any eigensolver sees
them (unit roundoff 2^-11 and 2^-8), and an inverse square root multiplies that error by up
to the condition number; the float32 copy of the features costs one pass over them.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["autocast_dtype", "compute_dtype_under_autocast", "autocast_off"]


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype in force for ``x``'s device, or None when autocast is off there or
    ``x`` is float64 (which autocast leaves alone)."""
    device_type = x.device.type
    if x.dtype == torch.float64 or not torch.amp.is_autocast_available(device_type):
        return None                                   # e.g. "meta": no autocast there
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def compute_dtype_under_autocast(x: torch.Tensor) -> torch.dtype:
    """float32, or ``x``'s dtype when that is wider."""
    return torch.promote_types(x.dtype, torch.float32)


def autocast_off(x: torch.Tensor, active: bool = True):
    """A context in which autocast is disabled on ``x``'s device (a no-op when not ``active``)."""
    if not active:
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, enabled=False)
