"""Backward remedies for the eigendecomposition: the registry :data:`BACKWARDS`.

Notation of the papers, eigenvalues ascending (as torch returns them). For A = U diag(lam) U^T
and incoming gradients dL/dU, dL/dlam, the analytic backward is (orthogonality paper eq. 5-7,
Robust Differentiable SVD eq. 2-3)

    dL/dA = U ( K^T o (U^T dL/dU) + diag(dL/dlam) ) U^T,    K_ij = 1 / (lam_i - lam_j), K_ii = 0,

symmetrised, since A is symmetric (the papers' released code returns it unsymmetrised and
relies on the covariance layer's (G + G^T); svdlib symmetrises here). A remedy replaces K by a
bounded K~. Each remedy is a pure function ``remedy(lam, U, grad_lam, grad_U, **options)``
returning dL/dA; adding one is one function and one registry line.

Signs at exact ties: for i > j (so lam_i >= lam_j) K~_ij takes the sign of lam_i - lam_j > 0
and K~_ji = -K~_ij, so every K~ stays antisymmetric even when lam_i == lam_j (the TPAMI code
gives the same sign both ways at ties; we do not).
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable

import numpy as np
import torch

__all__ = [
    "BACKWARDS",
    "DEFAULT_EIGH_BACKWARD",
    "DEFAULT_MATFUNC_BACKWARD",
    "register_backward",
    "validate_options",
    "takes_option",
    "k_exact",
    "k_clip",
    "k_taylor",
    "k_pade",
    "pade_coefficients",
    "geometric_series",
    "apply_k",
    "exact",
    "clip",
    "taylor",
    "pade",
    "power_iteration",
    "truncate",
]

FLOAT64_EPS = float(np.finfo(np.float64).eps)

#: Default remedy of :func:`svdlib.eigh` (a loss on eigenvectors needs an approximation of K).
DEFAULT_EIGH_BACKWARD = "taylor"
#: Default backward of the matrix functions (sqrtm, inv_sqrtm, powm) and of the layers in
#: svdlib.nn. "divided_difference" is exact and as cheap, but in training at our scale it was
#: never better than Taylor and once worse, so the papers' choice stays the default (README,
#: "Which backward by default").
DEFAULT_MATFUNC_BACKWARD = "taylor"


# ----------------------------------------------------------------------------- helpers
def _pair_sign(lam: torch.Tensor) -> torch.Tensor:
    """S_ij = +1 for i > j, -1 for i < j, 0 on the diagonal (index order = ascending order)."""
    n = lam.shape[-1]
    idx = torch.arange(n, device=lam.device)
    return (idx[:, None] > idx[None, :]).to(lam.dtype) - (idx[:, None] < idx[None, :]).to(lam.dtype)


def _pair_max_gap(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    li, lj = lam[..., :, None], lam[..., None, :]
    return torch.maximum(li, lj), (li - lj).abs()


def geometric_series(log_ratio: torch.Tensor, terms: int | float | torch.Tensor) -> torch.Tensor:
    """sum_{k=0}^{terms-1} r^k with r = exp(log_ratio), computed without cancellation.

    Uses expm1(terms * log r) / expm1(log r), whose limit as r -> 1 is ``terms``; valid for
    non-integer ``terms`` too (then it is (r^terms - 1)/(r - 1)), which the divided-difference
    remedy uses for matrix powers.
    """
    den = torch.expm1(log_ratio)
    num = torch.expm1(terms * log_ratio)
    safe = torch.where(den == 0, torch.ones_like(den), den)
    limit = torch.as_tensor(terms, dtype=log_ratio.dtype, device=log_ratio.device)
    return torch.where(den == 0, limit.expand_as(den), num / safe)


def apply_k(U: torch.Tensor, K: torch.Tensor, grad_lam: torch.Tensor, grad_U: torch.Tensor) -> torch.Tensor:
    """dL/dA = sym( U (K^T o (U^T dL/dU) + diag(dL/dlam)) U^T ) (orthogonality paper eq. 7)."""
    inner = K.transpose(-1, -2) * (U.transpose(-1, -2) @ grad_U)
    inner = inner + torch.diag_embed(grad_lam)
    dA = U @ inner @ U.transpose(-1, -2)
    return 0.5 * (dA + dA.transpose(-1, -2))


def _zero_diag(K: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(K.shape[-1], dtype=torch.bool, device=K.device)
    return torch.where(eye, torch.zeros_like(K), K)


# ----------------------------------------------------------------------------- K matrices
def k_exact(lam: torch.Tensor) -> torch.Tensor:
    """K_ij = 1/(lam_i - lam_j), K_ii = 0 (eq. 7). Inf at ties: the reference, not a remedy."""
    diff = lam[..., :, None] - lam[..., None, :]
    eye = torch.eye(lam.shape[-1], dtype=torch.bool, device=lam.device)
    return torch.where(eye, torch.zeros_like(diff), 1.0 / torch.where(eye, torch.ones_like(diff), diff))


def k_clip(lam: torch.Tensor, threshold: float = 100.0) -> torch.Tensor:
    """SVD-Clip: K with |K_ij| <= ``threshold``, i.e. the eigengap floored at 1/threshold.

    Robust Differentiable SVD sec. 3.5 and Table IV ("SVD-Clip", threshold 100: gap 0.01).
    """
    _, gap = _pair_max_gap(lam)
    return _zero_diag(_pair_sign(lam) / gap.clamp_min(1.0 / threshold))


def k_taylor(lam: torch.Tensor, degree: int = 9, eps: float = 1e-10) -> torch.Tensor:
    """Degree-``degree`` Taylor expansion of K (Robust Differentiable SVD sec. 3.2, eq. 9-12).

    For lam_i >= lam_j: 1/(lam_i - lam_j) = (1/lam_i) * 1/(1 - lam_j/lam_i) and 1/(1-x) is
    replaced by 1 + x + ... + x^degree. Eigenvalues are clamped at ``eps`` first, so with
    x in (0, 1], |K~_ij| <= (degree + 1)/eps. The series is summed in closed form without
    cancellation (:func:`geometric_series`). Assumes a positive semi-definite input.
    """
    lam = lam.clamp_min(eps)
    big, gap = _pair_max_gap(lam)
    log_ratio = torch.log1p(-gap / big)
    return _zero_diag(_pair_sign(lam) * geometric_series(log_ratio, degree + 1) / big)


def pade_coefficients(taylor: np.ndarray | list[float], p: int, q: int) -> tuple[np.ndarray, np.ndarray]:
    """[p/q] Padé approximant P/Q (Q(0) = 1) of the series with coefficients ``taylor``.

    Solves sum_{k=1..q} b_k c_{m-k} = -c_m for m = p+1..p+q (least squares, minimum norm,
    float64), then a_m = sum_{k=0..min(m,q)} b_k c_{m-k}. For the geometric series of
    1/(1-x) (all c = 1) the system has rank one; the minimum-norm solution is
    b_k = -1/q, and P/Q is then exactly 1/(1-x) as a rational function (Q(1) = 0).
    """
    c = np.asarray(taylor, dtype=np.float64)
    if c.size < p + q + 1:
        raise ValueError(f"a [{p}/{q}] Padé approximant needs {p + q + 1} Taylor coefficients, got {c.size}")
    coef = lambda m: c[m] if m >= 0 else 0.0  # noqa: E731
    if q > 0:
        M = np.array([[coef(m - k) for k in range(1, q + 1)] for m in range(p + 1, p + q + 1)])
        rhs = -np.array([coef(m) for m in range(p + 1, p + q + 1)])
        b_tail = np.linalg.lstsq(M, rhs, rcond=None)[0]
    else:
        b_tail = np.zeros(0)
    b = np.concatenate([[1.0], b_tail])
    a = np.array([sum(b[k] * coef(m - k) for k in range(0, min(m, q) + 1)) for m in range(p + 1)])
    return a, b


@functools.lru_cache(maxsize=16)
def _geometric_pade(p: int, q: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    a, b = pade_coefficients(np.ones(p + q + 1), p, q)
    return tuple(a.tolist()), tuple(b.tolist())


def _horner(coeffs: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    out = torch.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        out = out * x + c
    return out


def k_pade(lam: torch.Tensor, order: tuple[int, int] = (50, 50), eps: float = FLOAT64_EPS) -> torch.Tensor:
    """SVD-Padé (ICCV 2021): 1/(1-x) of the Taylor form replaced by its [p/q] Padé approximant.

    Coefficients come from the p+q+1 Taylor coefficients of 1/(1-x) (:func:`pade_coefficients`;
    the ICCV code uses [50/50] built with mpmath). Evaluated in float64. Honest note: for
    q >= 1 the approximant *is* 1/(1-x), so away from ties this remedy equals the exact K,
    and at x = 1 (lam_i == lam_j) Q vanishes up to rounding: Q(1) is then rounding noise of
    either sign, so a tie gives either an enormous value (|K~| ~ 1e16/lam) or a non-positive
    denominator. Following the ICCV overflow patch, non-finite entries and entries whose
    denominator is <= 0 are replaced by the largest remaining |K~| of the batch (with the
    pair's sign). It is therefore *not* bounded at ties: notebook 03 measures this. Eigenvalues are clamped at ``eps`` (float64 machine
    eps, as in the ICCV code).
    """
    p, q = (int(order[0]), int(order[1]))
    if p < 0 or q < 0:
        raise ValueError(f"order must be two non-negative integers (p, q), got {order}")
    a, b = _geometric_pade(p, q)
    lam64 = lam.to(torch.float64).clamp_min(eps)
    li, lj = lam64[..., :, None], lam64[..., None, :]
    big, small = torch.maximum(li, lj), torch.minimum(li, lj)
    x = small / big
    denominator = _horner(b, x)
    K = _pair_sign(lam64) * _horner(a, x) / (denominator * big)
    K = _zero_diag(K)
    # Q(x) > 0 on [0, 1) in exact arithmetic; Q <= 0 only happens at (near-)ties by rounding.
    finite = torch.isfinite(K) & (denominator > 0)
    extreme = torch.where(finite, K.abs(), torch.zeros_like(K)).amax()
    K = torch.where(finite, K, _pair_sign(lam64) * extreme)
    return K.to(lam.dtype)


# ----------------------------------------------------------------------------- remedies
def exact(lam, U, grad_lam, grad_U):
    """Exact analytic gradient (eq. 7). Inf/NaN at repeated eigenvalues: the reference."""
    return apply_k(U, k_exact(lam), grad_lam, grad_U)


def clip(lam, U, grad_lam, grad_U, *, threshold: float = 100.0):
    """SVD-Clip: exact K with |K_ij| clipped at ``threshold`` (default 100, TPAMI code)."""
    return apply_k(U, k_clip(lam, threshold), grad_lam, grad_U)


def taylor(lam, U, grad_lam, grad_U, *, degree: int = 9, eps: float = 1e-10):
    """SVD-Taylor (Robust Differentiable SVD sec. 3.2): |K~| <= (degree+1)/eps.

    Defaults from the TPAMI code: degree 9, eigenvalue floor 1e-10 (the ICCV code uses
    degree 100).
    """
    if degree < 0:
        raise ValueError(f"degree must be >= 0, got {degree}")
    return apply_k(U, k_taylor(lam, degree, eps), grad_lam, grad_U)


def pade(lam, U, grad_lam, grad_U, *, order: tuple[int, int] = (50, 50), eps: float = FLOAT64_EPS):
    """SVD-Padé (ICCV 2021), see :func:`k_pade` for what it does at ties."""
    return apply_k(U, k_pade(lam, order, eps), grad_lam, grad_U)


def truncate(lam, U, grad_lam, grad_U, *, threshold: float | None = 1e-5, top_n: int | None = None,
             clamp: float = 1e10):
    """Drop eigen-directions from the gradient (ICCV 2021 remedies).

    Directions with lam < ``threshold`` and, if ``top_n`` is given, all but the ``top_n``
    largest are removed: their rows and columns of K and their dL/dlam are zeroed. The
    remaining K is the exact one with |K| clamped at ``clamp`` (1e10 in the ICCV code), so
    ties among kept directions stay finite.
    """
    n = lam.shape[-1]
    keep = torch.ones_like(lam, dtype=torch.bool)
    if threshold is not None:
        keep = keep & (lam >= threshold)
    if top_n is not None:
        if not 0 <= top_n <= n:
            raise ValueError(f"top_n must be in [0, {n}], got {top_n}")
        idx = torch.arange(n, device=lam.device)
        keep = keep & (idx >= n - top_n)
    keep = keep.to(lam.dtype)
    K = k_clip(lam, clamp) * keep[..., :, None] * keep[..., None, :]
    return apply_k(U, K, grad_lam * keep, grad_U)


def power_iteration(lam, U, grad_lam, grad_U, *, iterations: int = 9, eps: float = 1e-5,
                    energy_tol: float = 1e-4, rel_tol: float = 0.1, norm_floor: float = 1e-5):
    """SVD-PI: SVD forward, gradient of power iterations with deflation (Robust Differentiable
    SVD sec. 3.3-3.4, Alg. 1; Backpropagation-Friendly Eigendecomposition, NeurIPS 2019).

    M = U diag(lam) U^T is rebuilt from the eigenpairs. For each eigenvector u (largest first)
    of the deflated matrix M, ``iterations`` + 1 steps v <- M v / max(||M v||, norm_floor)
    start at u, then M <- M - M v v^T; the gradient is that of this whole computation
    (autograd inside the backward), so for the dominant eigenvector it is

        sum_{k=0..iterations} (M/||Mv||)^k (I - v v^T)/||Mv|| g v^T,

    the degree-``iterations`` Taylor gradient (the Proposition of sec. 3.3), and the deflation
    steps carry the coupling to the larger eigenvectors. Deflation stops, and the remaining
    directions get no gradient, as in Alg. 1: when the captured energy reaches
    1 - ``energy_tol`` of the trace, lam <= ``eps``, the Rayleigh quotient of the deflated M is
    non-positive or differs from the SVD eigenvalue by more than ``rel_tol``.
    ``iterations`` = 9 (TPAMI; 19 in NeurIPS). Masks, not Python breaks, so it batches; it is
    not meant for torch.func transforms of the backward.
    """
    n = lam.shape[-1]
    U, lam, grad_U, grad_lam = U.detach(), lam.detach(), grad_U.detach(), grad_lam.detach()

    def objective(A):
        M = A
        total = lam.clamp_min(0).sum(-1)
        captured = torch.zeros_like(total)
        active = torch.ones_like(total, dtype=torch.bool)
        loss = torch.zeros((), dtype=lam.dtype, device=lam.device)
        for i in range(n - 1, -1, -1):
            u, lam_i = U[..., :, i], lam[..., i]
            with torch.no_grad():
                rayleigh = (u * (M.detach() @ u.unsqueeze(-1)).squeeze(-1)).sum(-1)
                active = active & (captured < (1 - energy_tol) * total) & (lam_i > eps) & (rayleigh > 0)
                active = active & ((rayleigh - lam_i).abs() <= rel_tol * lam_i.abs())
            v = u
            for _ in range(iterations + 1):
                w = (M @ v.unsqueeze(-1)).squeeze(-1)
                v = w / w.norm(dim=-1, keepdim=True).clamp_min(norm_floor)
            Mv = (M @ v.unsqueeze(-1)).squeeze(-1)
            term = (grad_U[..., :, i] * v).sum(-1) + grad_lam[..., i] * (v * Mv).sum(-1)
            loss = loss + (active.to(lam.dtype) * term).sum()
            M = M - Mv.unsqueeze(-1) * v.unsqueeze(-2)
            captured = captured + lam_i
        return loss

    grad = torch.func.grad(objective)((U * lam.unsqueeze(-2)) @ U.transpose(-1, -2))
    return 0.5 * (grad + grad.transpose(-1, -2))


def divided_difference(lam, U, grad_lam, grad_U, **_):
    """Exact Daleckii-Krein gradient of a matrix function; see :mod:`svdlib.divided_difference`.

    It needs the function f (the gradient of Q = U f(Lambda) U^T combines the eigenvector and
    eigenvalue paths), so it exists for sqrtm / inv_sqrtm / powm, not for eigh itself.
    """
    raise ValueError(
        "backward='divided_difference' applies to matrix functions (svdlib.sqrtm, inv_sqrtm, "
        "powm), whose gradient it computes exactly; a loss on the eigenvectors of svdlib.eigh "
        "has no such form: choose 'taylor', 'pade', 'clip', 'power_iteration', 'truncate' or 'exact'"
    )


BACKWARDS: dict[str, Callable[..., torch.Tensor]] = {
    "exact": exact,
    "clip": clip,
    "taylor": taylor,
    "pade": pade,
    "power_iteration": power_iteration,
    "truncate": truncate,
    "divided_difference": divided_difference,
}


def register_backward(name: str, fn: Callable[..., torch.Tensor]) -> None:
    """Add a remedy ``fn(lam, U, grad_lam, grad_U, **options) -> dL/dA`` to the registry."""
    BACKWARDS[name] = fn


def takes_option(backward: str, option: str) -> bool:
    """True when the remedy ``backward`` accepts keyword option ``option``."""
    params = inspect.signature(BACKWARDS[backward]).parameters
    return option in params and params[option].kind is inspect.Parameter.KEYWORD_ONLY


def validate_options(backward: str, options: dict) -> None:
    """Raise a clear error for an unknown remedy name or option."""
    if backward not in BACKWARDS:
        raise ValueError(f"unknown backward {backward!r}; expected one of {sorted(BACKWARDS)}")
    if backward == "divided_difference":
        return
    params = inspect.signature(BACKWARDS[backward]).parameters
    allowed = [k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for backward={backward!r}; valid options: {allowed or 'none'}"
        )
