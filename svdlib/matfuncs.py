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
from ._validation import is_traced, real
from .eigen import decompose, floor_eigenvalues, prepare
from .newton_schulz import newton_schulz_sqrtm
from .remedies import DEFAULT_BACKWARD

__all__ = ["powm", "sqrtm", "inv_sqrtm", "default_floor"]

METHODS = ("eigh", "newton_schulz")
_POWER = real()


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


def _power_forward(A, p, solver, min_eigenvalue):
    lam_k, U = solvers.solve(A, solver, traced=is_traced(A))
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
    def forward(A, p, solver, min_eigenvalue, spec, compile):
        return _power_forward(A, p, solver, min_eigenvalue)

    @staticmethod
    def setup_context(ctx, inputs, output):
        A, p, _, _, spec, compile = inputs
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
        return grad_A, None, None, None, None, None


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
        Symmetric positive semi-definite matrices (symmetrised; validated like
        :func:`svdlib.eigh`).
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
        Eigenvalue floor; default :func:`default_floor` (straight-through gradient).
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
    out_dtype = A.dtype if isinstance(A, torch.Tensor) else None
    if method == "newton_schulz":
        if p not in (0.5, -0.5):
            raise ValueError(f"method='newton_schulz' computes p = 0.5 or -0.5 only, got p={p}")
        Ac = prepare(A, compute_dtype, eps)
        n_iter = plan.method_iterations
        root, inv_root = newton_schulz_sqrtm(Ac) if n_iter is None else newton_schulz_sqrtm(Ac, n_iter)
        return (root if p == 0.5 else inv_root).to(out_dtype)
    Ac = prepare(A, compute_dtype, eps, check_finite=plan.differentiable)
    name = solvers.solver_for(plan.solver, Ac)
    if plan.differentiable or not fused.folds(spec):
        # The chain of eq. 5-7: autograd through the composition, then eigh's backward stage.
        lam, U = decompose(Ac, name, spec, iterations=plan.solver_iterations, compile=plan.compile,
                           differentiable=plan.differentiable)
        floor = default_floor(lam, p) if min_eigenvalue is None else min_eigenvalue
        return _compose(floor_eigenvalues(lam, floor), U, p).to(out_dtype)
    if higher_order.records_derivatives(Ac):
        function = _PowerNoJvp if torch.compiler.is_compiling() else _Power
        Q = function.apply(Ac, p, name, min_eigenvalue, spec, plan.compile)[0]
    else:
        Q = _power_forward(Ac, p, name, min_eigenvalue)[0]
    return Q.to(out_dtype)


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
