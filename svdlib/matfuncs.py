"""Spectral matrix functions: sqrtm, inv_sqrtm, powm (the spine's output stage, eq. 4).

``method="eigh"``: Q = U f(Lambda) U^T. The backward is eq. 5-7 with the chosen remedy's K~;
for the remedies of :data:`svdlib.fused.FUSABLE` but "exact" it is folded into one Hadamard
product (:mod:`svdlib.fused`; same gradient, fewer kernels, less rounding), and
``backward="divided_difference"`` is the exact Daleckii-Krein gradient of
:mod:`svdlib.divided_difference`. "exact" (the
papers' plain-SVD reference), "power_iteration" and "truncate" go through :func:`svdlib.eigh`
and autograd. ``method="newton_schulz"``: the iSQRT-COV
iteration (:mod:`svdlib.newton_schulz`), p = +-1/2 only, differentiated by autograd.
"""
from __future__ import annotations

import torch

from . import fused
from .eigen import eigh_compute, floor_eigenvalues, prepare
from .newton_schulz import newton_schulz_sqrtm
from .remedies import DEFAULT_MATFUNC_BACKWARD

__all__ = ["powm", "sqrtm", "inv_sqrtm", "default_floor"]

METHODS = ("eigh", "newton_schulz")


def _is_positive_integer(p: float) -> bool:
    return float(p).is_integer() and p > 0


def default_floor(lam: torch.Tensor, p: float) -> torch.Tensor | None:
    """Eigenvalue floor used when ``min_eigenvalue`` is None.

    Non-integer or negative powers need lam > 0: the floor is machine epsilon of the compute
    dtype times each matrix's largest |eigenvalue| (relative, so scale-free). It only touches
    rounding-level eigenvalues of a PSD matrix, and keeps f and its gradient finite at exact
    zeros. Positive integer powers need no floor.
    """
    if _is_positive_integer(p):
        return None
    tiny = torch.finfo(lam.dtype).tiny
    scale = lam.detach().abs().amax(dim=-1, keepdim=True).clamp_min(tiny)
    return torch.finfo(lam.dtype).eps * scale


def _compose(lam: torch.Tensor, U: torch.Tensor, p: float) -> torch.Tensor:
    return (U * lam.pow(p).unsqueeze(-2)) @ U.transpose(-1, -2)


def powm(
    A: torch.Tensor,
    p: float,
    method: str = "eigh",
    backward: str = DEFAULT_MATFUNC_BACKWARD,
    *,
    eps: float = 0.0,
    min_eigenvalue: float | None = None,
    solver: str = "auto",
    compute_dtype: torch.dtype | None = None,
    iterations: int | None = None,
    **options,
) -> torch.Tensor:
    r"""Matrix power A^p = U diag(lam^p) U^T of symmetric PSD matrices (..., n, n) (eq. 4).

    Parameters
    ----------
    A : Tensor (..., n, n)
        Symmetric positive semi-definite matrices (symmetrised; validated like
        :func:`svdlib.eigh`).
    p : float
        The power; +-1/2 for ``method="newton_schulz"``.
    method : "eigh" | "newton_schulz"
    backward : str
        Remedy of :data:`svdlib.BACKWARDS` (method "eigh" only; ignored by Newton-Schulz,
        which is differentiated by autograd). Default "taylor" (the papers' SVD-Taylor;
        README, "Which backward by default"); "divided_difference" is the exact gradient,
        bounded by the eigenvalue floor.
    eps : float
        Added to the diagonal first (both methods); for method "eigh" also the eigenvalue
        floor of the remedies that clamp (see :func:`svdlib.eigh`).
    min_eigenvalue : float, optional
        Eigenvalue floor; default :func:`default_floor` (straight-through gradient).
    iterations : int, optional
        Newton-Schulz iterations (default 5) or power-iteration steps for
        ``backward="power_iteration"`` / ``solver="power_iteration"``; ignored otherwise, so a
        layer can switch ``method`` without changing its keyword arguments.
    **options
        Remedy options, e.g. ``degree=100`` for taylor or ``threshold=100`` for clip.

    Returns the caller's dtype (float16/bfloat16 computed in float32).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    p = float(p)
    out_dtype = A.dtype if isinstance(A, torch.Tensor) else None
    if method == "newton_schulz":
        if p not in (0.5, -0.5):
            raise ValueError(f"method='newton_schulz' computes p = 0.5 or -0.5 only, got p={p}")
        Ac = prepare(A, compute_dtype, eps)
        root, inv_root = newton_schulz_sqrtm(Ac, 5 if iterations is None else iterations)
        return (root if p == 0.5 else inv_root).to(out_dtype)
    if backward in fused.FUSABLE and backward != "exact" and solver != "power_iteration":
        # Same gradient as the chain below (eq. 5-7 with the remedy's K~), folded into one
        # Hadamard product; for "divided_difference" the exact Daleckii-Krein backward.
        # "exact" stays on the chain on purpose: it is the papers' plain-SVD reference, whose
        # dL/dU and dL/dlam terms are formed separately and cancel in floating point near
        # ties (the folded form K_ij (f_i - f_j) would quietly turn it into a bounded
        # divided difference and hide the failure mode the papers measure).
        return fused.powm(A, p, backward, eps=eps, min_eigenvalue=min_eigenvalue, solver=solver,
                          compute_dtype=compute_dtype, **options)
    lam, U = eigh_compute(A, backward, solver, eps=eps, compute_dtype=compute_dtype,
                          iterations=iterations, **options)
    floor = default_floor(lam, p) if min_eigenvalue is None else min_eigenvalue
    return _compose(floor_eigenvalues(lam, floor), U, p).to(out_dtype)


def sqrtm(A: torch.Tensor, method: str = "eigh", backward: str = DEFAULT_MATFUNC_BACKWARD, **kwargs) -> torch.Tensor:
    """Matrix square root A^{1/2} (second-order pooling, colouring). See :func:`powm`.

    >>> import torch, svdlib
    >>> svdlib.sqrtm(torch.diag(torch.tensor([4.0, 9.0], dtype=torch.float64))).diagonal().tolist()
    [2.0, 3.0]
    """
    return powm(A, 0.5, method, backward, **kwargs)


def inv_sqrtm(A: torch.Tensor, method: str = "eigh", backward: str = DEFAULT_MATFUNC_BACKWARD, **kwargs) -> torch.Tensor:
    """Inverse square root A^{-1/2} (ZCA whitening, Alg. 2 of Robust Differentiable SVD).

    >>> import torch, svdlib
    >>> svdlib.inv_sqrtm(torch.diag(torch.tensor([4.0, 16.0], dtype=torch.float64))).diagonal().tolist()
    [0.5, 0.25]
    """
    return powm(A, -0.5, method, backward, **kwargs)
