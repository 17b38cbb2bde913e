"""Mixed precision: under ``torch.autocast`` the spine (:func:`svdlib.eigh`,
:func:`svdlib.powm` and the functions built on it) and the layers compute in float32 (the
eigensolver in ``compute_dtype`` when one is set), with autocast off, and return the autocast
dtype, as autocast's own reduced-precision operations return theirs.

Covariances of float16/bfloat16 features lose about three digits before any eigensolver sees
them (unit roundoff 2^-11 and 2^-8), and an inverse square root multiplies that error by up
to the condition number; the float32 copy of the features costs one pass over them.
"""
from __future__ import annotations

import contextlib
import functools

import torch

__all__ = ["autocast_dtype", "compute_dtype_under_autocast", "autocast_off", "outside_autocast"]


_AVAILABLE: dict[str, bool] = {}   # device type -> whether autocast exists there (fixed per process)
# One C call that says whether autocast is on for any device (absent from some torch releases
# within the supported range: then every call asks its device type).
_ANY_AUTOCAST = getattr(torch._C, "_is_any_autocast_enabled", None)


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype in force for ``x``'s device, or None when autocast is off there or
    ``x`` is float64 (which autocast leaves alone). Called on every spine call: one C call
    answers when no autocast is on anywhere (the usual case), and the device type's
    availability is looked up once per process."""
    if x.dtype == torch.float64 or (_ANY_AUTOCAST is not None and not _ANY_AUTOCAST()):
        return None
    device_type = x.device.type
    available = _AVAILABLE.get(device_type)
    if available is None:
        available = _AVAILABLE[device_type] = torch.amp.is_autocast_available(device_type)
    if not available or not torch.is_autocast_enabled(device_type):
        return None                                   # e.g. "meta": no autocast there
    return torch.get_autocast_dtype(device_type)


def compute_dtype_under_autocast(x: torch.Tensor) -> torch.dtype:
    """float32, or ``x``'s dtype when that is wider."""
    return torch.promote_types(x.dtype, torch.float32)


def autocast_off(x: torch.Tensor, active: bool = True):
    """A context in which autocast is disabled on ``x``'s device (a no-op when not ``active``)."""
    if not active:
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, enabled=False)


def outside_autocast(fn):
    """Decorate a public spine function ``fn(A, ...)``: under autocast on ``A``'s device it runs
    with autocast off (so its products stay in float32 or ``compute_dtype``) and its tensor
    result(s) come back in the autocast dtype; otherwise it runs unchanged. float64 input is
    left alone, as autocast leaves it."""

    @functools.wraps(fn)
    def wrapper(A, *args, **kwargs):
        low = autocast_dtype(A) if isinstance(A, torch.Tensor) else None
        if low is None:
            return fn(A, *args, **kwargs)
        with autocast_off(A):
            out = fn(A, *args, **kwargs)
        return tuple(o.to(low) for o in out) if isinstance(out, tuple) else out.to(low)

    return wrapper
