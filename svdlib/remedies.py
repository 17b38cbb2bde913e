"""Backward remedies of the eigendecomposition: one record each, registered in :data:`BACKWARDS`.

Notation of the papers, eigenvalues ascending (as torch returns them). For A = U diag(lam) U^T
and incoming gradients dL/dU, dL/dlam, the analytic backward is (orthogonality paper eq. 5-7,
Robust Differentiable SVD eq. 2-3)

    dL/dA = U ( K^T o (U^T dL/dU) + diag(dL/dlam) ) U^T,    K_ij = 1 / (lam_i - lam_j), K_ii = 0,

symmetrised, since A is symmetric (the papers' released code returns it unsymmetrised and
relies on the covariance layer's (G + G^T); svdlib symmetrises). A remedy replaces K by a
bounded K~. This module says *what* each remedy is (:class:`Remedy`: its K~ builder, its
options with their defaults and checks, its bound, whether matrix functions may fold it);
*how* a gradient is assembled from it is the one backward stage, :mod:`svdlib.fused`, used by
:func:`svdlib.eigh` and the matrix functions alike. Adding a remedy is one function and one
:func:`register_backward` line (docs/architecture.md, "Add a remedy").

Signs at exact ties: for i > j (so lam_i >= lam_j) K~_ij takes the sign of lam_i - lam_j > 0
and K~_ji = -K~_ij, so every K~ stays antisymmetric even when lam_i == lam_j (the TPAMI code
gives the same sign both ways at ties; we do not).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Any, Callable, Mapping

import numpy as np
import torch

from . import _options, fused
from ._registry import BACKWARDS, DEFAULT_BACKWARD
from ._validation import Check, default_check, integer, integer_pair, optional, real, renamed_keywords
from .divided_difference import divided_difference_matrix, geometric_series

__all__ = [
    "BACKWARDS",
    "Remedy",
    "DEFAULT_BACKWARD",
    "DEFAULT_EIGH_BACKWARD",
    "DEFAULT_MATFUNC_BACKWARD",
    "register_backward",
    "k_exact",
    "k_clip",
    "k_taylor",
    "k_pade",
    "k_truncate",
    "kept_directions",
    "PadeOrder",
    "pade_order",
    "pade_coefficients",
    "geometric_series",
    "power_iteration_gradient",
    "exact",
    "clip",
    "taylor",
    "pade",
    "power_iteration",
    "truncate",
    "divided_difference",
]

FLOAT64_EPS = float(np.finfo(np.float64).eps)

#: Older names of :data:`DEFAULT_BACKWARD` (svdlib._registry; kept: callers import them).
DEFAULT_EIGH_BACKWARD = DEFAULT_MATFUNC_BACKWARD = DEFAULT_BACKWARD


# ----------------------------------------------------------------------------- the record
@dataclasses.dataclass(frozen=True, eq=False)
class Remedy:
    """Everything svdlib needs to know about one backward remedy.

    A remedy gives at least one of:

    k_matrix
        ``k_matrix(lam, **options) -> K~`` (..., n, n), antisymmetric entry by entry
        (K~_ji = -K~_ij, ties included): the stand-in for K of eq. 7. The backward stage
        assembles dL/dA from it, for eigh and for matrix functions.
    gradient
        ``gradient(lam, U, grad_lam, grad_U, **options) -> dL/dA`` for a remedy that is not a
        K~ (power iteration differentiates its own iterations).
    f_matrix
        ``f_matrix(lam, p) -> F`` (..., n, n) of a matrix power Q = U diag(lam^p) U^T, with
        dL/dA = U (F o U^T sym(dL/dQ) U) U^T: a remedy in divided-difference form only. It
        has no eigh backward (a loss on eigenvectors has no such form).

    Options are the keyword parameters with defaults of these callables (read once, at
    registration): the defaults live in the builder's signature and nowhere else.

    Parameters
    ----------
    name : str
        The name users pass as ``backward=``.
    kept : callable, optional
        ``kept(lam, **options) -> (..., n)`` mask (1 keep, 0 drop) of the eigen-directions
        that carry gradient: their rows and columns of K~ and their dL/dlam are zeroed.
    bound : callable, optional
        ``bound(options) -> float``: the documented bound on |K~| (inf where there is none).
    psd_only : bool
        The remedy is defined for positive semi-definite spectra only (it clamps eigenvalues at a
        floor, or expands in the ratios lam_j / lam_i, or power-iterates). The backward stage then
        applies it to the spectrum shifted up by -lam_min wherever lam_min is clearly negative,
        i.e. to A - lam_min I, which has A's eigenvectors and A's exact K (K_ij = 1/(lam_i - lam_j)
        does not change under a shift): so it stays correct on indefinite matrices, and nothing
        changes on positive semi-definite ones (:func:`svdlib.fused.remedy_spectrum`).
    foldable : bool
        Whether matrix functions may use the folded (divided-difference) form
        F~_ij = K~_ij (f(lam_i) - f(lam_j)), F~_ii = f'(lam_i), one Hadamard product instead of
        the chain of eq. 5-7. Exact arithmetic gives the same gradient either way; in floating
        point the chain forms K~_ij f_i and K~_ij f_j separately and cancels them, which is
        the failure mode the papers measure for plain SVD, so ``exact`` keeps the chain.
    checks : mapping
        Option name -> check (:mod:`svdlib._validation`); an option without one is checked
        against the type of its default.
    renamed : mapping
        Deprecated option name -> current name (accepted with a DeprecationWarning).
    inherits_shift : str, optional
        Name of the option that defaults to the diagonal shift ``eps`` of the public call
        when that shift is > 0 (the papers' one eps, see :mod:`svdlib._options`).
    reference : str
        Where the remedy comes from (paper, section).
    """

    name: str
    k_matrix: Callable[..., torch.Tensor] | None = None
    gradient: Callable[..., torch.Tensor] | None = None
    f_matrix: Callable[..., torch.Tensor] | None = None
    kept: Callable[..., torch.Tensor] | None = None
    bound: Callable[[Mapping[str, Any]], float] | None = None
    psd_only: bool = False
    foldable: bool = True
    checks: Mapping[str, Check] = dataclasses.field(default_factory=dict)
    renamed: Mapping[str, str] = dataclasses.field(default_factory=dict)
    inherits_shift: str | None = None
    reference: str = ""
    defaults: Mapping[str, Any] = dataclasses.field(init=False, repr=False)
    routes: Mapping[str, tuple[str, ...]] = dataclasses.field(init=False, repr=False)
    #: Whether :func:`svdlib.eigh` can use it (a K~ or its own gradient); set from the fields.
    has_eigh_form: bool = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a remedy needs a non-empty name, got {self.name!r}")
        if self.k_matrix is None and self.gradient is None and self.f_matrix is None:
            raise ValueError(f"remedy {self.name!r} needs k_matrix, gradient or f_matrix")
        if self.k_matrix is not None and self.gradient is not None:
            raise ValueError(f"remedy {self.name!r}: give k_matrix or gradient, not both")
        defaults: dict[str, Any] = {}
        routes: dict[str, tuple[str, ...]] = {}
        for role in ("k_matrix", "kept", "gradient", "f_matrix"):
            fn = getattr(self, role)
            if fn is None:
                continue
            # The stage passes current option names only: skip any renamed-keyword wrapper.
            fn = inspect.unwrap(fn)
            object.__setattr__(self, role, fn)
            names = []
            for p in inspect.signature(fn).parameters.values():
                if p.default is inspect.Parameter.empty or p.kind is inspect.Parameter.VAR_KEYWORD:
                    continue
                if p.name in defaults and defaults[p.name] != p.default:
                    raise ValueError(f"remedy {self.name!r}: option {p.name!r} has two defaults "
                                     f"({defaults[p.name]!r} and {p.default!r})")
                defaults[p.name] = p.default
                names.append(p.name)
            routes[role] = tuple(names)
        unknown = sorted(set(self.checks) - set(defaults))
        if unknown:
            raise ValueError(f"remedy {self.name!r}: checks for unknown options {unknown}")
        if self.inherits_shift is not None and self.inherits_shift not in defaults:
            raise ValueError(f"remedy {self.name!r}: inherits_shift names no option: {self.inherits_shift!r}")
        checks = {name: self.checks.get(name) or default_check(value) for name, value in defaults.items()}
        object.__setattr__(self, "checks", checks)
        object.__setattr__(self, "defaults", defaults)
        object.__setattr__(self, "routes", routes)
        object.__setattr__(self, "has_eigh_form", self.k_matrix is not None or self.gradient is not None)

    def __call__(self, lam, U, grad_lam, grad_U, **options) -> torch.Tensor:
        """dL/dA of the eigendecomposition with this remedy (eager), options validated here."""
        spec = _options.backward_spec(self, options, use="eigh")
        return fused.eigen_backward(lam, U, grad_lam, grad_U, spec, compile=False)


def register_backward(remedy: Remedy | str, fn: Callable[..., torch.Tensor] | None = None) -> Remedy:
    """Register a remedy under ``remedy.name`` (replacing one of the same name) and return it.

    ``register_backward(Remedy("mine", k_matrix=k_mine))`` is all a new remedy needs. The older
    form ``register_backward(name, fn)`` with ``fn(lam, U, grad_lam, grad_U, **options)``
    registers ``Remedy(name, gradient=fn)``.
    """
    if isinstance(remedy, str):
        if fn is None:
            raise TypeError("register_backward(name, fn) needs the backward function fn")
        remedy = Remedy(remedy, gradient=fn)
    if not isinstance(remedy, Remedy):
        raise TypeError(f"register_backward expects a svdlib.remedies.Remedy, got {type(remedy).__name__}")
    BACKWARDS[remedy.name] = remedy
    _options.forget_specs()
    return remedy


# ----------------------------------------------------------------------------- helpers
def _pair_sign(lam: torch.Tensor) -> torch.Tensor:
    """S_ij = +1 for i > j, -1 for i < j, 0 on the diagonal (index order = ascending order)."""
    n = lam.shape[-1]
    idx = torch.arange(n, device=lam.device)
    return (idx[:, None] > idx[None, :]).to(lam.dtype) - (idx[:, None] < idx[None, :]).to(lam.dtype)


def _pair_max_gap(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    li, lj = lam[..., :, None], lam[..., None, :]
    return torch.maximum(li, lj), (li - lj).abs()


def _zero_diag(K: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(K.shape[-1], dtype=torch.bool, device=K.device)
    return torch.where(eye, torch.zeros_like(K), K)


def _horner(coeffs: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    out = torch.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        out = out * x + c
    return out


# ----------------------------------------------------------------------------- K matrices
def k_exact(lam: torch.Tensor) -> torch.Tensor:
    """K_ij = 1/(lam_i - lam_j), K_ii = 0 (eq. 7). Inf at ties: the reference, not a remedy."""
    diff = lam[..., :, None] - lam[..., None, :]
    eye = torch.eye(lam.shape[-1], dtype=torch.bool, device=lam.device)
    return torch.where(eye, torch.zeros_like(diff), 1.0 / torch.where(eye, torch.ones_like(diff), diff))


@renamed_keywords(threshold="k_max")
def k_clip(lam: torch.Tensor, k_max: float = 100.0) -> torch.Tensor:
    """SVD-Clip: K with |K_ij| <= ``k_max``, i.e. the eigengap floored at 1/k_max.

    Robust Differentiable SVD sec. 3.5 and Table IV ("SVD-Clip", 100 in the TPAMI code: gap
    0.01).
    """
    _, gap = _pair_max_gap(lam)
    return _zero_diag(_pair_sign(lam) / gap.clamp_min(1.0 / k_max))


@renamed_keywords(eps="floor")
def k_taylor(lam: torch.Tensor, degree: int = 9, floor: float = 1e-10) -> torch.Tensor:
    """Degree-``degree`` Taylor expansion of K (Robust Differentiable SVD sec. 3.2, eq. 9-12).

    For lam_i >= lam_j: 1/(lam_i - lam_j) = (1/lam_i) * 1/(1 - lam_j/lam_i) and 1/(1-x) is
    replaced by 1 + x + ... + x^degree. Eigenvalues are clamped at ``floor`` first (1e-10 and
    degree 9 in the TPAMI code; the ICCV code uses degree 100), so with x in (0, 1],
    |K~_ij| <= (degree + 1)/floor. The series is summed in closed form without cancellation
    (:func:`geometric_series`). Defined for a positive semi-definite spectrum (the record says
    ``psd_only``: the backward stage shifts an indefinite one first).
    """
    lam = lam.clamp_min(floor)
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


@dataclasses.dataclass(frozen=True)
class PadeOrder:
    """The order [p/q] of :func:`k_pade` with its coefficients for 1/(1-x), computed once.

    The option check turns ``order=(p, q)`` into this, so the backward stage evaluates plain
    constants (nothing torch.compile would have to trace through numpy).
    """

    p: int
    q: int
    numerator: tuple[float, ...] = dataclasses.field(repr=False, compare=False)
    denominator: tuple[float, ...] = dataclasses.field(repr=False, compare=False)


@functools.lru_cache(maxsize=16)
def _geometric_pade(p: int, q: int) -> PadeOrder:
    a, b = pade_coefficients(np.ones(p + q + 1), p, q)
    return PadeOrder(p, q, tuple(a.tolist()), tuple(b.tolist()))


def pade_order(order, name: str = "order") -> PadeOrder:
    """``order`` as a :class:`PadeOrder` (two integers p, q >= 0, or a PadeOrder)."""
    if isinstance(order, PadeOrder):
        return order
    p, q = integer_pair(0)(order, name)
    return _geometric_pade(p, q)


@renamed_keywords(eps="floor")
def k_pade(lam: torch.Tensor, order: tuple[int, int] = (50, 50), floor: float = FLOAT64_EPS) -> torch.Tensor:
    """SVD-Padé (ICCV 2021): 1/(1-x) of the Taylor form replaced by its [p/q] Padé approximant.

    Coefficients come from the p+q+1 Taylor coefficients of 1/(1-x) (:func:`pade_coefficients`;
    the ICCV code uses [50/50] built with mpmath). Evaluated in float64. Honest note: for
    q >= 1 the approximant *is* 1/(1-x), so away from ties this remedy equals the exact K,
    and at x = 1 (lam_i == lam_j) Q vanishes up to rounding: Q(1) is then rounding noise of
    either sign, so a tie gives either an enormous value (|K~| ~ 1e16/lam) or a non-positive
    denominator. Following the ICCV overflow patch, non-finite entries and entries whose
    denominator is <= 0 are replaced by the largest remaining |K~| of the batch (with the
    pair's sign). It is therefore *not* bounded at ties: notebook 03 measures this.
    Eigenvalues are clamped at ``floor`` (float64 machine eps, as in the ICCV code). Defined for
    a positive semi-definite spectrum (``psd_only``: the backward stage shifts an indefinite one).
    """
    approximant = pade_order(order)
    a, b = approximant.numerator, approximant.denominator
    lam64 = lam.to(torch.float64).clamp_min(floor)
    li, lj = lam64[..., :, None], lam64[..., None, :]
    big, small = torch.maximum(li, lj), torch.minimum(li, lj)
    x = small / big
    denominator = _horner(b, x)
    sign = _pair_sign(lam64)
    K = _zero_diag(sign * _horner(a, x) / (denominator * big))
    # Q(x) > 0 on [0, 1) in exact arithmetic; Q <= 0 only happens at (near-)ties by rounding.
    finite = torch.isfinite(K) & (denominator > 0)
    extreme = torch.where(finite, K.abs(), torch.zeros_like(K)).amax()
    return torch.where(finite, K, sign * extreme).to(lam.dtype)


def k_truncate(lam: torch.Tensor, k_max: float = 1e10) -> torch.Tensor:
    """The K~ of the kept directions of ``truncate``: exact, |K~| clamped at ``k_max`` (1e10 in
    the ICCV code), so ties among kept directions stay finite."""
    return k_clip(lam, k_max)


def kept_directions(lam: torch.Tensor, cutoff: float | None = 1e-5, top_n: int | None = None) -> torch.Tensor:
    """1 for the eigen-directions ``truncate`` keeps, 0 for those it drops (ICCV 2021).

    Dropped: the (nearly) null directions, |lam| < ``cutoff``, and, when ``top_n`` is given, all
    but the ``top_n`` largest. On a covariance (the papers' input) |lam| < cutoff is lam <
    cutoff, up to the sign of rounding; on an indefinite matrix a clearly negative eigenvalue
    is not null, and its direction keeps its gradient.
    """
    n = lam.shape[-1]
    keep = torch.ones_like(lam, dtype=torch.bool)
    if cutoff is not None:
        keep = keep & (lam.abs() >= cutoff)
    if top_n is not None:
        if not 0 <= top_n <= n:
            raise ValueError(f"top_n must be in [0, {n}], got {top_n}")
        keep = keep & (torch.arange(n, device=lam.device) >= n - top_n)
    return keep.to(lam.dtype)


# ----------------------------------------------------------------------------- power iteration
def power_iteration_gradient(lam, U, grad_lam, grad_U, *, iterations: int = 9, floor: float = 1e-5,
                             null_rtol: float = 1e-5, energy_tol: float | None = 1e-4,
                             rel_tol: float = 0.1, norm_floor: float = 1e-5):
    r"""SVD-PI: SVD forward, gradient of power iterations with deflation (Robust Differentiable
    SVD sec. 3.3-3.4, Alg. 1; Backpropagation-Friendly Eigendecomposition, NeurIPS 2019).

    M = U diag(lam) U^T is rebuilt from the eigenpairs. For each eigenvector u (largest first)
    of the deflated matrix M, ``iterations`` + 1 steps v <- M v / max(||M v||, norm_floor)
    start at u, then M <- M - M v v^T; the gradient is that of this whole computation
    (autograd inside the backward), so for the dominant eigenvector it is

    .. math:: \sum_{k=0}^{n} (M/\|Mv\|)^k (I - v v^T)/\|Mv\| \, g v^T,

    the degree-``iterations`` Taylor gradient (the Proposition of sec. 3.3), and the deflation
    steps carry the coupling to the larger eigenvectors. ``iterations`` = 9 (TPAMI; 19 in
    NeurIPS).

    **Which directions get a gradient.** The published code (NeurIPS 2019, reused by TPAMI)
    walks the eigenvalues e_1 >= e_2 >= ... and stops at the first j with

    * cumsum(e)_j / sum(e) >= 1 - ``energy_tol``: the cumulative energy *including* direction
      j reaches the tolerance, so j itself is dropped. We follow this rule, so the smallest
      direction never gets a gradient (its cumulative energy is the total); an earlier
      version counted only the directions before j and kept one direction more than the
      published method. ``energy_tol=None`` switches the test off.
    * e_j <= eps, with eps the diagonal shift: a direction holding nothing but the shift is
      a null direction of the covariance. Such eigenvalues are eps up to rounding, so the
      published test is decided by rounding. Ours drops j when
      e_j <= ``floor`` + ``null_rtol`` * e_max: the floor is the shift (see
      :mod:`svdlib._options`), and the margin, relative to the largest eigenvalue, is far
      above the eigensolver's rounding, so it decides every null direction the same way.
    * the Rayleigh quotient of the deflated M at u is <= 0, or differs from e_j by more than
      ``rel_tol`` (10%) relative: deflation has accumulated too much rounding.

    Every later direction is dropped too (the published loop breaks). Masks, not Python
    breaks, so it batches; it is not meant for torch.func transforms of the backward.

    Defined for a positive semi-definite spectrum (power iteration converges to the eigenvalue
    of largest modulus); the record says ``psd_only``, so on an indefinite matrix it runs on
    A - lam_min I, whose smallest direction is null there and gets no gradient.
    """
    n = lam.shape[-1]
    U, lam, grad_U, grad_lam = U.detach(), lam.detach(), grad_U.detach(), grad_lam.detach()
    total = lam.clamp_min(0).sum(-1)
    lam_max = lam.abs().amax(-1)

    def objective(A):
        M = A
        captured = torch.zeros_like(total)
        active = torch.ones_like(total, dtype=torch.bool)
        loss = torch.zeros((), dtype=lam.dtype, device=lam.device)
        for i in range(n - 1, -1, -1):
            u, lam_i = U[..., :, i], lam[..., i]
            captured = captured + lam_i.clamp_min(0)
            with torch.no_grad():
                rayleigh = (u * (M.detach() @ u.unsqueeze(-1)).squeeze(-1)).sum(-1)
                if energy_tol is not None:
                    active = active & (captured < (1 - energy_tol) * total)
                active = active & (lam_i > floor + null_rtol * lam_max) & (rayleigh > 0)
                active = active & ((rayleigh - lam_i).abs() <= rel_tol * lam_i.abs())
            v = u
            for _ in range(iterations + 1):
                w = (M @ v.unsqueeze(-1)).squeeze(-1)
                v = w / w.norm(dim=-1, keepdim=True).clamp_min(norm_floor)
            Mv = (M @ v.unsqueeze(-1)).squeeze(-1)
            term = (grad_U[..., :, i] * v).sum(-1) + grad_lam[..., i] * (v * Mv).sum(-1)
            loss = loss + (active.to(lam.dtype) * term).sum()
            M = M - Mv.unsqueeze(-1) * v.unsqueeze(-2)
        return loss

    grad = torch.func.grad(objective)((U * lam.unsqueeze(-2)) @ U.transpose(-1, -2))
    return 0.5 * (grad + grad.transpose(-1, -2))


# ----------------------------------------------------------------------------- the registry
_POSITIVE = real(0.0, exclusive=True)
_NON_NEGATIVE = real(0.0)

exact = register_backward(Remedy(
    "exact", k_matrix=k_exact, bound=lambda o: math.inf, foldable=False,
    reference="orthogonality paper eq. 7: the plain-SVD reference (Inf/NaN at ties)"))
clip = register_backward(Remedy(
    "clip", k_matrix=k_clip, bound=lambda o: o["k_max"],
    checks={"k_max": _POSITIVE}, renamed={"threshold": "k_max"},
    reference="Robust Differentiable SVD sec. 3.5, SVD-Clip"))
taylor = register_backward(Remedy(
    "taylor", k_matrix=k_taylor, bound=lambda o: (o["degree"] + 1) / o["floor"], psd_only=True,
    checks={"degree": integer(0), "floor": _POSITIVE}, renamed={"eps": "floor"}, inherits_shift="floor",
    reference="Robust Differentiable SVD sec. 3.2, SVD-Taylor"))
pade = register_backward(Remedy(
    "pade", k_matrix=k_pade, bound=lambda o: math.inf, psd_only=True,
    checks={"order": pade_order, "floor": _POSITIVE}, renamed={"eps": "floor"}, inherits_shift="floor",
    reference="Why Approximate Matrix Square Root Outperforms Accurate SVD in GCP (ICCV 2021), SVD-Padé"))
power_iteration = register_backward(Remedy(
    "power_iteration", gradient=power_iteration_gradient, psd_only=True,
    checks={"iterations": integer(1), "floor": _NON_NEGATIVE, "null_rtol": _NON_NEGATIVE,
            "energy_tol": optional(real(0.0, maximum=1.0)), "rel_tol": real(0.0, allow_inf=True),
            "norm_floor": _NON_NEGATIVE},
    renamed={"eps": "floor"}, inherits_shift="floor",
    reference="Robust Differentiable SVD sec. 3.3-3.4 (Alg. 1), NeurIPS 2019, SVD-PI"))
truncate = register_backward(Remedy(
    "truncate", k_matrix=k_truncate, kept=kept_directions, bound=lambda o: o["k_max"], foldable=False,
    checks={"k_max": _POSITIVE, "cutoff": optional(real()), "top_n": optional(integer(0))},
    renamed={"threshold": "cutoff", "clamp": "k_max"},
    reference="ICCV 2021 remedies: drop small (or all but the top-N) eigen-directions"))
divided_difference = register_backward(Remedy(
    "divided_difference", f_matrix=divided_difference_matrix,
    reference="Daleckii-Krein divided differences: the exact gradient of a matrix function (svdlib)"))
