"""Argument checks shared by the layers of :mod:`svdlib.nn` (docs/architecture.md,
"Options"): every message names the argument, the expected and the received value."""
from __future__ import annotations

import numbers

import torch

from svdlib._validation import is_traced

__all__ = [
    "check_feature_map",
    "check_finite_input",
    "check_covariance_finite",
    "check_method",
    "check_backward",
    "check_nonnegative",
    "check_positive_int",
]

METHODS = ("eigh", "newton_schulz")


def check_feature_map(x: torch.Tensor, name: str, channels: int | None = None,
                      layer: str | None = None) -> None:
    """Validate a feature map of shape (B, C, H, W) with a real floating dtype.

    Parameters
    ----------
    x : torch.Tensor
        The tensor to check.
    name : str
        The argument name used in the error message.
    channels : int, optional
        The expected number of channels C; not checked when None.
    layer : str, optional
        The layer or function name the message starts with.
    """
    where = f"{layer}: {name}" if layer else name
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"{where} must be a feature map of shape (B, C, H, W) (4 dimensions), "
            f"got shape {tuple(x.shape)} ({x.dim()} dimensions)"
        )
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{where} must have {channels} channels (dimension 1 of (B, C, H, W)), "
            f"got {x.shape[1]} (shape {tuple(x.shape)})"
        )
    if not x.is_floating_point() or x.is_complex():
        raise ValueError(
            f"{where} must have a real floating dtype (float16/bfloat16/float32/float64), "
            f"got {x.dtype}"
        )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_finite_input(x: torch.Tensor, name: str, layer: str) -> None:
    """Raise ValueError when the user's tensor ``x`` holds NaN/Inf, naming the layer, the
    argument and its shape (not the reshaped tensors the layer computes with). Layers call it
    before they change any state; skipped while traced (torch.compile, torch.func)."""
    if is_traced(x) or _all_finite(x):
        return
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        raise ValueError(
            f"{layer}: {name} contains {int((~finite).sum())} NaN/Inf entries (shape "
            f"{tuple(x.shape)}, dtype {_dtype_name(x.dtype)}); svdlib refuses non-finite input "
            "instead of returning silently wrong results"
        )


def _all_finite(x: torch.Tensor) -> bool:
    """A finite sum proves every entry finite (a NaN or an Inf anywhere makes the sum NaN or
    Inf), in one reduction instead of isfinite's three element-wise passes (half the time of a
    decorrelated BN eval forward). A sum that overflows proves nothing: the caller then checks
    entry by entry."""
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32
    return bool(torch.isfinite(x.sum(dtype=wide)))


def check_covariance_finite(P: torch.Tensor, x: torch.Tensor, name: str, layer: str,
                            remedy: str) -> None:
    """Raise ValueError when the covariance ``P`` formed from the finite input ``x`` is not
    finite: its entries (squares of the input) overflowed ``P``'s dtype. ``remedy`` says what
    widens the covariance in this layer."""
    if is_traced(P) or bool(torch.isfinite(P).all()):
        return
    largest = float(x.detach().abs().amax()) if x.numel() else 0.0
    dtype = _dtype_name(P.dtype)
    raise ValueError(
        f"{layer}: the covariance of {name} (shape {tuple(x.shape)}, largest |entry| "
        f"{largest:.3g}; {dtype} holds up to {torch.finfo(P.dtype).max:.3g}) overflowed "
        f"{dtype}; scale the input or {remedy}"
    )


def check_method(method: str) -> str:
    """Validate the matrix-function method name ("eigh" or "newton_schulz")."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def check_backward(backward: str) -> str:
    """Validate a remedy name against :data:`svdlib.BACKWARDS` (imported lazily)."""
    import svdlib

    names = tuple(svdlib.BACKWARDS)
    if backward not in names:
        raise ValueError(f"backward must be one of {names}, got {backward!r}")
    return backward


def check_nonnegative(value, name: str) -> float:
    """Validate a finite real number >= 0 and return it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0 \
            or value == float("inf"):
        raise ValueError(f"{name} must be a finite real number >= 0, got {value!r}")
    return float(value)


def check_positive_int(value, name: str) -> int:
    """Validate an integer >= 1 and return it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)
