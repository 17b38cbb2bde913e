r"""Measurements that compare the backward remedies of :data:`svdlib.BACKWARDS` (notebook 03).

Every function here measures something about the spine against a reference that does not
use svdlib's backward code:

- :func:`sylvester_sqrt_gradient`: for Q = A^{1/2}, differentiating Q Q = A gives
  Q dQ + dQ Q = dA, so the gradient X of L = <G, Q> solves the Sylvester equation
  Q X + X Q = sym(G) (scipy's Schur-based ``sqrtm`` and ``solve_sylvester``). For
  S = A^{-1/2} = Q^{-1}, dS = -S dQ S, so X solves Q X + X Q = sym(-S G S).
- :func:`exact_sqrt_gradient`: autograd through ``torch.linalg.eigh`` (ATen's own analytic
  backward, K_ij = 1/(lam_i - lam_j) of eq. 5-7 of the orthogonality paper), float64.
- :func:`remedy_gradient_errors`: the gradient of every remedy against one of these.
- :func:`effective_k` / :func:`k_versus_gap` / :func:`k_matrix_bound_table`: the matrix K~ a
  remedy actually applies, read off its backward by probing (Robust Differentiable SVD
  sec. 3.2 for Taylor, ICCV 2021 for Padé and truncation, TPAMI sec. 3.5 for clipping).
- :func:`pade_coefficients_mpmath` / :func:`pade_common_factor`: the ICCV 2021 Padé
  construction and the fact that, for the geometric series, Q(x) = (1 - x) P(x).
- :func:`newton_schulz_scalar_response` / :func:`newton_schulz_relative_error` /
  :func:`newton_schulz_error_vs_condition`: accuracy of the iSQRT-COV iteration.
- :func:`median_time` / :func:`remedy_costs`: CPU cost of forward + backward, as ratios.

All measurements run in float64 unless stated.
"""
from __future__ import annotations

import dataclasses
import gc
import math
import time
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from . import _options, remedies
from ._registry import DEFAULT_BACKWARD
from .matfuncs import powm
from .newton_schulz import newton_schulz_sqrtm
from .statistics import covariance

__all__ = [
    "Variant",
    "DEFAULT_VARIANTS",
    "K_VARIANTS",
    "GradientErrors",
    "matrices_with_spectrum",
    "rank_deficient_covariances",
    "sylvester_sqrt_gradient",
    "exact_sqrt_gradient",
    "matfunc_gradient",
    "remedy_gradient_errors",
    "effective_k",
    "k_bound",
    "k_versus_gap",
    "k_matrix_bound_table",
    "pade_coefficients_mpmath",
    "pade_common_factor",
    "newton_schulz_scalar_response",
    "newton_schulz_relative_error",
    "newton_schulz_error_vs_condition",
    "median_time",
    "median_times",
    "remedy_costs",
]

_POWERS = {"sqrtm": 0.5, "inv_sqrtm": -0.5}


# ----------------------------------------------------------------------------- variants
@dataclasses.dataclass(frozen=True)
class Variant:
    """One way to compute a matrix function and its gradient.

    ``method`` is "eigh" (then ``backward`` names a remedy of :data:`svdlib.BACKWARDS` and
    ``options`` its keyword options) or "newton_schulz" (backward by autograd; ``backward``
    and ``options`` unused).
    """

    method: str = "eigh"
    backward: str = DEFAULT_BACKWARD
    options: tuple[tuple[str, object], ...] = ()

    def kwargs(self) -> dict:
        return dict(self.options)


#: Every remedy of svdlib.BACKWARDS with its documented defaults, Taylor at the TPAMI degree
#: (9) and the ICCV degree (100), and the Newton-Schulz iteration (5 steps) for comparison.
DEFAULT_VARIANTS: dict[str, Variant] = {
    "exact": Variant("eigh", "exact"),
    "clip": Variant("eigh", "clip"),
    "taylor(9)": Variant("eigh", "taylor", (("degree", 9),)),
    "taylor(100)": Variant("eigh", "taylor", (("degree", 100),)),
    "pade": Variant("eigh", "pade"),
    "power_iteration": Variant("eigh", "power_iteration"),
    "truncate": Variant("eigh", "truncate"),
    "divided_difference": Variant("eigh", "divided_difference"),
    "newton_schulz": Variant("newton_schulz", "taylor"),
}

#: The remedies whose backward is U (K~^T o U^T dL/dU + diag dL/dlam) U^T (their record has a
#: ``k_matrix``): label -> (backward name, options). power_iteration and divided_difference are
#: not of this form.
K_VARIANTS: dict[str, tuple[str, dict]] = {
    "exact": ("exact", {}),
    "clip": ("clip", {}),
    "taylor(9)": ("taylor", {"degree": 9}),
    "taylor(100)": ("taylor", {"degree": 100}),
    "pade": ("pade", {}),
    "truncate": ("truncate", {}),
}


def _resolve_variants(variants) -> dict[str, Variant]:
    if variants is None:
        return dict(DEFAULT_VARIANTS)
    if isinstance(variants, Mapping):
        out = dict(variants)
    else:
        out = {}
        for label in variants:
            if label not in DEFAULT_VARIANTS:
                raise ValueError(f"variants: unknown label {label!r}; expected one of {list(DEFAULT_VARIANTS)}")
            out[label] = DEFAULT_VARIANTS[label]
    for label, v in out.items():
        if not isinstance(v, Variant):
            raise TypeError(f"variants[{label!r}] must be an svdlib.analysis.Variant, got {type(v).__name__}")
        if v.method not in ("eigh", "newton_schulz"):
            raise ValueError(f"variants[{label!r}].method must be 'eigh' or 'newton_schulz', got {v.method!r}")
        if v.method == "eigh" and v.backward not in remedies.BACKWARDS:
            raise ValueError(
                f"variants[{label!r}].backward must be one of {sorted(remedies.BACKWARDS)}, got {v.backward!r}"
            )
    return out


def _check_function(function: str) -> float:
    if function not in _POWERS:
        raise ValueError(f"function must be one of {sorted(_POWERS)}, got {function!r}")
    return _POWERS[function]


def _check_pair(A: torch.Tensor, G: torch.Tensor) -> None:
    if not isinstance(A, torch.Tensor) or A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must be a tensor of shape (..., n, n), got {getattr(A, 'shape', type(A).__name__)}")
    if not isinstance(G, torch.Tensor) or G.shape != A.shape:
        raise ValueError(f"G must have the shape of A {tuple(A.shape)}, got {getattr(G, 'shape', type(G).__name__)}")


# ----------------------------------------------------------------------------- test matrices
def matrices_with_spectrum(lam, batch: int = 1, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """(batch, n, n) matrices R diag(lam) R^T with independent Haar-random orthogonal R.

    R is the Q factor of a Gaussian matrix with the signs of diag(R) fixed (Haar measure).
    """
    lam = torch.as_tensor(lam, dtype=dtype)
    if lam.dim() != 1:
        raise ValueError(f"lam must be a 1-D tensor of eigenvalues, got shape {tuple(lam.shape)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    g = torch.Generator().manual_seed(seed)
    n = lam.shape[0]
    Q, Rf = torch.linalg.qr(torch.randn(batch, n, n, generator=g, dtype=dtype))
    Q = Q * torch.sign(torch.diagonal(Rf, dim1=-2, dim2=-1)).unsqueeze(-2)
    A = (Q * lam) @ Q.transpose(-1, -2)
    return 0.5 * (A + A.transpose(-1, -2))


def rank_deficient_covariances(d: int, n_samples: int, batch: int = 1, eps: float = 0.0, seed: int = 0,
                               dtype=torch.float64) -> torch.Tensor:
    """Covariances (eq. 2) of ``n_samples`` < d Gaussian samples, plus ``eps`` I.

    Centring leaves rank n_samples - 1, so d - n_samples + 1 eigenvalues equal ``eps`` up to
    rounding: the setting of issue 10 (GCP: d = 256 from N = 196 positions).
    """
    if d < 1 or n_samples < 2:
        raise ValueError(f"need d >= 1 and n_samples >= 2, got d={d}, n_samples={n_samples}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(batch, d, n_samples, generator=g, dtype=dtype)
    return covariance(X) + eps * torch.eye(d, dtype=dtype)


# ----------------------------------------------------------------------------- references
def _sylvester_one(A: np.ndarray, G: np.ndarray, p: float) -> np.ndarray:
    import scipy.linalg

    Q = scipy.linalg.sqrtm(A)
    Q = np.real(Q)
    Q = 0.5 * (Q + Q.T)
    Gs = 0.5 * (G + G.T)
    if p == -0.5:
        S = np.linalg.inv(Q)
        Gs = -S @ Gs @ S
    X = scipy.linalg.solve_sylvester(Q, Q, Gs)
    return 0.5 * (X + X.T)


def sylvester_sqrt_gradient(A: torch.Tensor, G: torch.Tensor, function: str = "sqrtm") -> torch.Tensor:
    r"""dL/dA of L = <G, f(A)> for f = sqrtm (or inv_sqrtm), by a Sylvester equation (scipy).

    With Q = A^{1/2}: Q dQ + dQ Q = dA, so the gradient X solves

    .. math:: Q X + X Q = \mathrm{sym}(G)        \quad (f = \text{sqrtm}),
    .. math:: Q X + X Q = -\mathrm{sym}(Q^{-1} G Q^{-1})  \quad (f = \text{inv\_sqrtm}).

    Independent of svdlib (Schur-based ``scipy.linalg.sqrtm`` and ``solve_sylvester``) and
    of eigenvector conditioning, so it stays accurate at repeated eigenvalues. Needs A
    positive definite (a singular Q makes the equation singular). Batched by a loop; float64.
    """
    _check_pair(A, G)
    p = _check_function(function)
    A64 = A.detach().to(torch.float64).cpu().numpy().reshape(-1, *A.shape[-2:])
    G64 = G.detach().to(torch.float64).cpu().numpy().reshape(-1, *A.shape[-2:])
    out = np.stack([_sylvester_one(a, g, p) for a, g in zip(A64, G64)])
    return torch.from_numpy(out.reshape(A.shape))


def exact_sqrt_gradient(A: torch.Tensor, G: torch.Tensor, function: str = "sqrtm") -> torch.Tensor:
    """dL/dA of L = <G, f(A)> by autograd through ``torch.linalg.eigh`` (ATen), float64.

    This is the exact eigen-backward K_ij = 1/(lam_i - lam_j) (orthogonality paper eq. 5-7)
    implemented outside svdlib: accurate on separated spectra, non-finite at exact ties.
    """
    _check_pair(A, G)
    p = _check_function(function)
    a = A.detach().to(torch.float64).clone().requires_grad_(True)
    lam, U = torch.linalg.eigh(0.5 * (a + a.transpose(-1, -2)))
    Q = (U * lam.pow(p).unsqueeze(-2)) @ U.transpose(-1, -2)
    (Q * G.detach().to(torch.float64)).sum().backward()
    g = a.grad
    return 0.5 * (g + g.transpose(-1, -2))


def _apply(a: torch.Tensor, variant: Variant, p: float) -> torch.Tensor:
    if variant.method == "newton_schulz":
        return powm(a, p, method="newton_schulz", **variant.kwargs())
    return powm(a, p, method="eigh", backward=variant.backward, **variant.kwargs())


def matfunc_gradient(A: torch.Tensor, G: torch.Tensor, variant: Variant = DEFAULT_VARIANTS["divided_difference"],
                     function: str = "sqrtm") -> torch.Tensor:
    """dL/dA of L = <G, f(A)> computed by svdlib with one :class:`Variant` (f = sqrtm / inv_sqrtm)."""
    _check_pair(A, G)
    p = _check_function(function)
    variant = _resolve_variants({"v": variant})["v"]
    a = A.detach().clone().requires_grad_(True)
    Q = _apply(a, variant, p)
    (Q * G.detach().to(Q.dtype)).sum().backward()
    return a.grad


@dataclasses.dataclass(frozen=True)
class GradientErrors:
    """Per-matrix comparison of one variant's gradient g with a reference r (Frobenius).

    rel_error = ||g - r|| / ||r||; norm_ratio = ||g|| / ||r|| (1: the gradient's energy is
    kept, < 1: part of it is dropped); cosine = <g, r> / (||g|| ||r||); max_abs = max |g|.
    Non-finite gradients give rel_error = inf and NaN ratios.
    """

    label: str
    rel_error: np.ndarray
    norm_ratio: np.ndarray
    cosine: np.ndarray
    max_abs: np.ndarray
    finite: np.ndarray

    def summary(self) -> dict:
        """Medians over the matrices (worst case for ``finite``)."""
        return {
            "label": self.label,
            "rel_error": float(np.median(self.rel_error)),
            "norm_ratio": float(np.median(self.norm_ratio)),
            "cosine": float(np.median(self.cosine)),
            "max_abs": float(np.max(self.max_abs)),
            "finite": bool(np.all(self.finite)),
        }


def _compare(label: str, g: torch.Tensor, ref: torch.Tensor) -> GradientErrors:
    n = g.shape[-1]
    g = g.detach().to(torch.float64).reshape(-1, n, n)
    ref = ref.detach().to(torch.float64).reshape(-1, n, n)
    finite = torch.isfinite(g).flatten(1).all(-1)
    ref_norm = torch.linalg.matrix_norm(ref)
    g_norm = torch.linalg.matrix_norm(g)
    rel = torch.linalg.matrix_norm(g - ref) / ref_norm
    cos = (g * ref).sum((-1, -2)) / (g_norm * ref_norm)
    nan = torch.full_like(rel, float("nan"))
    return GradientErrors(
        label=label,
        rel_error=torch.where(finite, rel, torch.full_like(rel, float("inf"))).numpy(),
        norm_ratio=torch.where(finite, g_norm / ref_norm, nan).numpy(),
        cosine=torch.where(finite, cos, nan).numpy(),
        max_abs=torch.where(finite, g.abs().flatten(1).amax(-1), torch.full_like(rel, float("inf"))).numpy(),
        finite=finite.numpy(),
    )


def remedy_gradient_errors(A: torch.Tensor, G: torch.Tensor, variants=None, reference: str = "sylvester",
                           function: str = "sqrtm") -> dict[str, GradientErrors]:
    """Gradient of L = <G, f(A)> from every variant, compared with a reference.

    Parameters
    ----------
    A : Tensor (..., n, n)
        Symmetric positive (semi-)definite matrices, float64 recommended.
    G : Tensor (..., n, n)
        dL/df(A); only its symmetric part matters.
    variants : Mapping[str, Variant] | Iterable[str] | None
        What to compare; labels of :data:`DEFAULT_VARIANTS` or your own Variants.
        Default: all of :data:`DEFAULT_VARIANTS`.
    reference : "sylvester" | "exact"
        :func:`sylvester_sqrt_gradient` (valid at ties, needs A > 0) or
        :func:`exact_sqrt_gradient` (the eigen-backward outside svdlib).
    function : "sqrtm" | "inv_sqrtm"

    Returns
    -------
    dict label -> :class:`GradientErrors` (per matrix of the batch).
    """
    _check_pair(A, G)
    _check_function(function)
    refs = {"sylvester": sylvester_sqrt_gradient, "exact": exact_sqrt_gradient}
    if reference not in refs:
        raise ValueError(f"reference must be one of {sorted(refs)}, got {reference!r}")
    variants = _resolve_variants(variants)
    ref = refs[reference](A, G, function)
    return {label: _compare(label, matfunc_gradient(A, G, v, function), ref) for label, v in variants.items()}


# ----------------------------------------------------------------------------- K matrices
def effective_k(lam: torch.Tensor, backward: str, **options) -> torch.Tensor:
    """The K~ a remedy applies, read off its backward (U = I, dL/dlam = 0).

    With U = I and dL/dU = L (ones strictly below the diagonal), a backward of the form
    sym(U (K~^T o U^T dL/dU) U^T) returns dA_ij = K~_ji / 2 for i > j; probing with the
    transpose gives the other triangle. Valid for the K-form remedies (a record with a
    ``k_matrix``; not power_iteration, not divided_difference). A non-finite K~ entry (exact K
    at a tie) makes the whole probe NaN (0 * inf in the backward's matrix products), as it would
    a gradient.
    """
    if backward not in remedies.BACKWARDS or remedies.BACKWARDS[backward].k_matrix is None:
        raise ValueError(
            f"backward must be a K-form remedy {_k_form_names()}, got {backward!r}"
        )
    lam = torch.as_tensor(lam)
    if not lam.is_floating_point():
        lam = lam.to(torch.float64)
    n = lam.shape[-1]
    eye = torch.eye(n, dtype=lam.dtype).expand(*lam.shape[:-1], n, n)
    lower = torch.ones(n, n, dtype=lam.dtype).tril(-1).expand_as(eye)
    zeros = torch.zeros_like(lam)
    fn = remedies.BACKWARDS[backward]
    d_low = fn(lam, eye, zeros, lower, **options)  # dA_ij = K_ji/2, i > j: K's upper triangle
    d_up = fn(lam, eye, zeros, lower.transpose(-1, -2), **options)  # K's lower triangle
    K_upper = 2 * d_low.tril(-1).transpose(-1, -2)
    K_lower = 2 * d_up.triu(1).transpose(-1, -2)
    return K_upper + K_lower


def _k_form_names() -> list[str]:
    return sorted(name for name, r in remedies.BACKWARDS.items() if r.k_matrix is not None)


def k_bound(backward: str, **options) -> float:
    """The documented bound on |K~| of a K-form remedy (inf where there is none), from its
    record (:attr:`svdlib.remedies.Remedy.bound`) with the options resolved as a call would.

    taylor: (degree + 1)/floor (Robust Differentiable SVD sec. 3.2); clip and truncate:
    k_max; exact and pade: unbounded at ties.
    """
    remedy = remedies.BACKWARDS.get(backward)
    if remedy is None or remedy.k_matrix is None or remedy.bound is None:
        raise ValueError(f"backward must be a K-form remedy {_k_form_names()}, got {backward!r}")
    spec = _options.backward_spec(backward, options)
    return float(remedy.bound(spec.as_dict()))


def k_versus_gap(one_minus_x: Sequence[float], variants: Mapping[str, tuple[str, dict]] | None = None,
                 lam_max: float = 1.0, context: Sequence[float] = ()) -> dict[str, np.ndarray]:
    """|K~| of the pair lam_j = x lam_max, lam_i = lam_max as x -> 1, for each remedy.

    ``context`` adds further eigenvalues to the same matrix (they matter for the Padé
    overflow patch, which takes the batch's largest |K~|). Returns label -> array over
    ``one_minus_x`` (NaN where K~ is not finite). float64.
    """
    variants = K_VARIANTS if variants is None else variants
    out = {label: [] for label in variants}
    for omx in one_minus_x:
        if not 0.0 <= omx <= 1.0:
            raise ValueError(f"one_minus_x entries must lie in [0, 1], got {omx}")
        x = 1.0 - float(omx)
        lam = torch.tensor(sorted([x * lam_max, lam_max, *context]), dtype=torch.float64)
        # position of the pair in ascending order: the largest index holding lam_max and the one holding x*lam_max
        i = int(torch.nonzero(lam == lam_max).max())
        j = int(torch.nonzero(lam == x * lam_max).min()) if x < 1 else i - 1
        for label, (backward, options) in variants.items():
            out[label].append(effective_k(lam, backward, **options)[i, j].abs().item())
    return {label: np.array(v) for label, v in out.items()}


def k_matrix_bound_table(spectra: Mapping[str, torch.Tensor], variants: Mapping[str, tuple[str, dict]] | None = None
                         ) -> list[dict]:
    """max |K~| of each K-form remedy on each spectrum, against its documented bound.

    Rows: {"spectrum", "remedy", "max_abs_k", "finite", "bound", "within_bound"}; max_abs_k
    is over finite entries, ``finite`` says whether every entry was finite.
    """
    variants = K_VARIANTS if variants is None else variants
    rows = []
    for name, lam in spectra.items():
        lam = torch.as_tensor(lam, dtype=torch.float64)
        for label, (backward, options) in variants.items():
            K = effective_k(lam, backward, **options)
            finite = bool(torch.isfinite(K).all())
            max_abs = float(torch.where(torch.isfinite(K), K.abs(), torch.zeros_like(K)).max())
            bound = k_bound(backward, **options)
            rows.append({
                "spectrum": name, "remedy": label, "max_abs_k": max_abs, "finite": finite,
                "bound": bound, "within_bound": finite and max_abs <= bound * (1 + 1e-12),
            })
    return rows


# ----------------------------------------------------------------------------- Padé
def pade_coefficients_mpmath(p: int = 50, q: int = 50, dps: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """[p/q] Padé coefficients of 1/(1-x) built as the ICCV 2021 code describes: Taylor
    coefficients from ``mpmath.taylor`` at ``dps`` digits, then ``mpmath.pade``.

    The system for the geometric series has rank one. With exactly-one coefficients
    ``mpmath.pade`` raises ZeroDivisionError ("numerically singular"), and so does this
    function at low orders (p = q <= 20 at 20 digits), where ``mpmath.taylor`` returns
    exact ones; from p = q = 25 its numerical differentiation leaves deviations of ~1e-21,
    and the LU then "solves" the system: the [50/50] coefficients are fixed by that noise.
    Any solution still has Q(1) = 0 and P/Q = 1/(1-x) (:func:`pade_common_factor`). Needs
    mpmath (a dependency of sympy, which torch installs).
    """
    try:
        import mpmath
    except ImportError as exc:  # pragma: no cover - mpmath ships with torch's sympy
        raise ImportError("pade_coefficients_mpmath needs mpmath: pip install mpmath") from exc
    with mpmath.workdps(dps):
        coeffs = mpmath.taylor(lambda x: 1 / (1 - x), 0, p + q)
        a, b = mpmath.pade(coeffs, p, q)
    return np.array([float(v) for v in a]), np.array([float(v) for v in b])


def pade_common_factor(a: Sequence[float], b: Sequence[float]) -> float:
    """max |coefficients of (1 - x) P(x) - Q(x)|: zero when P/Q == 1/(1-x) exactly.

    For the geometric series the Padé conditions force Q(1) = 0 and P = Q/(1 - x), so the
    approximant is 1/(1-x) itself (with a removable common factor P) whatever solution of
    the rank-one system was chosen.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    lhs = np.convolve(a, [1.0, -1.0])
    n = max(lhs.size, b.size)
    return float(np.abs(np.pad(lhs, (0, n - lhs.size)) - np.pad(b, (0, n - b.size))).max())


# ----------------------------------------------------------------------------- Newton-Schulz
def newton_schulz_scalar_response(t, iterations: int = 5) -> np.ndarray:
    """y_k(t)/sqrt(t) of the scalar coupled Newton-Schulz recurrence (iSQRT-COV).

    y_0 = t, z_0 = 1, T = (3 - z y)/2, y <- y T, z <- T z. Every iterate of the matrix
    iteration on A/tr(A) is a polynomial in A, so on the eigenvector basis it acts eigenvalue
    by eigenvalue: the Newton-Schulz root of A has eigenvalues sqrt(tr A) y_k(lam_i / tr A).
    A ratio below 1 is a damped root. Computed here independently of svdlib, in float64.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    t = np.asarray(t, dtype=np.float64)
    if np.any(t <= 0) or np.any(t > 1):
        raise ValueError("t must lie in (0, 1] (eigenvalues of A / tr(A))")
    y, z = t.copy(), np.ones_like(t)
    for _ in range(iterations):
        T = 0.5 * (3.0 - z * y)
        y, z = y * T, T * z
    return y / np.sqrt(t)


def newton_schulz_relative_error(A: torch.Tensor, iterations: int = 5) -> np.ndarray:
    """||NS_k(A) - A^{1/2}||_F / ||A^{1/2}||_F per matrix; the exact root from float64 eigh."""
    if not isinstance(A, torch.Tensor) or A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must be a tensor of shape (..., n, n), got {getattr(A, 'shape', type(A).__name__)}")
    A = A.detach().to(torch.float64)
    lam, U = torch.linalg.eigh(A)
    exact = (U * lam.clamp_min(0).sqrt().unsqueeze(-2)) @ U.transpose(-1, -2)
    root, _ = newton_schulz_sqrtm(A, iterations)
    err = torch.linalg.matrix_norm(root - exact) / torch.linalg.matrix_norm(exact)
    return err.reshape(-1).numpy()


def newton_schulz_error_vs_condition(kappas: Sequence[float], n: int = 32, iterations: int = 5, batch: int = 4,
                                     seed: int = 0) -> np.ndarray:
    """Median relative error of the k-iteration Newton-Schulz root on matrices of condition
    number kappa (eigenvalues log-spaced in [1/kappa, 1], random eigenvectors). Shape (len(kappas),)."""
    out = []
    for kappa in kappas:
        if kappa < 1:
            raise ValueError(f"kappas must be >= 1, got {kappa}")
        lam = torch.logspace(-math.log10(kappa), 0.0, n, dtype=torch.float64)
        A = matrices_with_spectrum(lam, batch=batch, seed=seed)
        out.append(float(np.median(newton_schulz_relative_error(A, iterations))))
    return np.array(out)


# ----------------------------------------------------------------------------- cost
_CLOCKS = {"process": time.process_time, "wall": time.perf_counter}


def median_times(fns: Mapping[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                 threads: int | None = 1, clock: str = "process") -> dict[str, float]:
    """Median seconds of each ``fn()`` over ``repeats`` calls after ``warmup`` calls.

    ``clock="process"`` (default) measures the CPU time of this process
    (``time.process_time``): time spent descheduled while other jobs use the cores does not
    count, so ratios stay meaningful on a shared machine; ``"wall"`` measures wall-clock
    time. Each function is warmed up and timed in its own block, so a heavy predecessor's
    allocator state is absorbed by the warm-up; like ``timeit``, the garbage collector is
    disabled during the timed calls. ``threads`` fixes torch's intra-op threads during the
    measurement (restored afterwards); None leaves it alone.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if clock not in _CLOCKS:
        raise ValueError(f"clock must be one of {sorted(_CLOCKS)}, got {clock!r}")
    now = _CLOCKS[clock]
    old = torch.get_num_threads()
    gc_was_enabled = gc.isenabled()
    if threads is not None:
        torch.set_num_threads(threads)
    out = {}
    try:
        for label, fn in fns.items():
            for _ in range(warmup):
                fn()
            gc.collect()
            gc.disable()
            times = []
            for _ in range(repeats):
                start = now()
                fn()
                times.append(now() - start)
            if gc_was_enabled:
                gc.enable()
            out[label] = float(np.median(times))
    finally:
        torch.set_num_threads(old)
        if gc_was_enabled:
            gc.enable()
    return out


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, threads: int | None = 1,
                clock: str = "process") -> float:
    """Median seconds of ``fn()`` (see :func:`median_times`)."""
    return median_times({"fn": fn}, repeats, warmup, threads, clock)["fn"]


def remedy_costs(sizes: Iterable[int] = (32, 64), variants=None, batch: int = 8, repeats: int = 5,
                 eps: float = 1e-3, seed: int = 0, baseline: str = "newton_schulz", function: str = "sqrtm",
                 dtype=torch.float64, threads: int | None = 1, clock: str = "process") -> list[dict]:
    """Median CPU time of forward + backward of f(A) (L = <G, f(A)>) per variant and size.

    Timed by :func:`median_times` (process CPU time by default, one intra-op thread).

    A is a batch of full-rank covariances (2n samples) + eps I. Rows: {"size", "label",
    "seconds", "ratio"} with ratio = seconds / seconds of ``baseline`` at the same size.
    """
    variants = _resolve_variants(variants)
    if baseline not in variants:
        raise ValueError(f"baseline {baseline!r} must be one of the variants {list(variants)}")
    p = _check_function(function)
    rows = []
    for n in sizes:
        g = torch.Generator().manual_seed(seed)
        X = torch.randn(batch, n, 2 * n, generator=g, dtype=dtype)
        A = covariance(X) + eps * torch.eye(n, dtype=dtype)
        G = torch.randn(batch, n, n, generator=g, dtype=dtype)

        def step(v):
            (_apply(A.clone().requires_grad_(True), v, p) * G).sum().backward()

        fns = {label: (lambda v=v: step(v)) for label, v in variants.items()}
        seconds = median_times(fns, repeats=repeats, warmup=1, threads=threads, clock=clock)
        for label, s in seconds.items():
            rows.append({"size": n, "label": label, "seconds": s, "ratio": s / seconds[baseline]})
    return rows
