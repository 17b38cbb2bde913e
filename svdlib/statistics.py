"""Covariance (eq. 2) and condition number (eq. 1) of the meta-layer's input."""
from __future__ import annotations

import torch

from ._validation import check_real_tensor, check_square, is_traced, raise_non_finite

__all__ = ["covariance", "condition_number"]


def covariance(X: torch.Tensor, *, check_finite: bool = True) -> torch.Tensor:
    r"""Centred covariance P = (1/N) (X - mu)(X - mu)^T of features X (..., d, N) (eq. 2).

    Each of the N columns is one sample of d features; mu is the mean over the N samples.
    Differentiable; the output is exactly symmetric and has X's dtype.

    Raises ValueError when X holds NaN/Inf, and when X is finite but its covariance overflows
    X's dtype (e.g. float32 entries of 1e20: their squares exceed 3.4e38); the message names
    the largest entry and the remedy (scale X, or pass it as float64). The check reads one
    scalar back from the device, on the output, so it covers both cases at once.
    ``check_finite=False`` leaves both checks to the caller (a layer that words its own
    message).

    >>> import torch, svdlib
    >>> svdlib.covariance(torch.tensor([[1.0, -1.0], [2.0, -2.0]]))
    tensor([[1., 2.],
            [2., 4.]])
    """
    check_real_tensor(X, "X", "(..., d, N)")
    if X.shape[-2] < 1 or X.shape[-1] < 1:
        raise ValueError(f"X must have d >= 1 features and N >= 1 samples in its last two dimensions "
                         f"(..., d, N), got shape {tuple(X.shape)}")
    Xc = X - X.mean(dim=-1, keepdim=True)
    P = Xc @ Xc.transpose(-1, -2) / X.shape[-1]
    P = 0.5 * (P + P.transpose(-1, -2))
    if check_finite and not is_traced(P) and not bool(torch.isfinite(P).all()):
        _raise_not_finite(X, P)
    return P


def _raise_not_finite(X: torch.Tensor, P: torch.Tensor) -> None:
    """The error for a covariance that is not finite: NaN/Inf input, or overflow."""
    if not bool(torch.isfinite(X).all()):
        raise_non_finite(X, "X")
    dtype = str(P.dtype).removeprefix("torch.")
    largest = float(X.detach().abs().amax())
    raise ValueError(
        f"the covariance of X (shape {tuple(X.shape)}, largest |entry| {largest:.3g}) overflowed "
        f"{dtype}, which holds up to {torch.finfo(P.dtype).max:.3g}; X is finite, its products are "
        "not: scale X down or pass it as torch.float64"
    )


@torch.no_grad()
def condition_number(A: torch.Tensor) -> torch.Tensor:
    r"""kappa = lam_max / lam_min of symmetric matrices (..., n, n) (eq. 1), no gradient.

    Computed in float64 from the eigenvalues; ``inf`` where lam_min <= 0 (singular or
    indefinite input). Returns a float64 tensor of shape (...).
    """
    check_square(A, "A")
    A64 = A.detach().to(torch.float64)
    lam = torch.linalg.eigvalsh(0.5 * (A64 + A64.transpose(-1, -2)))
    lo, hi = lam[..., 0], lam[..., -1]
    return torch.where(lo > 0, hi / lo.clamp_min(torch.finfo(torch.float64).tiny), torch.full_like(lo, float("inf")))
