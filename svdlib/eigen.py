"""Differentiable batched eigendecomposition: forward by a named solver, backward by a remedy.

``svdlib.eigh`` is the spine's first stage (docs/architecture.md, "The spine"):
A (..., n, n) -> (lam, U) with ascending eigenvalues and eigenvectors in columns; the backward
is the backward stage (:func:`svdlib.fused.eigen_backward`) with one of
:data:`svdlib.BACKWARDS` (orthogonality paper eq. 5-7; Robust Differentiable SVD sec. 3).
"""
from __future__ import annotations

import torch

from . import _options, fused, solvers
from ._validation import check_square, is_traced, working_dtype
from .remedies import DEFAULT_BACKWARD

__all__ = ["eigh", "eigh_compute", "prepare", "prepare_doubled", "decompose", "floor_eigenvalues"]

_EPS = _options.MATRIX_FUNCTION_KEYWORDS["eps"]
_MIN_EIGENVALUE = _options.MATRIX_FUNCTION_KEYWORDS["min_eigenvalue"]
_ITERATIONS = _options.MATRIX_FUNCTION_KEYWORDS["iterations"]
_COMPILE = _options.MATRIX_FUNCTION_KEYWORDS["compile"]


def prepare(A: torch.Tensor, compute_dtype: torch.dtype | None, eps: float, name: str = "A",
            check_finite: bool = True) -> torch.Tensor:
    """Validate, cast to the compute dtype, symmetrise ((A + A^T)/2) and add ``eps`` I.

    Adding eps I shifts every eigenvalue by eps and leaves the eigenvectors unchanged
    (Robust Differentiable SVD sec. 4.1; the decorrelated-BN code adds 1e-2 I). All steps are
    differentiable. ``eps`` is validated (finite, >= 0) by the public call.
    """
    check_square(A, name, finite=check_finite)
    dtype = working_dtype(A.dtype, compute_dtype)
    if A.dtype != dtype:
        A = A.to(dtype)
    A = 0.5 * (A + A.transpose(-1, -2))
    if eps:
        A = A + eps * torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    return A


def prepare_doubled(A: torch.Tensor, compute_dtype: torch.dtype | None, eps: float, name: str = "A",
                    check_finite: bool = False) -> torch.Tensor:
    """2 (sym(A) + eps I) = A + A^T + 2 eps I: what :func:`decompose` hands the solver.

    The eigenvectors are those of :func:`prepare`'s matrix and the eigenvalues twice its
    (halved after the solve): scaling by 2 is exact in binary floating point and the solvers'
    arithmetic is equivariant under it, so the results are bit for bit those of
    :func:`prepare`, one element-wise pass over A cheaper (at 32 x 16 x 16 that pass is a few
    per cent of the solve). ``check_finite=False``: the solver's check catches NaN/Inf input.
    """
    check_square(A, name, finite=check_finite)
    dtype = working_dtype(A.dtype, compute_dtype)
    if A.dtype != dtype:
        A = A.to(dtype)
    A2 = A + A.transpose(-1, -2)
    if eps:
        A2 = A2 + (2 * eps) * torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    return A2


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
    """(lam, U) of A2 = 2 S (:func:`prepare_doubled`): lam = eigenvalues of S, and the backward
    stage's dL/dS halved into dL/dA2."""

    generate_vmap_rule = True

    @staticmethod
    def forward(A2, solver, spec, compile, name):
        lam2, U = solvers.solve(A2, solver, traced=is_traced(A2), name=name)
        return 0.5 * lam2, U

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, spec, compile, _ = inputs
        ctx.save_for_backward(*output)
        ctx.spec, ctx.compile = spec, compile

    @staticmethod
    def backward(ctx, grad_lam, grad_U):
        lam, U = ctx.saved_tensors
        grad_S = fused.eigen_backward(lam, U, grad_lam, grad_U, ctx.spec, ctx.compile)
        return 0.5 * grad_S, None, None, None, None


def decompose(A2: torch.Tensor, solver: str, spec, *, iterations: int | None = None,
              compile: bool | str = "auto", name: str = "A") -> tuple[torch.Tensor, torch.Tensor]:
    """(lam, U) of S from ``A2`` = 2 S (:func:`prepare_doubled`), a resolved solver name and a
    backward spec.

    A differentiable solver is differentiated by autograd (``spec`` unused; ``iterations``
    goes to it). Otherwise the gradient, when one is needed, comes from the backward stage;
    without one (inference, or an input that does not require grad) the solver runs alone.
    """
    record = solvers.SOLVERS[solver]
    if getattr(record, "differentiable", False):
        lam2, U, _ = record(A2) if iterations is None else record(A2, iterations=iterations)
        return 0.5 * lam2, U
    if (torch.is_grad_enabled() and A2.requires_grad) or is_traced(A2):
        return _Eigh.apply(A2, solver, spec, compile, name)
    lam2, U = solvers.solve(A2, solver, name=name)
    return 0.5 * lam2, U


def eigh(
    A: torch.Tensor,
    backward: str = DEFAULT_BACKWARD,
    solver: str = "auto",
    *,
    eps: float = 0.0,
    min_eigenvalue: float | None = None,
    compute_dtype: torch.dtype | None = None,
    iterations: int | None = None,
    compile: bool | str = "auto",
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
        Remedy name: "taylor" (default), "exact", "clip", "pade", "power_iteration",
        "truncate" (or one you registered). Its options go in ``**options``, e.g.
        ``degree=100``; ``svdlib.BACKWARDS[name].defaults`` lists them with their defaults.
    solver : str
        "auto" (cuSOLVER batched on CUDA when nvmath-python is importable, else torch),
        "torch", "cusolver_batched", or "power_iteration_forward" (the "PI" baseline: forward
        by power iteration with deflation, differentiated by autograd; ``backward`` is then
        not used).
    eps : float
        Diagonal shift added before solving (eigenvalues move up by eps, eigenvectors stay).
        When > 0 it is also the default of the remedy's eigenvalue ``floor`` (taylor, pade,
        power_iteration), as in Robust Differentiable SVD sec. 4: the shifted spectrum cannot
        go below it. An explicit ``floor=`` wins.
    min_eigenvalue : float, optional
        Floor for the returned eigenvalues (straight-through gradient, see
        :func:`floor_eigenvalues`).
    compute_dtype : torch.dtype, optional
        Solve (and differentiate) in this dtype, e.g. float64, and return the caller's dtype.
    iterations : int, optional
        Steps of the iterative part in use: the "power_iteration_forward" solver (default 19)
        or the "power_iteration" remedy (default 9); ignored otherwise.
    compile : bool or "auto"
        torch.compile the backward stage ("auto": on CUDA with Triton).

    Returns
    -------
    lam : Tensor (..., n)   ascending eigenvalues.
    U : Tensor (..., n, n)  orthonormal eigenvectors in columns.

    Notes
    -----
    One host synchronisation per call: the solver's failure check (a sum of lam and U,
    :func:`svdlib.solvers.solve`), which also catches non-finite input.

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
                          compute_dtype=compute_dtype, iterations=iterations, compile=compile, **options)
    if lam.dtype != out_dtype:
        lam, U = lam.to(out_dtype), U.to(out_dtype)
    return lam, U


def eigh_compute(A, backward=DEFAULT_BACKWARD, solver="auto", *, eps=0.0, min_eigenvalue=None,
                 compute_dtype=None, iterations=None, compile="auto", **options):
    """:func:`eigh` without the final cast: results stay in the compute dtype."""
    # Checks skipped for the defaults: this path is timed against torch.linalg.eigh.
    if eps != 0.0:
        eps = _EPS(eps, "eps")
    if min_eigenvalue is not None:
        min_eigenvalue = _MIN_EIGENVALUE(min_eigenvalue, "min_eigenvalue")
    if iterations is not None:
        iterations = _ITERATIONS(iterations, "iterations")
    if compile != "auto":
        compile = _COMPILE(compile, "compile")
    solver = solvers.canonical_name(solver)
    uses_remedy = not solvers.is_differentiable(solver)
    target = None if iterations is None else _options.iterations_target("eigh", solver, backward)
    spec = _options.backward_spec(backward, options, shift=eps, use="eigh" if uses_remedy else "matrix_function",
                                  iterations=iterations if target == "remedy" else None)
    A2 = prepare_doubled(A, compute_dtype, eps, check_finite=not uses_remedy)
    name = solvers.resolve_solver(solver, A2.device)
    lam, U = decompose(A2, name, spec, iterations=iterations if target == "solver" else None, compile=compile)
    return floor_eigenvalues(lam, min_eigenvalue), U
