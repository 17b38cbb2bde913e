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

__all__ = ["divided_difference_matrix", "geometric_series"]


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
    li, lj = lam[..., :, None], lam[..., None, :]
    if float(p).is_integer() and p >= 1:
        return sum(li.pow(k) * lj.pow(int(p) - 1 - k) for k in range(int(p))) + torch.zeros_like(li * lj)
    if p == 0.5:
        s = lam.sqrt()
        return 1.0 / (s[..., :, None] + s[..., None, :])
    if p == -0.5:
        s = lam.sqrt()
        si, sj = s[..., :, None], s[..., None, :]
        return -1.0 / (si * sj * (si + sj))
    big = torch.maximum(li, lj)
    gap = (li - lj).abs()
    log_ratio = torch.log1p(-gap / big)
    return big.pow(p - 1) * geometric_series(log_ratio, p)


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
