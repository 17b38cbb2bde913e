"""Newton-Schulz (coupled) iteration for the matrix square root, iSQRT-COV style.

Li et al., "Towards Faster Training of Global Covariance Pooling Networks by Iterative
Matrix Square Root Normalization" (CVPR 2018), as used by the ICCV21 paper: trace
pre-normalisation Y0 = A / tr(A), Z0 = I; T = (3I - Z Y)/2, Y <- Y T, Z <- T Z;
post-compensation sqrt(A) ~ sqrt(tr A) Y, A^{-1/2} ~ Z / sqrt(tr A). Only matrix products,
so it is fast on GPUs and differentiated by autograd. It converges when the spectrum of
A / tr(A) lies in (0, 1]; with few iterations (5 by default) and ill-conditioned or
rank-deficient input it returns a damped root, not the exact one (measured in notebook 03).
"""
from __future__ import annotations

import torch

__all__ = ["newton_schulz_sqrtm"]


def newton_schulz_sqrtm(A: torch.Tensor, iterations: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (approximate sqrt(A), approximate A^{-1/2}) after ``iterations`` coupled steps.

    ``A`` (..., n, n) must be symmetric positive semi-definite with positive trace; it is
    not validated here (the public :func:`svdlib.sqrtm` does that).
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    n = A.shape[-1]
    eye = torch.eye(n, dtype=A.dtype, device=A.device).expand_as(A)
    trace = torch.diagonal(A, dim1=-2, dim2=-1).sum(-1)[..., None, None]
    trace = trace.clamp_min(torch.finfo(A.dtype).tiny)
    Y = A / trace
    Z = eye
    for _ in range(iterations):
        T = 0.5 * (3.0 * eye - Z @ Y)
        Y, Z = Y @ T, T @ Z
    root = trace.sqrt()
    return Y * root, Z / root
