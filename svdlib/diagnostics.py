"""Eigensolver failure counter: the "failure times" of the ECCV22 GCP table.

svdlib counts a *failure* each time the forward eigensolver fails on one matrix: the
solver raised (torch's LinAlgError, or any exception from a registered solver), reported a
non-zero ``info`` (cuSOLVER), or returned non-finite eigenvalues (and, with
:func:`check_eigenvectors`, eigenpairs that are not an eigendecomposition up to rounding).
Failed matrices are repaired (see :func:`svdlib.solvers.solve`), so training goes on; the
counter lets training code log them. Two cases also warn (RuntimeWarning), since the result is
not what the solver should have given: a solver that raised, and a matrix on which every
repair failed (its diagonal and the identity are returned; the warning names the matrix).

Example
-------
>>> import svdlib
>>> svdlib.diagnostics.reset_failures()
0
>>> svdlib.diagnostics.failure_count()
0
"""
from __future__ import annotations

import threading

__all__ = ["failure_count", "reset_failures", "record_failures", "last_failure", "check_eigenvectors"]

_lock = threading.Lock()
_count = 0
_last: dict | None = None
_check_eigenvectors = False


def check_eigenvectors(enabled: bool | None = None) -> bool:
    """Whether the solver's failure check also verifies the eigenpairs; set it with ``enabled``.

    Off by default: a solver that fails returns non-finite eigenvalues or an error code, and
    the verification costs two batched products per call (U^T U and A U; no extra host
    synchronisation: it is folded into the one check). Turn it on to catch a solver that
    returns non-finite eigenvectors, or reports success with eigenpairs that are not an
    eigendecomposition (not orthonormal, or A U != U diag(lam) beyond rounding; see
    :func:`svdlib.solvers.untrusted`): those matrices are repaired and counted like any
    failure. Returns the setting.
    """
    global _check_eigenvectors
    if enabled is not None:
        if not isinstance(enabled, bool):
            raise ValueError(f"enabled must be True, False or None, got {enabled!r}")
        _check_eigenvectors = enabled
    return _check_eigenvectors


def record_failures(n: int, **details) -> None:
    """Add ``n`` failed matrices to the counter (called by the solver layer)."""
    global _count, _last
    if n <= 0:
        return
    with _lock:
        _count += int(n)
        _last = {"failed": int(n), **details}


def failure_count() -> int:
    """Number of matrices on which the forward eigensolver failed since the last reset."""
    return _count


def last_failure() -> dict | None:
    """Details of the most recent failure event (solver, how it was repaired), or None."""
    return _last


def reset_failures() -> int:
    """Reset the counter to zero and return the value it had."""
    global _count, _last
    with _lock:
        previous, _count, _last = _count, 0, None
    return previous
