"""Spectral matrix functions: sqrtm, inv_sqrtm, powm (the spine's output stage, eq. 4).

``method="eigh"``: Q = U f(Lambda) U^T, differentiated by the backward stage
(:mod:`svdlib.fused`, docs/architecture.md): for a remedy with a folded form (taylor, pade,
clip, divided_difference, ...) one Hadamard product F~ o U^T sym(G) U, for one without
(``exact``, the papers' plain-SVD reference; ``power_iteration``; ``truncate``) the chain of
eq. 5-7 through :func:`svdlib.eigh`'s backward. ``method="newton_schulz"``: the iSQRT-COV
iteration (:mod:`svdlib.newton_schulz`), p = +-1/2 only, differentiated by autograd.
"""
from __future__ import annotations

import torch

from . import _options, fused, higher_order, solvers
from ._autocast import outside_autocast
from ._validation import is_traced, real, rounding_rtol
from .eigen import decompose, floor_eigenvalues, prepare, prepare_for_solver
from .newton_schulz import newton_schulz_iterate
from .remedies import DEFAULT_BACKWARD

__all__ = ["powm", "sqrtm", "inv_sqrtm", "default_floor"]

METHODS = ("eigh", "newton_schulz")
_POWER = real()


def _is_positive_integer(p: float) -> bool:
    return float(p).is_integer() and p > 0


def default_floor(lam: torch.Tensor, p: float) -> torch.Tensor | None:
    """Eigenvalue floor used when ``min_eigenvalue`` is None.

    Non-integer or negative powers need lam > 0: the floor is machine epsilon of the compute
    dtype times each matrix's largest |eigenvalue| (relative, so scale-free), and never less
    than the dtype's smallest normal number (a denormal floor gave 1/sqrt(floor) ~ 1e22 for the
    zero matrix). It only touches rounding-level eigenvalues of a PSD matrix, and keeps f and
    its gradient finite at exact zeros. Positive integer powers need no floor.

    A matrix *without scale* (every |eigenvalue| below the smallest normal number: the zero
    matrix) has no relative floor: :func:`powm` refuses it for negative powers and returns 0,
    with gradient 0, for positive ones (see :func:`zero_without_scale`).
    """
    if _is_positive_integer(p):
        return None
    finfo = torch.finfo(lam.dtype)
    return (finfo.eps * lam.detach().abs().amax(dim=-1, keepdim=True)).clamp_min(finfo.tiny)


def zero_without_scale(Q: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``Q`` with the matrices that have no scale (max |lam| below the smallest normal number)
    set to 0, and their gradient to 0.

    For p > 0, A^p of the zero matrix is 0; its derivative is infinite for p < 1 (as for
    sqrt(x) at 0), so svdlib defines it as 0 there (the limit for p > 1): a one-sample or
    constant-feature covariance gives a zero output and no gradient, instead of 1e22.
    """
    has_scale = lam.detach().abs().amax(dim=-1) >= torch.finfo(lam.dtype).tiny
    return Q * has_scale.to(Q.dtype)[..., None, None]


def _expectation(p: float, min_eigenvalue, A: torch.Tensor) -> solvers.Expect | str:
    """What A^p needs of A's spectrum (checked with the solver's failure check, no extra sync):
    positive semi-definite beyond rounding unless p is a positive integer, and a scale for
    p < 0. An explicit ``min_eigenvalue`` is the caller's floor: then nothing is checked."""
    if _is_positive_integer(p) or min_eigenvalue is not None or not isinstance(A, torch.Tensor) \
            or A.dim() < 2:
        return "A"
    return solvers.Expect(
        "A", psd_rtol=rounding_rtol(A.shape[-1], A.dtype), needs_scale=p < 0,
        purpose=f"the matrix power p = {p:g}",
        remedy="add eps > 0 (a diagonal shift, at least |eigenvalue| for a negative one) or pass "
               "min_eigenvalue > 0 to floor the eigenvalues explicitly")


def _compose(lam: torch.Tensor, U: torch.Tensor, p: float) -> torch.Tensor:
    return (U * lam.pow(p).unsqueeze(-2)) @ U.transpose(-1, -2)


def _power_forward(A, p, solver, min_eigenvalue, expect="A"):
    lam_k, U = solvers.solve(A, solver, traced=is_traced(A), name=expect)
    floor = default_floor(lam_k, p) if min_eigenvalue is None else min_eigenvalue
    lam = lam_k
    if floor is not None:
        lam = torch.maximum(lam_k, torch.as_tensor(floor, dtype=lam_k.dtype, device=lam_k.device))
    return _compose(lam, U, p), lam, lam_k, U


class _PowerNoJvp(torch.autograd.Function):
    """Q = U diag(max(lam, floor)^p) U^T; backward by :func:`svdlib.fused.spectral_stage`, or,
    when the backward is itself differentiated, :func:`svdlib.higher_order.spectral_twice`.
    No forward-mode rule: torch.compile traces this class; :class:`_Power` adds it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(A, p, solver, min_eigenvalue, spec, compile, expect="A"):
        return _power_forward(A, p, solver, min_eigenvalue, expect)

    @staticmethod
    def setup_context(ctx, inputs, output):
        A, p, _, _, spec, compile, *_ = inputs
        _, lam, lam_k, U = output
        ctx.mark_non_differentiable(lam, lam_k, U)
        ctx.save_for_backward(A, lam, lam_k, U)
        if higher_order.forward_mode_possible():
            ctx.save_for_forward(A, lam, lam_k, U)
        ctx.p, ctx.spec, ctx.compile = p, spec, compile

    @staticmethod
    def backward(ctx, grad_Q, *_):
        A, lam, lam_k, U = ctx.saved_tensors
        if higher_order.differentiates_again():
            grad_A = higher_order.spectral_twice(A, lam, lam_k, U, grad_Q, ctx.p, ctx.spec)
        else:
            grad_A = fused.spectral_stage(lam, lam_k, U, grad_Q, ctx.p, ctx.spec, ctx.compile)
        return grad_A, None, None, None, None, None, None


class _Power(_PowerNoJvp):
    @staticmethod
    def jvp(ctx, dA, *_):
        # the backward map is self-adjoint: the tangent of Q is the same map applied to dA
        A, lam, lam_k, U = ctx.saved_tensors
        return higher_order.spectral_jvp(A, lam, lam_k, U, dA, ctx.p, ctx.spec), None, None, None


@outside_autocast
def powm(
    A: torch.Tensor,
    p: float,
    method: str = "eigh",
    backward: str = DEFAULT_BACKWARD,
    *,
    eps: float = 0.0,
    min_eigenvalue: float | None = None,
    solver: str = "auto",
    compute_dtype: torch.dtype | None = None,
    iterations: int | None = None,
    compile: bool | str = "auto",
    **options,
) -> torch.Tensor:
    r"""Matrix power A^p = U diag(lam^p) U^T of symmetric PSD matrices (..., n, n) (eq. 4).

    Parameters
    ----------
    A : Tensor (..., n, n)
        Symmetric positive semi-definite matrices (read and validated like
        :func:`svdlib.eigh`); any symmetric matrix when p is a positive integer. An eigenvalue
        below -16 n eps max|lam| (negative beyond rounding; eps of A's dtype) raises ValueError,
        checked with the solver's failure check (no extra host synchronisation); rounding-level
        negative eigenvalues are floored (:func:`default_floor`). For p < 0 the zero matrix
        raises ValueError (use ``eps > 0``); for p > 0 its A^p is 0 with gradient 0
        (:func:`zero_without_scale`). An explicit ``min_eigenvalue`` is your floor: neither
        check applies.
    p : float
        The power; +-1/2 for ``method="newton_schulz"``.
    method : "eigh" | "newton_schulz"
    backward : str
        Remedy of :data:`svdlib.BACKWARDS` (method "eigh"; its options are validated for
        Newton-Schulz too, which is differentiated by autograd). Default "taylor" (the papers'
        SVD-Taylor; README, "Which backward by default"); "divided_difference" is the exact
        gradient, bounded by the eigenvalue floor.
    eps : float
        Diagonal shift added first (both methods); when > 0 also the default of the remedy's
        eigenvalue ``floor`` (see :func:`svdlib.eigh`).
    min_eigenvalue : float, optional
        Eigenvalue floor; default :func:`default_floor` (straight-through gradient). Must be
        > 0 unless p is a positive integer (lam^p or its gradient is infinite at 0).
    solver : str
        As in :func:`svdlib.eigh`.
    iterations : int, optional
        Steps of the iterative part in use: Newton-Schulz (default 5), the
        "power_iteration_forward" solver (default 19) or the "power_iteration" remedy
        (default 9); ignored otherwise, so a layer can switch ``method`` without changing its
        keyword arguments.
    compile : bool or "auto"
        torch.compile the backward stage ("auto": on CUDA with Triton).
    **options
        Remedy options, e.g. ``degree=100`` for taylor or ``k_max=100`` for clip.

    Returns the caller's dtype (float16/bfloat16 computed in float32); under torch.autocast,
    computed with autocast off and returned in the autocast dtype.
    """
    p = _POWER(p, "p")
    plan = _options.call_plan(method, backward, solver, eps, min_eigenvalue, iterations, compile, options)
    eps, min_eigenvalue, spec = plan.eps, plan.min_eigenvalue, plan.spec
    if min_eigenvalue is not None and min_eigenvalue <= 0 and not _is_positive_integer(p):
        raise ValueError(f"min_eigenvalue must be > 0 for p = {p:g} (lam^p or its gradient is infinite at 0), "
                         f"got {min_eigenvalue!r}")
    out_dtype = A.dtype if isinstance(A, torch.Tensor) else None
    if method == "newton_schulz":
        if p not in (0.5, -0.5):
            raise ValueError(f"method='newton_schulz' computes p = 0.5 or -0.5 only, got p={p}")
        Ac = prepare(A, compute_dtype, eps, check_finite=False)
        n_iter = plan.method_iterations
        return newton_schulz_iterate(Ac, 5 if n_iter is None else n_iter, p).to(out_dtype)
    expect = _expectation(p, min_eigenvalue, A)
    Ac, name, records = prepare_for_solver(A, plan.solver, compute_dtype, eps)
    unscaled_is_zero = min_eigenvalue is None and p > 0 and not _is_positive_integer(p)
    if plan.differentiable or not fused.folds(spec):
        # The chain of eq. 5-7: autograd through the composition, then eigh's backward stage.
        lam, U = decompose(Ac, name, spec, iterations=plan.solver_iterations, compile=plan.compile,
                           differentiable=plan.differentiable, name=expect, records=records)
        if plan.differentiable:
            solvers.verify(lam, U, expect, source=Ac)
        floor = default_floor(lam, p) if min_eigenvalue is None else min_eigenvalue
        Q = _compose(floor_eigenvalues(lam, floor), U, p)
        return (zero_without_scale(Q, lam) if unscaled_is_zero else Q).to(out_dtype)
    if records:
        function = _PowerNoJvp if torch.compiler.is_compiling() else _Power
        Q, _, lam_k, _ = function.apply(Ac, p, name, min_eigenvalue, spec, plan.compile, expect)
    else:
        Q, _, lam_k, _ = _power_forward(Ac, p, name, min_eigenvalue, expect)
    return (zero_without_scale(Q, lam_k) if unscaled_is_zero else Q).to(out_dtype)


def sqrtm(A: torch.Tensor, method: str = "eigh", backward: str = DEFAULT_BACKWARD, **kwargs) -> torch.Tensor:
    """Matrix square root A^{1/2} (second-order pooling, colouring). See :func:`powm`.

    >>> import torch, svdlib
    >>> svdlib.sqrtm(torch.diag(torch.tensor([4.0, 9.0], dtype=torch.float64))).diagonal().tolist()
    [2.0, 3.0]
    """
    return powm(A, 0.5, method, backward, **kwargs)


def inv_sqrtm(A: torch.Tensor, method: str = "eigh", backward: str = DEFAULT_BACKWARD, **kwargs) -> torch.Tensor:
    """Inverse square root A^{-1/2} (ZCA whitening, Alg. 2 of Robust Differentiable SVD).

    >>> import torch, svdlib
    >>> svdlib.inv_sqrtm(torch.diag(torch.tensor([4.0, 16.0], dtype=torch.float64))).diagonal().tolist()
    [0.5, 0.25]
    """
    return powm(A, -0.5, method, backward, **kwargs)
