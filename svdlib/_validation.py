"""Input checks at the public boundary (DESIGN.md, "Reliability and safety rules").

Checks run once per public call, never inside hot loops, and are skipped while the
call is being traced (``torch.compile``) or transformed (``torch.func.vmap``/``jacrev``),
where data-dependent Python branches are not allowed.
"""
from __future__ import annotations

import torch

__all__ = ["is_traced", "check_square", "working_dtype", "check_finite"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def is_traced(x: torch.Tensor | None = None) -> bool:
    """True while torch.compile traces or a torch.func transform wraps ``x``."""
    if torch.compiler.is_compiling():
        return True
    if x is not None and torch._C._functorch.is_functorch_wrapped_tensor(x):
        return True
    return False


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ValueError naming ``name`` when ``x`` holds NaN or Inf (skipped when traced)."""
    if is_traced(x):
        return
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{name} contains {bad} NaN/Inf entries (shape {tuple(x.shape)}, dtype {x.dtype}); "
            "svdlib refuses non-finite input instead of returning silently wrong results"
        )


def check_square(A: torch.Tensor, name: str = "A") -> None:
    """Validate a batch of real square matrices of shape (..., n, n)."""
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(A).__name__}")
    if A.dim() < 2:
        raise ValueError(
            f"{name} must have at least 2 dimensions (..., n, n), got shape {tuple(A.shape)}"
        )
    if A.shape[-1] != A.shape[-2]:
        raise ValueError(
            f"{name} must be square in its last two dimensions (..., n, n), got shape {tuple(A.shape)}"
        )
    if A.is_complex() or not A.is_floating_point():
        raise ValueError(
            f"{name} must have a real floating dtype (float16/bfloat16/float32/float64), "
            f"got {A.dtype} with shape {tuple(A.shape)}"
        )
    if A.shape[-1] == 0:
        raise ValueError(f"{name} must have n >= 1, got shape {tuple(A.shape)}")
    check_finite(A, name)


def working_dtype(dtype: torch.dtype, compute_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype the eigensolver runs in: ``compute_dtype`` if given, float32 for
    float16/bfloat16 (no half-precision eigensolver exists), else ``dtype``."""
    if compute_dtype is not None:
        if compute_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"compute_dtype must be torch.float32 or torch.float64, got {compute_dtype}")
        return compute_dtype
    return torch.float32 if dtype in _LOW_PRECISION else dtype
