"""Newton-Schulz (coupled) iteration for the matrix square root, iSQRT-COV style.

Li et al., "Towards Faster Training of Global Covariance Pooling Networks by Iterative
Matrix Square Root Normalization" (CVPR 2018), as used by the ICCV21 paper: trace
pre-normalisation Y0 = A / tr(A), Z0 = I; T = (3I - Z Y)/2, Y <- Y T, Z <- T Z;
post-compensation sqrt(A) ~ sqrt(tr A) Y, A^{-1/2} ~ Z / sqrt(tr A). Only matrix products,
so it is fast on GPUs and differentiated by autograd. It converges when the spectrum of
A / tr(A) lies in (0, 1]; with few iterations (5 by default) and ill-conditioned or
rank-deficient input it returns a damped root, not the exact one (measured in notebook 03).

What is checked (one host synchronisation, after the iteration): NaN/Inf input, a trace that
is not positive (the iteration divides by it), and a non-finite result (the iteration diverged:
A is not positive semi-definite). What is not: an indefinite A with a positive trace can give a
finite result that is no square root (the check would need the eigenvalues this method avoids;
``method="eigh"`` checks them). The zero matrix has no trace to normalise by: its square root
is 0 with gradient 0 (as with ``method="eigh"``), its inverse square root raises.
"""
from __future__ import annotations

import math

import torch

from ._validation import batch_index, check_square, integer, is_traced, raise_non_finite

__all__ = ["newton_schulz_sqrtm", "newton_schulz_iterate"]

_ITERATIONS = integer(1)


def _iterate(A: torch.Tensor, iterations: int):
    n = A.shape[-1]
    eye = torch.eye(n, dtype=A.dtype, device=A.device).expand_as(A)
    trace = torch.diagonal(A, dim1=-2, dim2=-1).sum(-1)[..., None, None]
    Y = A / trace.clamp_min(torch.finfo(A.dtype).tiny)
    Z = eye
    for _ in range(iterations):
        T = 0.5 * (3.0 * eye - Z @ Y)
        Y, Z = Y @ T, T @ Z
    root = trace.clamp_min(torch.finfo(A.dtype).tiny).sqrt()
    return Y * root, Z / root, trace[..., 0, 0]


def _check(A, trace, outputs, name: str, zero_allowed: bool):
    """One host synchronisation: every trace > 0 (or A = 0 where ``zero_allowed``) and every
    output finite; on failure, the error naming the first bad matrix."""
    A, trace = A.detach(), trace.detach()
    scale = A.abs().amax((-1, -2))
    zero = scale < torch.finfo(A.dtype).tiny
    good = (trace > 0) | zero if zero_allowed else trace > 0
    total = sum(out.sum() for out in outputs)
    if math.isfinite(torch.where(good.all(), total, torch.full_like(total, math.nan)).item()):
        return zero if zero_allowed else None
    if not bool(torch.isfinite(A).all()):
        raise_non_finite(A, name)
    flat_good = good.reshape(-1)
    finite = torch.stack([torch.isfinite(out).reshape(*good.shape, -1).all(-1) for out in outputs]).all(0)
    index = int((~(flat_good & finite.reshape(-1))).nonzero()[0])
    where = name + batch_index(index, good.shape)
    if not bool(flat_good[index]):
        what = "is the zero matrix, which has no inverse square root" if bool(zero.reshape(-1)[index]) \
            else f"has trace {float(trace.reshape(-1)[index]):.4g} <= 0, so it is not positive semi-definite"
        raise ValueError(f"newton_schulz: {where} {what}; the iteration divides by the trace and needs a "
                         "positive semi-definite matrix with a positive trace (add eps > 0, or use method='eigh')")
    raise ValueError(f"newton_schulz: the iteration diverged on {where} (non-finite result after the given "
                     "iterations): the spectrum of A / tr(A) is not in [0, 1], so A is not positive "
                     "semi-definite (a negative eigenvalue grows by 9/4 per step, a rounding-level one too: "
                     "use fewer iterations, eps > 0, or method='eigh', which checks the eigenvalues)")


def newton_schulz_iterate(A: torch.Tensor, iterations: int, p: float, name: str = "A") -> torch.Tensor:
    """A^p for p = 0.5 or -0.5 of a prepared (symmetric, validated) A, with the checks of the
    module docstring; the zero matrix gives 0 (gradient 0) for p = 0.5 and raises for -0.5."""
    root, inv_root, trace = _iterate(A, iterations)
    out = root if p == 0.5 else inv_root
    if is_traced(A):
        return out
    zero = _check(A, trace, (out,), name, zero_allowed=p > 0)
    if p > 0:
        out = out * (~zero).to(out.dtype)[..., None, None]
    return out


def newton_schulz_sqrtm(A: torch.Tensor, iterations: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (approximate sqrt(A), approximate A^{-1/2}) after ``iterations`` coupled steps.

    ``A`` (..., n, n) must be symmetric positive semi-definite with a positive trace (it is
    used as given, not symmetrised). Raises ValueError for a non-square or non-floating A,
    ``iterations`` < 1, NaN/Inf entries, a trace <= 0 (the zero matrix included: it has no
    inverse square root) and a diverged, non-finite result; an indefinite A with a positive
    trace is not detected (see the module docstring). :func:`svdlib.sqrtm` with
    ``method="newton_schulz"`` is the same iteration with svdlib's argument handling.
    """
    check_square(A, "A", finite=False)
    iterations = _ITERATIONS(iterations, "iterations")
    root, inv_root, trace = _iterate(A, iterations)
    if not is_traced(A):
        _check(A, trace, (root, inv_root), "A", zero_allowed=False)
    return root, inv_root
