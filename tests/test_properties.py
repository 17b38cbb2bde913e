"""Property-based tests of the spine's promises (README, "Guarantees"), with hypothesis.

Shapes (n = 1..6, a batch of 1 or 2), dtypes (float32, float64), spectra (separated, exactly
repeated, near ties at 1e-7, zeros, the zero matrix, a dynamic range of 1e-12..1e6, each also
with negative eigenvalues), scales 1e-3..1e3 and every remedy. Every call either returns the
right result, checked against float64 on the same (rounded) matrix, or raises a ValueError
that says why. Only basis-free quantities are compared: eigenvalues, reconstructions, matrix
function values, gradients of losses that do not depend on the eigenbasis.

Derandomized with a fixed example count, so every run (CI included) checks the same examples;
no example database is written (hypothesis is in the ``test`` extra). About 15 s on one core.
"""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import svdlib
from svdlib._validation import rounding_rtol

SETTINGS = settings(max_examples=400, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
KINDS = ("separated", "repeated", "near_tie", "zeros", "zero_matrix", "huge_range")
EIGH_REMEDIES = ("exact", "clip", "taylor", "pade", "power_iteration", "truncate")
SELECTING = ("power_iteration", "truncate")  # drop directions by design: checked by invariants
#: Eigenvalue error of the solver relative to max|lam|, per n eps: measured <= 1.6 on these
#: examples (and <= 2.1 on covariances, svdlib._validation.ROUNDING_FACTOR); allowed: 16.
SLACK = 16


def _spectrum(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "separated":
        lam = np.cumsum(rng.uniform(0.2, 1.0, n))
    elif kind == "repeated":
        lam = rng.choice([0.5, 1.0, 2.0], n)
    elif kind == "near_tie":
        lam = 1.0 + 1e-7 * rng.standard_normal(n)
        lam[0] = 0.3
    elif kind == "zeros":
        lam = np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0.1, 1.0, n))
    elif kind == "zero_matrix":
        lam = np.zeros(n)
    else:  # huge_range
        lam = 10.0 ** rng.uniform(-12, 6, n)
    return lam / max(1.0, np.abs(lam).max()) if kind == "huge_range" else lam


@st.composite
def matrices(draw):
    """(A in its dtype, the same matrix in float64, kind) with A = Q diag(lam) Q^T."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    n = draw(st.integers(1, 6))
    batch = draw(st.integers(1, 2))
    kind = draw(st.sampled_from(KINDS))
    signed = draw(st.booleans())
    scale = 10.0 ** draw(st.integers(-3, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**20)))
    lam = np.stack([_spectrum(kind, n, rng) for _ in range(batch)]) * scale
    if kind == "huge_range":
        lam = lam * 1e6
    if signed:
        lam = lam - (lam.max(-1, keepdims=True) + lam.min(-1, keepdims=True)) * rng.uniform(0.3, 0.7)
    Q, _ = np.linalg.qr(rng.standard_normal((batch, n, n)))
    A = torch.from_numpy((Q * lam[:, None, :]) @ Q.transpose(0, 2, 1))
    A = (0.5 * (A + A.transpose(-1, -2))).to(dtype)
    return A, A.double(), kind


def _eps(dtype):
    return torch.finfo(dtype).eps


# ----------------------------------------------------------------------------- eigh
@SETTINGS
@given(matrices(), st.sampled_from(EIGH_REMEDIES))
def test_eigh_is_right_on_any_symmetric_matrix(case, backward):
    """Eigenvalues and reconstruction match float64; the gradient of a spectral loss
    sum_i s g(lam_i / s) (basis-free, differentiable everywhere) is U diag(g') U^T, or for a
    remedy that drops directions it still commutes with A and is bounded by max |g'|; the
    gradient of tr(W A / s) through the eigenvectors is finite for every remedy but ``exact``
    at ties (the plain-SVD reference, documented Inf/NaN there)."""
    A, A64, kind = case
    n, eps = A.shape[-1], _eps(A.dtype)
    lam64, U64 = torch.linalg.eigh(A64)
    s = lam64.abs().amax(-1, keepdim=True)
    tol = SLACK * n * eps * s
    s = torch.where(s > 0, s, 1.0)  # the loss's scale

    X = A.clone().requires_grad_()
    lam, U = svdlib.eigh(X, backward=backward)
    assert ((lam.double() - lam64).abs() <= tol).all()
    rebuilt = (U * lam.unsqueeze(-2)) @ U.transpose(-1, -2)
    assert ((rebuilt.double() - A64).abs().amax(-1) <= tol).all()

    (s.to(A.dtype) * torch.sin(lam / s.to(A.dtype))).sum().backward()
    G = X.grad.double()
    if backward == "exact" and kind != "separated":
        return  # K = 1/0 at a tie times a zero dL/dU: NaN, the documented plain-SVD behaviour
    assert torch.isfinite(G).all()
    if backward in SELECTING:
        # dL/dA = sum over kept directions of g'(lam_i) u_i u_i^T: commutes with A, |.| <= 1;
        # commutator measured <= 0.1 x 16 n eps max|lam| (also perturbed); bound 16 n eps max|lam|
        assert ((G @ A64 - A64 @ G).abs().amax((-1, -2)) <= tol[..., 0]).all()
        assert (torch.linalg.matrix_norm(G, 2) <= 1 + 1e-3).all()
    else:
        truth = (U64 * torch.cos(lam64 / s).unsqueeze(-2)) @ U64.transpose(-1, -2)
        # measured <= 1.5 n eps (also perturbed); bound 16 n eps
        assert ((G - truth).abs() <= SLACK * n * eps).all()

    X = A.clone().requires_grad_()
    W = torch.randn(n, n, generator=torch.Generator().manual_seed(n), dtype=A.dtype)
    lam, U = svdlib.eigh(X, backward=backward)
    ((W @ U * U).sum(-2) * lam / s.to(A.dtype)).sum().backward()
    assert torch.isfinite(X.grad).all()


# ----------------------------------------------------------------------------- matrix functions
def _expected_outcome(lam64, p, eps_shift, dtype):
    """'zero' or 'psd' (an error the call must raise), None (it must succeed) or 'either' (the
    smallest eigenvalue is within rounding of the tolerance)."""
    n = lam64.shape[-1]
    lam = lam64 + eps_shift
    if float(p).is_integer() and p > 0:
        return None
    scale = lam.abs().amax(-1)
    if p < 0 and (scale < torch.finfo(dtype).tiny).any():
        return "zero"
    margin = -rounding_rtol(n, dtype) * scale
    low = lam.amin(-1)
    band = 4 * n * _eps(dtype) * scale
    if (low < margin - band).any():
        return "psd"
    if ((low - margin).abs() <= band).any() and (scale > 0).any():
        return "either"
    return None


def _reference_power(lam64, U64, p, dtype):
    """U f(max(lam, floor)) U^T in float64 with svdlib's documented floor (eps of the dtype times
    max|lam|, at least the smallest normal number); 0 for a matrix without scale when p > 0."""
    finfo = torch.finfo(dtype)
    scale = lam64.abs().amax(-1, keepdim=True)
    if not (float(p).is_integer() and p > 0):
        lam64 = torch.maximum(lam64, (finfo.eps * scale).clamp_min(finfo.tiny))
    Q = (U64 * lam64.pow(p).unsqueeze(-2)) @ U64.transpose(-1, -2)
    if p > 0 and not float(p).is_integer():
        Q = Q * (scale >= finfo.tiny).unsqueeze(-1)
    return Q, lam64


def _divided_differences(lam, p):
    """(lam_i^p - lam_j^p)/(lam_i - lam_j) in float64, written independently of svdlib: the
    quotient itself where the gap is >= 1e-3 of the mean m (its rounding <= eps m / gap), else
    the midpoint series p m^(p-1) (1 + (p-1)(p-2)/24 (gap/m)^2) (truncation <= (gap/m)^4)."""
    li, lj = lam.unsqueeze(-1), lam.unsqueeze(-2)
    m, d = 0.5 * (li + lj), li - lj
    close = d.abs() < 1e-3 * m.abs()
    series = p * m.pow(p - 1) * (1 + (p - 1) * (p - 2) / 24 * (d / torch.where(close, m, 1.0)) ** 2)
    close_or_equal = close | (d == 0)
    quotient = (li.pow(p) - lj.pow(p)) / torch.where(close_or_equal, 1.0, d)
    return torch.where(close_or_equal, torch.where(d == 0, p * li.pow(p - 1), series), quotient)


@SETTINGS
@given(matrices(), st.sampled_from((0.5, -0.5, 1.5, 2.0)),
       st.sampled_from(EIGH_REMEDIES + ("divided_difference",)), st.sampled_from((0.0, 1e-3)))
def test_matrix_powers_are_right_or_refuse_clearly(case, p, backward, shift):
    """A^p either raises (negative eigenvalues beyond rounding for a non-integer or negative p;
    the zero matrix for p < 0) or returns the float64 A^p of the documented floor, with a finite
    gradient (``exact`` aside at ties); ``divided_difference``, the exact gradient, matches the
    float64 Daleckii-Krein gradient wherever the matrix is well conditioned for its dtype."""
    A, A64, kind = case
    event(f"{kind}, signed: {bool((torch.linalg.eigvalsh(A64) < 0).any())}")
    n, eps = A.shape[-1], _eps(A.dtype)
    shift = shift * float(A64.abs().max().clamp_min(1e-3))
    lam64, U64 = torch.linalg.eigh(A64)
    outcome = _expected_outcome(lam64, p, shift, A.dtype)
    X = A.clone().requires_grad_()
    try:
        Q = svdlib.powm(X, p, backward=backward, eps=shift)
    except ValueError as exc:
        event(f"powm refused ({outcome})")
        message = {"psd": "positive semi-definite", "zero": "zero matrix"}
        assert outcome in ("psd", "zero", "either"), f"unexpected error: {exc}"
        assert any(m in str(exc) for m in message.values()), str(exc)
        return
    assert outcome in (None, "either"), f"expected a {outcome!r} error"
    lam64 = lam64 + shift
    scale = lam64.abs().amax(-1)
    ref, floored = _reference_power(lam64, U64, p, A.dtype)
    err = (Q.double() - ref).abs().amax((-1, -2))
    delta = SLACK * n * eps * scale                   # eigenvalue error of the solver
    kappa = scale / floored.abs().amin(-1).clamp_min(1e-300)
    if p == 0.5:
        bound = 4 * n * delta.sqrt()                  # |sqrt(a) - sqrt(b)| <= sqrt|a - b|
    elif p == -0.5:
        bound = 4 * n * delta / floored.abs().amin(-1).pow(1.5)
    else:
        bound = 4 * n * abs(p) * delta * scale.pow(p - 1)
    # first-order perturbation bounds (the Hoelder bound for the square root): measured at most
    # 1e-2 of them (p = -0.5, 1.5, 2) and 1e-4 (p = 0.5, whose bound is for zero eigenvalues)
    informative = (bound < 0.1 * ref.abs().amax((-1, -2))) | (ref.abs().amax((-1, -2)) == 0)
    event(f"powm value compared: {bool(informative.all())}")
    assert (err[informative] <= bound[informative] + 1e-300).all()

    G = torch.randn(A.shape, generator=torch.Generator().manual_seed(n), dtype=A.dtype)
    (Q * G).sum().backward()
    if backward != "exact" or kind == "separated":
        assert torch.isfinite(X.grad).all()
    if backward == "divided_difference":
        G64 = 0.5 * (G.double() + G.double().transpose(-1, -2))
        truth = U64 @ (_divided_differences(floored, p) * (U64.transpose(-1, -2) @ G64 @ U64)) @ U64.transpose(-1, -2)
        if p > 0 and not float(p).is_integer():  # the zero matrix: gradient 0 by definition
            truth = truth * (scale >= torch.finfo(A.dtype).tiny)[..., None, None]
        well = kappa * n * eps < 1e-4
        event(f"Daleckii-Krein gradient compared: {bool(well.any())}")
        rel = (X.grad.double() - truth).norm(dim=(-1, -2)) / truth.norm(dim=(-1, -2)).clamp_min(1e-300)
        # measured <= 2.0 kappa n eps (also perturbed); bound 20 kappa n eps
        assert (rel[well] <= 20 * kappa[well] * n * eps).all()


# ----------------------------------------------------------------------------- Newton-Schulz
@SETTINGS
@given(matrices(), st.sampled_from((0.5, -0.5)))
def test_newton_schulz_is_finite_or_refuses_clearly(case, p):
    """Newton-Schulz never returns NaN/Inf: a positive semi-definite matrix with a positive trace
    gives a finite (possibly damped) root and gradient; otherwise it raises a ValueError naming
    the trace, the zero matrix or the divergence."""
    A, A64, kind = case
    lowest = torch.linalg.eigvalsh(A64).amin()
    X = A.clone().requires_grad_()
    try:
        Q = svdlib.powm(X, p, method="newton_schulz")
    except ValueError as exc:
        event("Newton-Schulz refused")
        assert any(m in str(exc) for m in ("trace", "zero matrix", "diverged")), str(exc)
        assert lowest < 0 or (A64.abs().amax((-1, -2)) == 0).any(), str(exc)
        return
    Q.sum().backward()
    assert torch.isfinite(Q).all()
    if lowest >= -rounding_rtol(A.shape[-1], A.dtype) * A64.abs().max():
        assert torch.isfinite(X.grad).all()
