"""Differentiable batched eigendecomposition: forward by a named solver, backward by a remedy.

``svdlib.eigh`` is the spine's first stage (DESIGN.md "Data flow"): A (..., n, n) ->
(lam, U) with ascending eigenvalues and eigenvectors in columns; the backward applies one of
:data:`svdlib.BACKWARDS` (orthogonality paper eq. 5-7; Robust Differentiable SVD sec. 3).
"""
from __future__ import annotations

import torch

from . import remedies, solvers
from ._validation import check_square, is_traced, working_dtype

__all__ = ["eigh", "eigh_compute", "prepare", "floor_eigenvalues"]


def prepare(A: torch.Tensor, compute_dtype: torch.dtype | None, eps: float, name: str = "A") -> torch.Tensor:
    """Validate, symmetrise ((A + A^T)/2), cast to the compute dtype and add ``eps`` I.

    Adding eps I shifts every eigenvalue by eps and leaves the eigenvectors unchanged
    (Robust Differentiable SVD sec. 4.1; the decorrelated-BN code adds 1e-2 I).
    All steps are differentiable.
    """
    check_square(A, name)
    A = A.to(working_dtype(A.dtype, compute_dtype))
    A = 0.5 * (A + A.transpose(-1, -2))
    if eps:
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        A = A + eps * torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    return A


def floor_eigenvalues(lam: torch.Tensor, floor: float | torch.Tensor | None) -> torch.Tensor:
    """Clamp eigenvalues at ``floor`` with a straight-through gradient.

    The clamp is a numerical safeguard against rounding (tiny negative eigenvalues of a PSD
    covariance), not part of the function being differentiated: its gradient is passed
    through unchanged, so the backward sees the clamped spectrum as if it were exact.
    """
    if floor is None:
        return lam
    clamped = torch.maximum(lam, torch.as_tensor(floor, dtype=lam.dtype, device=lam.device))
    return lam + (clamped - lam).detach()


class _Eigh(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(A, solver, backward, options):
        lam, U = solvers.solve(A, solver, traced=is_traced(A))
        return lam, U

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, backward, options = inputs
        lam, U = output
        ctx.save_for_backward(lam, U)
        ctx.backward_name = backward
        ctx.options = options

    @staticmethod
    def backward(ctx, grad_lam, grad_U):
        lam, U = ctx.saved_tensors
        grad_lam = torch.zeros_like(lam) if grad_lam is None else grad_lam
        grad_U = torch.zeros_like(U) if grad_U is None else grad_U
        grad_A = remedies.BACKWARDS[ctx.backward_name](lam, U, grad_lam, grad_U, **dict(ctx.options))
        return grad_A, None, None, None


def eigh(
    A: torch.Tensor,
    backward: str = "taylor",
    solver: str = "auto",
    *,
    eps: float = 0.0,
    min_eigenvalue: float | None = None,
    compute_dtype: torch.dtype | None = None,
    iterations: int | None = None,
    **options,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Eigendecomposition A = U diag(lam) U^T of symmetric matrices with a stable backward.

    .. math:: \frac{\partial L}{\partial A} = U\left(\tilde K^T \circ U^T\frac{\partial L}{\partial U}
              + \mathrm{diag}\frac{\partial L}{\partial \lambda}\right)U^T

    (orthogonality paper eq. 5-7): the forward is an exact solver, the backward replaces
    K_ij = 1/(lam_i - lam_j) by the remedy ``backward`` (see :data:`svdlib.BACKWARDS`).

    Parameters
    ----------
    A : Tensor (..., n, n)
        Real symmetric matrices; non-symmetric input is symmetrised as (A + A^T)/2.
        float16/bfloat16 are computed in float32. NaN/Inf entries raise ValueError.
    backward : str
        Remedy name: "taylor" (default; degree 9, eps 1e-10), "exact", "clip", "pade",
        "power_iteration", "truncate". Its keyword options go in ``**options``.
    solver : str
        "auto" (cuSOLVER batched on CUDA when nvmath-python is importable, else torch),
        "torch", "cusolver_batched", or "power_iteration" (the "PI" baseline: forward by
        power iteration with deflation, backward by autograd through it; ``backward`` is
        then ignored and ``iterations`` sets the number of steps, default 19).
    eps : float
        Added to the diagonal before solving (eigenvalues shift by eps, eigenvectors
        unchanged) and, when > 0, also used as the eigenvalue floor of the remedies that
        clamp (taylor, pade, power_iteration), as in Robust Differentiable SVD sec. 4. With
        the default 0 the remedies keep their own floors (taylor 1e-10, pade float64 eps,
        power_iteration 1e-5).
    min_eigenvalue : float, optional
        Floor for the returned eigenvalues (straight-through gradient, see
        :func:`floor_eigenvalues`).
    compute_dtype : torch.dtype, optional
        Solve (and differentiate) in this dtype, e.g. float64, and return the caller's dtype.

    Returns
    -------
    lam : Tensor (..., n)   ascending eigenvalues.
    U : Tensor (..., n, n)  orthonormal eigenvectors in columns.

    Examples
    --------
    >>> import torch, svdlib
    >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    >>> lam, U = svdlib.eigh(A)
    >>> lam.tolist()
    [1.0, 2.0, 3.0]
    """
    out_dtype = A.dtype if isinstance(A, torch.Tensor) else None
    lam, U = eigh_compute(A, backward, solver, eps=eps, min_eigenvalue=min_eigenvalue,
                          compute_dtype=compute_dtype, iterations=iterations, **options)
    if lam.dtype != out_dtype:
        lam, U = lam.to(out_dtype), U.to(out_dtype)
    return lam, U


def eigh_compute(A, backward="taylor", solver="auto", *, eps=0.0, min_eigenvalue=None,
                 compute_dtype=None, iterations=None, **options):
    """:func:`eigh` without the final cast: results stay in the compute dtype."""
    if solver == "power_iteration":
        Ac = prepare(A, compute_dtype, eps)
        lam, U = solvers.power_iteration_eigh(Ac, iterations=19 if iterations is None else iterations)
    else:
        remedies.validate_options(backward, options)
        if backward == "divided_difference":
            remedies.divided_difference(None, None, None, None)
        if iterations is not None and remedies.takes_option(backward, "iterations"):
            options = {**options, "iterations": iterations}
        if eps and "eps" not in options and remedies.takes_option(backward, "eps"):
            # The papers use one eps: added to the diagonal *and* the remedy's eigenvalue floor.
            options = {**options, "eps": eps}
        Ac = prepare(A, compute_dtype, eps)
        name = solvers.resolve_solver(solver, Ac.device)
        lam, U = _Eigh.apply(Ac, name, backward, tuple(sorted(options.items())))
    return floor_eigenvalues(lam, min_eigenvalue), U
