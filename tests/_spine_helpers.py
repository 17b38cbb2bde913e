"""Shared fixtures for the spine tests: spectra built by hand, reference gradients."""
from __future__ import annotations

import torch


def matrix_with_spectrum(lam, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Q diag(lam) Q^T with a random orthogonal Q (QR of a Gaussian), batched over lam's leading dims."""
    lam = torch.as_tensor(lam, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    n = lam.shape[-1]
    Q, _ = torch.linalg.qr(torch.randn(*lam.shape[:-1], n, n, generator=g, dtype=dtype))
    A = (Q * lam.unsqueeze(-2)) @ Q.transpose(-1, -2)
    return 0.5 * (A + A.transpose(-1, -2))


def sign_invariant_loss(lam: torch.Tensor, U: torch.Tensor, W: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """sum_i c_i u_i^T W u_i + sum_i c_i^2 lam_i: independent of eigenvector signs."""
    quad = ((W @ U) * U).sum(-2)
    return (c * quad).sum() + (c**2 * lam).sum()


def _cuda_param():
    import pytest

    return pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device")])


#: Devices a layer test runs on: CPU always, CUDA when present (skipped cleanly otherwise).
DEVICES = ["cpu", _cuda_param()]
