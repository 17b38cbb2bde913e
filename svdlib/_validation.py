"""Checks at the public boundary: tensors (shape, dtype, finiteness) and option values.

Every check runs once per public call, never inside a hot loop, and the tensor checks are
skipped while the call is traced (``torch.compile``) or transformed (``torch.func.vmap`` /
``jacrev``), where data-dependent Python branches are not allowed. Errors name the argument,
what was expected and what was received. The option checks (:func:`integer`, :func:`real`,
...) are small reusable validators: a remedy record declares them for its options, and the
same functions serve the matrix functions, the layers and the experiment config
(docs/architecture.md, "Options").
"""
from __future__ import annotations

import functools
import math
import numbers
import warnings
from typing import Any, Callable

import torch

__all__ = [
    "is_traced",
    "check_real_tensor",
    "check_square",
    "working_dtype",
    "compute_dtype_option",
    "check_finite",
    "Check",
    "integer",
    "real",
    "boolean",
    "optional",
    "integer_pair",
    "any_value",
    "default_check",
    "raise_non_finite",
    "batch_index",
    "renamed_keywords",
    "ROUNDING_FACTOR",
    "rounding_rtol",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_REAL_FLOATING = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64))

#: A validator: ``check(value, name) -> normalised value``; raises ValueError naming ``name``.
Check = Callable[[Any, str], Any]


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
        raise_non_finite(x, name)


def raise_non_finite(x: torch.Tensor, name: str) -> None:
    """The error for a tensor known to hold NaN or Inf entries."""
    bad = int((~torch.isfinite(x)).sum())
    raise ValueError(
        f"{name} contains {bad} NaN/Inf entries (shape {tuple(x.shape)}, dtype {x.dtype}); "
        "svdlib refuses non-finite input instead of returning silently wrong results"
    )


def batch_index(flat: int, batch_shape: torch.Size) -> str:
    """'[i, j]' for matrix number ``flat`` of a flattened batch of shape ``batch_shape``, '' for
    an unbatched matrix: errors name the matrix as the caller indexes it."""
    if len(batch_shape) == 0:
        return ""
    index, rest = [], flat
    for size in reversed(batch_shape):
        index.append(rest % size)
        rest //= size
    return "[" + ", ".join(str(i) for i in reversed(index)) + "]"


def check_real_tensor(x: torch.Tensor, name: str, layout: str) -> None:
    """Validate a tensor of real floating dtype with at least 2 dimensions.

    ``layout`` names the dimensions the caller expects, e.g. "(..., n, n)" or "(..., d, N)";
    every message names the argument, the expectation and the received shape and dtype.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{name} must have at least 2 dimensions {layout}, got shape {tuple(x.shape)}")
    if x.dtype not in _REAL_FLOATING:
        raise ValueError(
            f"{name} must have a real floating dtype (float16/bfloat16/float32/float64), "
            f"got {x.dtype} with shape {tuple(x.shape)}"
        )


def check_square(A: torch.Tensor, name: str = "A", finite: bool = True) -> None:
    """Validate a batch of real square matrices of shape (..., n, n).

    ``finite=False`` leaves the NaN/Inf scan to the caller: :func:`svdlib.eigh` folds it into
    the one check it makes after the solver (a non-finite input gives non-finite eigenvalues
    or a solver error, and only then is the input scanned to name the problem).
    """
    check_real_tensor(A, name, "(..., n, n)")
    shape = A.shape
    if shape[-1] != shape[-2]:
        raise ValueError(
            f"{name} must be square in its last two dimensions (..., n, n), got shape {tuple(shape)}"
        )
    if shape[-1] == 0:
        raise ValueError(f"{name} must have n >= 1 in its last two dimensions (..., n, n), got shape {tuple(shape)}")
    if finite:
        check_finite(A, name)


#: Eigenvalues of a positive semi-definite matrix computed in floating point can come out
#: negative by rounding, up to about n eps max|lam| (backward-stable solvers; the rounding of
#: forming a covariance adds to it). Measured on float32/float64 covariances of d = 2..256
#: features from N = 1..2e6 samples (duplicated, nearly duplicated and constant features,
#: torch's and numpy's LAPACK, a random similarity first): at most 2.1 n eps max|lam|. Below
#: -ROUNDING_FACTOR n eps max|lam| an eigenvalue is negative beyond rounding (margin 7x).
ROUNDING_FACTOR = 16


def rounding_rtol(n: int, dtype: torch.dtype) -> float:
    """ROUNDING_FACTOR * n * eps(dtype): relative size of the rounding of an n x n spectrum.

    An eigenvalue below -rounding_rtol * max|lam| is *clearly* negative: the matrix is not
    positive semi-definite beyond rounding (:data:`ROUNDING_FACTOR`).
    """
    return ROUNDING_FACTOR * n * torch.finfo(dtype).eps


def compute_dtype_option(value, name: str = "compute_dtype"):
    """The check of ``compute_dtype``: None, torch.float32 or torch.float64."""
    if value not in (None, torch.float32, torch.float64):
        raise ValueError(f"{name} must be None, torch.float32 or torch.float64, got {value!r}")
    return value


def working_dtype(dtype: torch.dtype, compute_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype the eigensolver runs in: ``compute_dtype`` if given, float32 for
    float16/bfloat16 (no half-precision eigensolver exists), else ``dtype``."""
    if compute_dtype_option(compute_dtype) is not None:
        return compute_dtype
    return torch.float32 if dtype in _LOW_PRECISION else dtype


# ----------------------------------------------------------------------------- option values
def _bound_text(minimum, maximum, exclusive: bool) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if exclusive else '>='} {minimum:g}")
    if maximum is not None:
        parts.append(f"<= {maximum:g}")
    return " and ".join(parts)


def integer(minimum: int | None = None, maximum: int | None = None) -> Check:
    """An integer (not a bool) within [minimum, maximum]."""
    what = f"an integer {_bound_text(minimum, maximum, False)}".rstrip()

    def check(value, name):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ValueError(f"{name} must be {what}, got {value!r}")
        return int(value)
    return check


def real(minimum: float | None = None, *, exclusive: bool = False, maximum: float | None = None,
         allow_inf: bool = False) -> Check:
    """A real number (int or float, not a bool), finite unless ``allow_inf``, >= ``minimum``
    (> with ``exclusive``) and <= ``maximum``; returned as a float."""
    what = f"a {'' if allow_inf else 'finite '}real number {_bound_text(minimum, maximum, exclusive)}".rstrip()

    def check(value, name):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")
        if math.isnan(value):
            raise ValueError(f"{name} must be {what}, got {value!r}")
        value = float(value)
        if (not allow_inf and math.isinf(value)) \
                or (minimum is not None and (value <= minimum if exclusive else value < minimum)) \
                or (maximum is not None and value > maximum):
            raise ValueError(f"{name} must be {what}, got {value!r}")
        return value
    return check


def boolean(value, name):
    """True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def any_value(value, name):
    """Accept anything (an option whose builder checks it itself)."""
    return value


def optional(check: Check) -> Check:
    """None, or a value accepted by ``check``."""
    def wrapped(value, name):
        return None if value is None else check(value, name)
    return wrapped


def integer_pair(minimum: int = 0) -> Check:
    """Two integers >= ``minimum`` (a tuple or list), returned as a tuple."""
    single = integer(minimum)

    def check(value, name):
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ValueError(f"{name} must be two integers >= {minimum} (p, q), got {value!r}")
        return tuple(single(v, f"{name}[{i}]") for i, v in enumerate(value))
    return check


def default_check(default) -> Check:
    """The check implied by a default value: bool, integer, real, else anything."""
    if isinstance(default, bool):
        return boolean
    if isinstance(default, numbers.Integral):
        return integer()
    if isinstance(default, numbers.Real):
        return real(allow_inf=math.isinf(default))
    return any_value


def renamed_keywords(**old_to_new: str):
    """Decorator: accept a function's old keyword names, with a DeprecationWarning.

    ``@renamed_keywords(eps="floor")`` lets ``f(..., eps=x)`` mean ``f(..., floor=x)``. The
    wrapped function keeps its signature (``inspect.signature`` follows ``__wrapped__``).
    """
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old in old_to_new.keys() & kwargs.keys():
                new = old_to_new[old]
                warnings.warn(f"{fn.__name__}({old}=...) is deprecated; use {new}=... (see CHANGELOG.md)",
                              DeprecationWarning, stacklevel=2)
                if new in kwargs:
                    raise TypeError(f"{fn.__name__}() got both {new!r} and its old name {old!r}")
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)
        return wrapper
    return decorate
