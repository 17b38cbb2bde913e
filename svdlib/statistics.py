"""Covariance (eq. 2) and condition number (eq. 1) of the meta-layer's input."""
from __future__ import annotations

import torch

from ._validation import check_finite

__all__ = ["covariance", "condition_number"]


def covariance(X: torch.Tensor) -> torch.Tensor:
    r"""Centred covariance P = (1/N) (X - mu)(X - mu)^T of features X (..., d, N) (eq. 2).

    Each of the N columns is one sample of d features; mu is the mean over the N samples.
    Differentiable; the output is exactly symmetric.

    >>> import torch, svdlib
    >>> svdlib.covariance(torch.tensor([[1.0, -1.0], [2.0, -2.0]]))
    tensor([[1., 2.],
            [2., 4.]])
    """
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"X must be a torch.Tensor, got {type(X).__name__}")
    if X.dim() < 2:
        raise ValueError(f"X must have shape (..., d, N) with at least 2 dimensions, got {tuple(X.shape)}")
    if not X.is_floating_point():
        raise ValueError(f"X must be floating point, got {X.dtype} with shape {tuple(X.shape)}")
    if X.shape[-1] < 1:
        raise ValueError(f"X needs at least one sample (N >= 1) in its last dimension, got {tuple(X.shape)}")
    check_finite(X, "X")
    Xc = X - X.mean(dim=-1, keepdim=True)
    P = Xc @ Xc.transpose(-1, -2) / X.shape[-1]
    return 0.5 * (P + P.transpose(-1, -2))


@torch.no_grad()
def condition_number(A: torch.Tensor) -> torch.Tensor:
    r"""kappa = lam_max / lam_min of symmetric matrices (..., n, n) (eq. 1), no gradient.

    Computed in float64 from the eigenvalues; ``inf`` where lam_min <= 0 (singular or
    indefinite input). Returns a float64 tensor of shape (...).
    """
    from ._validation import check_square

    check_square(A, "A")
    A64 = A.detach().to(torch.float64)
    lam = torch.linalg.eigvalsh(0.5 * (A64 + A64.transpose(-1, -2)))
    lo, hi = lam[..., 0], lam[..., -1]
    return torch.where(lo > 0, hi / lo.clamp_min(torch.finfo(torch.float64).tiny), torch.full_like(lo, float("inf")))
