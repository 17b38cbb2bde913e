r"""Exact, bounded gradients of spectral matrix functions (Daleckii-Krein).

For Q = U f(Lambda) U^T the eigenvector path (eq. 5, with K) and the eigenvalue path (eq. 6)
combine exactly into

.. math:: \frac{\partial L}{\partial A} = U\,\big(F \circ (U^T \bar G U)\big)\,U^T,\qquad
          \bar G = \tfrac12\big(\tfrac{\partial L}{\partial Q} + \tfrac{\partial L}{\partial Q}^T\big),

with the first divided differences F_ij = (f(lam_i) - f(lam_j))/(lam_i - lam_j) and
F_ii = f'(lam_i). For f = lam^p these are bounded once eigenvalues are floored: no
approximation (unlike the Taylor / Padé / clip remedies) and no explosion at ties, because
1/(lam_i - lam_j) never appears on its own. This is svdlib's own addition to the papers.

This module only builds F (and the cancellation-free geometric sum both it and the Taylor
remedy use); the product U (F o U^T sym(G) U) U^T is the backward stage's
(:func:`svdlib.fused.apply_spectral_weights`, docs/architecture.md).
"""
from __future__ import annotations

import warnings

import torch

__all__ = [
    "divided_difference_matrix",
    "divided_difference",
    "second_divided_difference",
    "second_divided_difference_tensor",
    "second_order_product",
    "geometric_series",
]


def geometric_series(log_ratio: torch.Tensor, terms: int | float | torch.Tensor) -> torch.Tensor:
    """sum_{k=0}^{terms-1} r^k with r = exp(log_ratio), computed without cancellation.

    Uses expm1(terms * log r) / expm1(log r), whose limit as r -> 1 is ``terms``; valid for
    non-integer ``terms`` too (then it is (r^terms - 1)/(r - 1)), which the divided
    differences of matrix powers use.
    """
    den = torch.expm1(log_ratio)
    num = torch.expm1(terms * log_ratio)
    safe = torch.where(den == 0, torch.ones_like(den), den)
    limit = torch.as_tensor(terms, dtype=log_ratio.dtype, device=log_ratio.device)
    return torch.where(den == 0, limit.expand_as(den), num / safe)


def divided_difference_matrix(lam: torch.Tensor, p: float) -> torch.Tensor:
    """F_ij = (lam_i^p - lam_j^p)/(lam_i - lam_j), F_ii = p lam_i^(p-1), for lam > 0 (any real
    lam when p is a positive integer).

    Closed forms stay accurate as lam_i -> lam_j:
    p = 1/2: 1/(sqrt(lam_i) + sqrt(lam_j));  p = -1/2: -1/(s_i s_j (s_i + s_j)), s = sqrt(lam);
    positive integer p: sum_{k<p} lam_i^k lam_j^(p-1-k) (a polynomial: no division, any sign);
    general p: with M = max, x = min/max, F = M^(p-1) (1 - x^p)/(1 - x), where
    (1 - x^p)/(1 - x) = expm1(p log x)/expm1(log x) and log x = log1p(-(M - min)/M), so no
    difference of nearly equal numbers is ever formed.
    """
    return divided_difference(lam[..., :, None], lam[..., None, :], p)


def divided_difference(a: torch.Tensor, b: torch.Tensor, p: float) -> torch.Tensor:
    """f[a, b] = (a^p - b^p)/(a - b) (f'(a) where a == b) of f = x^p, element-wise with
    broadcasting, for a, b > 0 (any real a, b when p is a positive integer): the closed forms of
    :func:`divided_difference_matrix`."""
    if float(p).is_integer() and p >= 1:
        return sum(a.pow(k) * b.pow(int(p) - 1 - k) for k in range(int(p))) + torch.zeros_like(a * b)
    if p == 0.5:
        return 1.0 / (a.sqrt() + b.sqrt())
    if p == -0.5:
        sa, sb = a.sqrt(), b.sqrt()
        return -1.0 / (sa * sb * (sa + sb))
    big = torch.maximum(a, b)
    gap = (a - b).abs()
    log_ratio = torch.log1p(-gap / big)
    return big.pow(p - 1) * geometric_series(log_ratio, p)


# Second divided differences, general p: below this relative spread (max - min)/max of the
# three points the Taylor series about their mean is summed (SERIES_TERMS terms), above it the
# recursion (f[hi, mid] - f[mid, lo])/(hi - lo) of accurate first differences, whose rounding
# is amplified at most ~4/(spread |p - 1|) = 64/|p - 1| times.
SERIES_SPREAD = 1.0 / 16
SERIES_TERMS = 20


def _is_positive_integer(p: float) -> bool:
    return float(p).is_integer() and p >= 1


def _homogeneous(a, b, c, degree: int):
    """h_degree(a, b, c) = sum of a^i b^j c^k over i + j + k = degree (a sum of monomials)."""
    out = torch.zeros_like(a * b * c)
    for i in range(degree + 1):
        for j in range(degree + 1 - i):
            out = out + a.pow(i) * b.pow(j) * c.pow(degree - i - j)
    return out


def _taylor_second(a, b, c, p: float):
    """f[a, b, c] = mu^(p-2) sum_{n>=2} binom(p, n) h_{n-2}(e), e = (x - mu)/mu, mu the mean.

    The divided difference of (x - mu)^n over three points is the complete homogeneous
    polynomial h_{n-2} of their offsets; with the offsets summing to zero,
    h_k = -s2 h_{k-2} + s3 h_{k-3} (s2, s3 elementary symmetric), so no term cancels.
    """
    mu = (a + b + c) / 3
    ea, eb, ec = (a - mu) / mu, (b - mu) / mu, (c - mu) / mu
    s1 = ea + eb + ec  # rounding-level; kept so the recursion is exact for the computed e
    s2 = ea * eb + eb * ec + ea * ec
    s3 = ea * eb * ec
    h = [torch.ones_like(mu), s1]
    binom = p * (p - 1) / 2
    total = binom * h[0]
    for n in range(3, SERIES_TERMS + 2):
        k = n - 2
        if k >= 2:
            h.append(s1 * h[k - 1] - s2 * h[k - 2] + (s3 * h[k - 3] if k >= 3 else 0))
        binom = binom * (p - n + 1) / n
        total = total + binom * h[k]
    return mu.pow(p - 2) * total


def second_divided_difference(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, p: float) -> torch.Tensor:
    """f[a, b, c] of f = x^p (f''(a)/2 where all three coincide), element-wise, a, b, c > 0.

    The weights of the second Fréchet derivative (second-order Daleckii-Krein). Closed forms,
    with s = sqrt(x):

    - p = 1/2: -1/((s_a + s_b)(s_b + s_c)(s_a + s_c));
    - p = -1/2: (s_a + s_b + s_c)/(s_a s_b s_c (s_a + s_b)(s_b + s_c)(s_a + s_c));
    - p a positive integer: the complete homogeneous polynomial h_{p-2}(a, b, c) (0 for p = 1);

    none of which subtracts. General p: the Taylor series about the mean when the points lie
    within a relative spread :data:`SERIES_SPREAD`, the recursion on accurate first
    differences otherwise (relative error ~1e-13 in float64 for |p - 1| >= 1/2; the
    second difference of a nearly linear power, |p - 1| small, is itself small and carries
    an absolute error ~eps |f'|).
    """
    if p == 0 or p == 1:
        return torch.zeros_like(a * b * c)
    if p == 0.5 or p == -0.5:
        sa, sb, sc = a.sqrt(), b.sqrt(), c.sqrt()
        pairs = (sa + sb) * (sb + sc) * (sa + sc)
        return -1.0 / pairs if p == 0.5 else (sa + sb + sc) / (sa * sb * sc * pairs)
    if _is_positive_integer(p):
        return _homogeneous(a, b, c, int(p) - 2)
    hi = torch.maximum(torch.maximum(a, b), c)
    lo = torch.minimum(torch.minimum(a, b), c)
    mid = torch.maximum(torch.minimum(a, b), torch.minimum(torch.maximum(a, b), c))
    near = (hi - lo) < SERIES_SPREAD * hi
    width = torch.where(near, torch.ones_like(hi), hi - lo)
    direct = (divided_difference(hi, mid, p) - divided_difference(mid, lo, p)) / width
    return torch.where(near, _taylor_second(a, b, c, p), direct)


def second_divided_difference_tensor(lam: torch.Tensor, p: float) -> torch.Tensor:
    """T_ikj = f[lam_i, lam_k, lam_j] (..., n, n, n) of f = x^p."""
    return second_divided_difference(lam[..., :, None, None], lam[..., None, :, None], lam[..., None, None, :], p)


# Elements of the (..., n, chunk, n) slices of T built at a time for general p.
_CHUNK_ELEMENTS = 1 << 22


def second_order_product(lam: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, p: float) -> torch.Tensor:
    r"""Z_ij = sum_k f[lam_i, lam_k, lam_j] (X_ik Y_kj + Y_ik X_kj) for symmetric X, Y, f = x^p.

    In the eigenbasis of A this is the second Fréchet derivative (second-order Daleckii-Krein):
    :math:`D^2 f(A)[E_1, E_2] = U Z(U^T E_1 U, U^T E_2 U) U^T`. Where f[., ., .] separates into
    pairwise factors it costs a few batched products and O(n^2) memory:

    - p = 1/2, F_ij = 1/(s_i + s_j): Z = -F o (P + P^T), P = (F o X)(F o Y);
    - p = -1/2, with r = 1/s and X~ = F o X, Y~ = F o Y:
      Z = F o (T + T^T), T = (X~ R Y~) R + R (X~ Y~) R + R (X~ R Y~), R = diag(r);
    - p a positive integer: Z = sum_b h_{p-2-b}(lam_i, lam_j) o (P_b + P_b^T), P_b = X diag(lam^b) Y.

    Other p contract the tensor T of :func:`second_divided_difference_tensor` in slices
    (O(n^3) work and element-wise evaluations, at most ~4M elements held at a time).
    """
    if p == 0 or p == 1:
        return torch.zeros_like(X)
    li, lj = lam[..., :, None], lam[..., None, :]
    if p == 0.5:
        F = 1.0 / (lam.sqrt()[..., :, None] + lam.sqrt()[..., None, :])
        P = (F * X) @ (F * Y)
        return -F * (P + P.transpose(-1, -2))
    if p == -0.5:
        s = lam.sqrt()
        r = 1.0 / s
        F = 1.0 / (s[..., :, None] + s[..., None, :])
        Xf, Yf = F * X, F * Y
        Q = (Xf * r[..., None, :]) @ Yf
        T = Q * r[..., None, :] + r[..., :, None] * (Xf @ Yf) * r[..., None, :] + r[..., :, None] * Q
        return F * (T + T.transpose(-1, -2))
    if _is_positive_integer(p):
        Z = torch.zeros_like(X)
        for b in range(int(p) - 1):
            P = (X * lam.pow(b)[..., None, :]) @ Y
            Z = Z + _pair_homogeneous(li, lj, int(p) - 2 - b) * (P + P.transpose(-1, -2))
        return Z
    n = lam.shape[-1]
    batch = max(1, lam[..., 0].numel())
    chunk = max(1, min(n, _CHUNK_ELEMENTS // (batch * n * n)))
    Z = torch.zeros_like(X)
    for start in range(0, n, chunk):
        k = slice(start, min(n, start + chunk))
        T = second_divided_difference(lam[..., :, None, None], lam[..., None, k, None], lam[..., None, None, :], p)
        Z = Z + torch.einsum("...ikj,...ik,...kj->...ij", T, X[..., :, k], Y[..., k, :]) \
              + torch.einsum("...ikj,...ik,...kj->...ij", T, Y[..., :, k], X[..., k, :])
    return Z


def _pair_homogeneous(a, b, degree: int):
    """h_degree(a, b) = sum_i a^i b^(degree - i)."""
    out = torch.zeros_like(a * b)
    for i in range(degree + 1):
        out = out + a.pow(i) * b.pow(degree - i)
    return out


def __getattr__(name: str):
    if name == "spectral_backward":
        warnings.warn(
            "svdlib.divided_difference.spectral_backward is deprecated and will be removed; use "
            "svdlib.fused.apply_spectral_weights(U, F, grad_Q) (the same product, one place)",
            DeprecationWarning, stacklevel=2)
        from .fused import apply_spectral_weights

        def spectral_backward(U, F, grad_Q):
            return apply_spectral_weights(U, F, grad_Q)

        return spectral_backward
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
