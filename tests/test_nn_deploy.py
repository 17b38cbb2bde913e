"""svdlib.nn.onnx_ready and the accuracy of its Newton-Schulz square root (issue 16)."""
from __future__ import annotations

import math

import numpy as np

import pytest
import torch
from torch import nn

import svdlib
from svdlib.nn import CovariancePooling, DecorrelatedBatchNorm2d, newton_schulz_sup_error, onnx_ready
from svdlib.analysis import newton_schulz_scalar_response
from svdlib.nn.deploy import ONNX_NEWTON_SCHULZ_ITERATIONS

from _spine_helpers import matrix_with_spectrum

F64 = torch.float64


def _relative(Q: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    return (Q.double() - R).norm(dim=(-2, -1)) / R.norm(dim=(-2, -1))


def test_sup_error_shrinks_by_two_thirds_per_iteration():
    """Far from convergence a small eigenvalue ratio a grows by 3/2 per step (t ~ 3/2), so the
    worst a moves down by 9/4 and the worst error sqrt(a) - y_K by 2/3 per iteration."""
    E = {K: newton_schulz_sup_error(K) for K in (10, 15, 20, 21, 30)}
    # the numbers the docs quote; measured 6.205e-4 and 8.171e-5 (a float64 evaluation on a
    # fixed grid: rounding moves it by ~1e-15, so the 1.5% interval is not a bet on rounding)
    assert 6.1e-4 < E[15] < 6.3e-4 and 8.1e-5 < E[20] < 8.3e-5
    assert 0.64 < E[21] / E[20] < 0.69
    assert abs(E[30] / E[20] - (2 / 3) ** 10) / (2 / 3) ** 10 < 0.1


@pytest.mark.parametrize("K", [8, 15])
def test_newton_schulz_error_is_within_sqrt_d_times_the_sup_error(K):
    """Relative Frobenius error of the float64 iteration <= sqrt(d) E_K (exact-arithmetic
    bound), on spectra that put every eigenvalue ratio at the worst a, and on random ones."""
    d = 12
    a_grid = np.logspace(-14, 0, 20001)
    worst = float(a_grid[np.argmax(np.sqrt(a_grid) * np.abs(1 - newton_schulz_scalar_response(a_grid, K)))])
    adversarial = torch.full((d,), worst, dtype=F64)
    adversarial[-1] = 1.0 - (d - 1) * worst           # ratios sum to 1 (the trace)
    g = torch.Generator().manual_seed(K)
    random = torch.exp(torch.empty(3, d, dtype=F64).uniform_(-16, 0, generator=g))
    bound = math.sqrt(d) * newton_schulz_sup_error(K)
    for lam in (adversarial.unsqueeze(0), random):
        A = matrix_with_spectrum(lam * 7.0, seed=K)
        err = _relative(svdlib.sqrtm(A, method="newton_schulz", iterations=K), svdlib.sqrtm(A))
        assert (err <= bound * 1.001).all(), (err.max(), bound)
    # the adversarial spectrum comes close to the per-eigenvalue worst case
    A = matrix_with_spectrum(adversarial.unsqueeze(0), seed=1)
    err = _relative(svdlib.sqrtm(A, method="newton_schulz", iterations=K), svdlib.sqrtm(A))
    assert err.item() > 0.5 * math.sqrt(d - 1) * newton_schulz_sup_error(K)


@pytest.mark.parametrize("d,N", [(16, 9), (64, 49), (32, 1024)])
def test_fifteen_iterations_on_float32_covariances(d, N):
    """The measured accuracy onnx_ready relies on: float32 covariances of ReLU features,
    singular (N <= d) or not, against the float64 root of the float64 covariance."""
    g = torch.Generator().manual_seed(d + N)
    X = torch.relu(torch.randn(4, d, N, generator=g) @ torch.randn(N, N, generator=g) / N ** 0.5
                   + 0.3 * torch.randn(4, d, 1, generator=g))
    exact = svdlib.sqrtm(svdlib.covariance(X.double()), backward="divided_difference")
    P = svdlib.covariance(X)
    err = _relative(svdlib.sqrtm(P, method="newton_schulz", iterations=ONNX_NEWTON_SCHULZ_ITERATIONS), exact)
    assert err.max() < 2e-4, err.max()                # measured 4.8e-7 to 1.1e-5; bound 2e-4
    # float32 eigh is no closer: its eigenvalue floor costs 5e-4 to 7e-4 on the singular ones
    err_eigh = _relative(svdlib.sqrtm(P), exact)
    assert err.max() < 10 * err_eigh.max() + 1e-5


def test_onnx_ready_switches_only_eigh_pooling_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = nn.Sequential(
        DecorrelatedBatchNorm2d(8, group_size=4),
        CovariancePooling(8, reduced_dim=None, eps=1e-4, covariance_dtype=F64),
        nn.Linear(36, 2),
    )
    trained_ns = CovariancePooling(8, reduced_dim=None, method="newton_schulz", iterations=5)
    model.append(nn.Identity())
    ready = onnx_ready(nn.ModuleList([model, trained_ns]))
    pool, kept = ready[0][1], ready[1]
    assert model.training and model[1].method == "eigh" and "iterations" not in model[1].options
    assert not ready.training and not any(m.training for m in ready.modules())
    assert pool.method == "newton_schulz"
    assert pool.options == {"eps": 1e-4, "iterations": ONNX_NEWTON_SCHULZ_ITERATIONS}
    assert pool.covariance_dtype == F64
    assert kept.options == {"iterations": 5}           # trained with 5: exported with 5
    assert onnx_ready(model, iterations=30)[1].options["iterations"] == 30
    with pytest.raises(ValueError, match="iterations must be an integer >= 1, got 0"):
        onnx_ready(model, iterations=0)


def test_more_iterations_ruin_singular_float32_covariances():
    """Why onnx_ready stops at 15: rounding leaves eigenvalues of about -1e-7 lam_max in a
    singular float32 covariance; the iteration multiplies them by 9/4 per step, so 40 steps
    (2.25^25 ~ 6e8 times more than 15) turn them into garbage, or overflow, which
    newton_schulz_sqrtm reports as divergence (issue 17), on any machine."""
    g = torch.Generator().manual_seed(3)
    X = torch.relu(torch.randn(2, 32, 16, generator=g))          # rank <= 15 < 32
    P = svdlib.covariance(X)
    exact = svdlib.sqrtm(svdlib.covariance(X.double()), backward="divided_difference")
    good = _relative(svdlib.sqrtm(P, method="newton_schulz", iterations=15), exact).max()
    assert good < 2e-4, good
    try:
        bad = _relative(svdlib.sqrtm(P, method="newton_schulz", iterations=40), exact).max()
    except ValueError as error:                                   # overflow: reported, not returned
        assert "diverged" in str(error)
    else:
        assert not bad < 100 * good, (good, bad)
