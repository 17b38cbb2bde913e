r"""Exact, bounded gradients of spectral matrix functions (Daleckii-Krein).

For Q = U f(Lambda) U^T the eigenvector path (eq. 5, with K) and the eigenvalue path (eq. 6)
combine exactly into

.. math:: \frac{\partial L}{\partial A} = U\,\big(F \circ (U^T \bar G U)\big)\,U^T,\qquad
          \bar G = \tfrac12\big(\tfrac{\partial L}{\partial Q} + \tfrac{\partial L}{\partial Q}^T\big),

with the first divided differences F_ij = (f(lam_i) - f(lam_j))/(lam_i - lam_j) and
F_ii = f'(lam_i). For f = lam^p these are bounded once eigenvalues are floored: no
approximation (unlike the Taylor / Padé / clip remedies) and no explosion at ties, because
1/(lam_i - lam_j) never appears on its own. This is svdlib's own addition to the papers.
"""
from __future__ import annotations

import torch

from .remedies import geometric_series

__all__ = ["divided_difference_matrix", "spectral_backward"]


def divided_difference_matrix(lam: torch.Tensor, p: float) -> torch.Tensor:
    """F_ij = (lam_i^p - lam_j^p)/(lam_i - lam_j), F_ii = p lam_i^(p-1), for lam > 0.

    Closed forms stay accurate as lam_i -> lam_j:
    p = 1/2: 1/(sqrt(lam_i) + sqrt(lam_j));  p = -1/2: -1/(s_i s_j (s_i + s_j)), s = sqrt(lam);
    general p: with M = max, x = min/max, F = M^(p-1) (1 - x^p)/(1 - x), where
    (1 - x^p)/(1 - x) = expm1(p log x)/expm1(log x) and log x = log1p(-(M - min)/M), so no
    difference of nearly equal numbers is ever formed.
    """
    li, lj = lam[..., :, None], lam[..., None, :]
    if p == 1:
        return torch.ones_like(li * lj)
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


def spectral_backward(U: torch.Tensor, F: torch.Tensor, grad_Q: torch.Tensor) -> torch.Tensor:
    """dL/dA = U (F o (U^T sym(dL/dQ) U)) U^T (Daleckii-Krein); symmetric by construction."""
    G = 0.5 * (grad_Q + grad_Q.transpose(-1, -2))
    Ut = U.transpose(-1, -2)
    return U @ (F * (Ut @ G @ U)) @ Ut
