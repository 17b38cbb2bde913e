"""GPU paths: cuSOLVER's batched solver against torch, float64 (skipped without CUDA)."""
from __future__ import annotations

import pytest
import torch

import svdlib
from svdlib import _cusolver, solvers

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
batched = pytest.mark.skipif(not _cusolver.is_available(), reason="needs CUDA and nvmath-python")


@cuda
@batched
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [4, 33, 128])
def test_cusolver_batched_matches_torch(dtype, n):
    X = torch.randn(16, n, 2 * n, device="cuda", dtype=torch.float64)
    A = svdlib.covariance(X).to(dtype)
    lam, U = svdlib.eigh(A, solver="cusolver_batched")
    lam_ref = torch.linalg.eigvalsh(A.double())
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(lam.double(), lam_ref, rtol=tol, atol=tol * lam_ref.abs().max().item())
    recon = (U * lam.unsqueeze(-2)) @ U.transpose(-1, -2)
    torch.testing.assert_close(recon.double(), A.double(), rtol=tol * 10, atol=tol * 10 * A.abs().max().item())


@cuda
def test_auto_solver_on_cuda_is_batched_or_warns_once():
    name = solvers.resolve_solver("auto", torch.device("cuda"))
    assert name == ("cusolver_batched" if _cusolver.is_available() else "torch")


@cuda
@pytest.mark.parametrize("backward", ["taylor", "divided_difference", "pade"])
def test_sqrtm_gradients_on_cuda_match_cpu(backward):
    X = torch.randn(8, 16, 40, dtype=torch.float64)
    A = svdlib.covariance(X)
    G = torch.randn(8, 16, 16, dtype=torch.float64)
    grads = []
    for device in ("cpu", "cuda"):
        a = A.to(device).requires_grad_()
        (svdlib.sqrtm(a, backward=backward) * G.to(device)).sum().backward()
        grads.append(a.grad.cpu())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-8, atol=1e-10)
