"""Differentiable batched eigendecomposition: forward by a named solver, backward by a remedy.

``svdlib.eigh`` is the spine's first stage (docs/architecture.md, "The spine"):
A (..., n, n) -> (lam, U) with ascending eigenvalues and eigenvectors in columns; the backward
is the backward stage (:func:`svdlib.fused.eigen_backward`) with one of
:data:`svdlib.BACKWARDS` (orthogonality paper eq. 5-7; Robust Differentiable SVD sec. 3).
"""
from __future__ import annotations

import torch

from . import _options, diagnostics, fused, higher_order, solvers
from ._autocast import outside_autocast
from ._validation import check_square, is_traced, working_dtype
from .remedies import DEFAULT_BACKWARD

__all__ = ["eigh", "prepare", "prepare_for_solver", "symmetric_part_needed", "decompose", "floor_eigenvalues"]

def prepare(A: torch.Tensor, compute_dtype: torch.dtype | None, eps: float, name: str = "A",
            check_finite: bool = True) -> torch.Tensor:
    """Validate, cast to the compute dtype, symmetrise ((A + A^T)/2) and add ``eps`` I.

    Adding eps I shifts every eigenvalue by eps and leaves the eigenvectors unchanged
    (Robust Differentiable SVD sec. 4.1; the decorrelated-BN code adds 1e-2 I). All steps are
    differentiable; ``eps`` is validated (finite, >= 0) by the public call. The symmetric part
    is one fused pass, ``lerp(A^T, A, 1/2)``: it returns A itself for a symmetric A, and the
    rounded (A + A^T)/2 whenever A_ij - A_ji is exact (any nearly symmetric A, e.g. X X^T
    formed in floating point); its gradient is sym(G), as for (A + A^T)/2. It is written in
    column-major order, the order LAPACK works in, so the solver's own copy of its input is a
    plain one instead of a second transposition.
    ``check_finite=False`` leaves the NaN/Inf scan to the solver's check
    (:func:`svdlib.solvers.solve`), which costs nothing extra when the input is fine.
    """
    check_square(A, name, finite=check_finite)
    return _solver_input(A, compute_dtype, eps)


def prepare_for_solver(A: torch.Tensor, solver: str, compute_dtype: torch.dtype | None, eps: float,
                       check_finite: bool = False) -> tuple[torch.Tensor, str, bool]:
    """:func:`prepare` for the eigendecomposition paths of :func:`eigh` and
    :func:`svdlib.powm`: validate ``A``, resolve ``solver`` ("auto" or a name) for its device,
    and form the symmetric part only where :func:`symmetric_part_needed` says so. Returns the
    solver's input, the resolved solver name and whether a derivative is recorded
    (:func:`svdlib.higher_order.records_derivatives`)."""
    check_square(A, "A", finite=check_finite)
    name = solvers.solver_for(solver, A)
    records = higher_order.records_derivatives(A)
    return _solver_input(A, compute_dtype, eps, symmetric_part_needed(records, name)), name, records


def _solver_input(A: torch.Tensor, compute_dtype: torch.dtype | None, eps: float,
                  symmetrize: bool = True) -> torch.Tensor:
    """Cast to the compute dtype, symmetrise unless ``symmetrize`` is False, add ``eps`` I."""
    dtype = working_dtype(A.dtype, compute_dtype)
    if A.dtype != dtype:
        A = A.to(dtype)
    if symmetrize:
        A = torch.lerp(A.transpose(-1, -2), A, 0.5)  # not .mT: the TorchScript ONNX exporter has no aten::mT
    if eps:
        A = A + eps * torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    return A


def symmetric_part_needed(records: bool, solver: str) -> bool:
    """Whether the symmetric part (A + A^T)/2 must be formed (:func:`prepare_for_solver`) before
    ``solver`` (a resolved name) runs.

    It must when a derivative is recorded (``records``: :func:`svdlib.higher_order.records_derivatives`),
    so that the gradient, sym(G), is the exact derivative for any input, and when the solver
    reads the whole matrix (``Solver.lower_triangle`` False). A solver that reads only the lower
    triangle (``"torch"``: LAPACK's syevd, as torch.linalg.eigh) needs no such pass without a
    derivative: it decomposes the symmetric matrix with A's lower triangle, which is A itself,
    bit for bit, when A is symmetric, and within A's rounding-level asymmetry when A is nearly
    symmetric (X X^T formed in floating point). The pass costs 2-4% of the forward at batch 32 of
    16 x 16 (benchmarks/README.md, "eigh overhead"). With
    :func:`svdlib.diagnostics.check_eigenvectors` on, the check reads the whole matrix, so the
    symmetric part is always formed.
    """
    return records or diagnostics._check_eigenvectors or not solvers.reads_lower_triangle(solver)


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


class _EighNoJvp(torch.autograd.Function):
    """(lam, U) = eigh(A), backward by the stage (:func:`svdlib.fused.eigen_backward`); when the
    backward is itself differentiated, by :func:`svdlib.higher_order.eigen_backward_twice`.
    This class has no forward-mode rule: it is the one torch.compile traces (Dynamo refuses a
    custom ``jvp``); :class:`_Eigh` adds it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(A, solver, spec, compile, name):
        return solvers.solve(A, solver, traced=is_traced(A), name=name)

    @staticmethod
    def setup_context(ctx, inputs, output):
        A, _, spec, compile, _ = inputs
        ctx.save_for_backward(A, *output)
        if higher_order.forward_mode_possible():
            ctx.save_for_forward(A, *output)
        ctx.spec, ctx.compile = spec, compile

    @staticmethod
    def backward(ctx, grad_lam, grad_U):
        A, lam, U = ctx.saved_tensors
        if higher_order.differentiates_again():
            grad_A = higher_order.eigen_backward_twice(A, lam, U, grad_lam, grad_U, ctx.spec)
        else:
            grad_A = fused.eigen_backward(lam, U, grad_lam, grad_U, ctx.spec, ctx.compile)
        return grad_A, None, None, None, None


class _Eigh(_EighNoJvp):
    @staticmethod
    def jvp(ctx, dA, *_):
        A, lam, U = ctx.saved_tensors
        return higher_order.eigen_jvp(A, lam, U, dA, ctx.spec)


def decompose(A: torch.Tensor, solver: str, spec, *, iterations: int | None = None,
              compile: bool | str = "auto", name: str = "A",
              differentiable: bool | None = None, records: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(lam, U) of a prepared matrix (:func:`prepare`) with a resolved solver name and spec.

    A differentiable solver is differentiated by autograd (``spec`` unused; ``iterations``
    goes to it). Otherwise the gradient, when one is needed, comes from the backward stage;
    without one (inference, or an input that does not require grad) no autograd node is built.
    ``records``: :func:`svdlib.higher_order.records_derivatives` of ``A``, if the caller has it.
    """
    if differentiable is None:
        differentiable = solvers.is_differentiable(solver)
    if differentiable:
        record = solvers.SOLVERS[solver]
        lam, U, _ = record(A) if iterations is None else record(A, iterations=iterations)
        return lam, U
    if higher_order.records_derivatives(A) if records is None else records:
        function = _EighNoJvp if torch.compiler.is_compiling() else _Eigh
        return function.apply(A, solver, spec, compile, name)
    return solvers.solve(A, solver, name=name)


@outside_autocast
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

    **Any symmetric matrix**, definite or not. ``exact``, ``clip`` and ``truncate`` (which
    drops the directions with |lam| < cutoff) apply to any spectrum as they are. ``taylor``
    (the default), ``pade`` and ``power_iteration`` are defined for positive semi-definite
    spectra (``BACKWARDS[name].psd_only``): on a matrix whose smallest eigenvalue is clearly
    negative (below -16 n eps max|lam|) they are applied to A - lam_min I, which has the same
    eigenvectors and the same exact gradient (K does not change under a shift). So ``taylor``
    and ``pade`` stay as close to the exact gradient as on a positive semi-definite matrix,
    and ``power_iteration`` gives no gradient to the smallest direction (null in A - lam_min I;
    its published energy rule drops that direction anyway). Rounding-level negative eigenvalues
    of a positive semi-definite matrix are left to the remedy's floor, as before.

    Parameters
    ----------
    A : Tensor (..., n, n)
        Real symmetric matrices. A non-symmetric A is decomposed as (A + A^T)/2 whenever a
        derivative is recorded (A requires grad in grad mode, forward AD, a torch.func
        transform or torch.compile), so the gradient is the exact derivative for any input.
        Without one (inference) the "torch" solver reads only the lower triangle, as
        torch.linalg.eigh does: the same matrix, bit for bit, when A is symmetric, and within
        A's own asymmetry when it is nearly symmetric (X X^T rounded); it saves a transposed
        pass (:func:`symmetric_part_needed`). Symmetrise first, ``(A + A.mT) / 2``, if a
        clearly non-symmetric A must mean its symmetric part there too.
        float16/bfloat16 are computed in float32. NaN/Inf entries that are read raise ValueError.
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
    One host synchronisation per call: the solver's failure check (the sum of the
    eigenvalues, :func:`svdlib.solvers.solve`), which also catches non-finite input.
    Without a derivative to record, the "torch" solver reads only A's lower triangle (see
    ``A`` above): NaN/Inf there raises, the upper triangle is neither used nor scanned (a
    covariance with a NaN/Inf feature has it in a row and a column, so in both triangles).
    :func:`svdlib.diagnostics.check_eigenvectors` on reads, and checks, the whole matrix.

    Examples
    --------
    >>> import torch, svdlib
    >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    >>> lam, U = svdlib.eigh(A)
    >>> lam.tolist()
    [1.0, 2.0, 3.0]
    """
    plan = _options.call_plan(None, backward, solver, eps, min_eigenvalue, iterations, compile, options)
    Ac, name, records = prepare_for_solver(A, plan.solver, compute_dtype, plan.eps, check_finite=plan.differentiable)
    lam, U = decompose(Ac, name, plan.spec, iterations=plan.solver_iterations, compile=plan.compile,
                       differentiable=plan.differentiable, records=records)
    if plan.min_eigenvalue is not None:
        lam = floor_eigenvalues(lam, plan.min_eigenvalue)
    if lam.dtype != A.dtype:   # the caller's dtype (float16/bfloat16, or a compute_dtype)
        lam, U = lam.to(A.dtype), U.to(A.dtype)
    return lam, U
