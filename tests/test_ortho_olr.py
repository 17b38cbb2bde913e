"""OLR: optimal_learning_rate (Song et al., ECCV 2022, eq. 18-21, app. A.2, Proposition 1)."""
import numpy as np
import pytest
import scipy.optimize
import torch

from svdlib.ortho import eta_star, exact_optimal_learning_rate, optimal_learning_rate

F64 = torch.float64




def _haar_rows(n, m, gen, batch=()):
    """Haar n x m matrices with orthonormal rows (n <= m)."""
    Q, R = torch.linalg.qr(torch.randn(*batch, m, n, generator=gen, dtype=F64))
    return (Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1)).unsqueeze(-2)).mT


def _reference(W, G, lr):
    """eq. 20 and eq. 21 written out in numpy on the vectorised weight and gradient."""
    w, gv = W.numpy().ravel(), G.numpy().ravel()
    star = (w @ w) * (gv @ w) / ((w @ w) * (gv @ gv) + 2 * (gv @ w) ** 2)
    return star, (star if 0 < star < lr else lr)


def test_olr_equals_eq20_with_the_switch_of_eq21():
    gen = torch.Generator().manual_seed(0)
    seen = {"used": 0, "negative": 0, "above_lr": 0}
    for i in range(300):
        W = torch.randn(8, 3, 3, 3, generator=gen, dtype=F64)
        # a mix of gradients: aligned with W (eta* > 0), against it (eta* < 0), tiny or huge
        G = torch.randn(8, 3, 3, 3, generator=gen, dtype=F64) + (i % 3 - 1) * 2.0 * W
        G = G * 10.0 ** float(torch.empty(()).uniform_(-2, 2, generator=gen))
        lr = 0.1
        star, ref = _reference(W, G, lr)
        assert float(eta_star(W, G)) == pytest.approx(star, rel=1e-12)
        eta = optimal_learning_rate(W, G, lr)
        assert eta.dtype == F64 and eta.dim() == 0
        assert float(eta) == pytest.approx(ref, rel=1e-12)
        seen["used" if 0 < star < lr else "negative" if star <= 0 else "above_lr"] += 1
    assert min(seen.values()) > 20  # every branch of the switch was exercised


def test_zero_gradient_falls_back_to_lr_without_nan():
    W = torch.randn(4, 6, dtype=F64)
    assert torch.isnan(eta_star(W, torch.zeros_like(W)))
    assert float(optimal_learning_rate(W, torch.zeros_like(W), 0.3)) == 0.3


@pytest.mark.parametrize("N,M", [(2, 2), (4, 4), (8, 8), (16, 16), (64, 64), (4, 9), (8, 27), (32, 64)])
def test_proposition_1_bounds_in_the_proofs_regime(N, M):
    """W and G with orthonormal rows and <G, W>_F >= 1 (the proof's eq. 39): then
    1/(N^2+2) <= eta* <= N^2/(N^2+2), with eta* = N <G,W> / (N^2 + 2 <G,W>^2) exactly."""
    gen = torch.Generator().manual_seed(N * 100 + M)
    draws = 300 if N < 32 else 120
    W = _haar_rows(N, M, gen, batch=(draws,))
    # G ranges from nearly W (<G,W> ~ N) to nearly independent of it, all orthonormal-rowed
    t = torch.logspace(-2, 1, draws, dtype=F64).reshape(-1, 1, 1)
    U, _, Vh = torch.linalg.svd(W + t * torch.randn(draws, N, M, generator=gen, dtype=F64), full_matrices=False)
    G = U @ Vh
    w, gv = W.reshape(draws, -1), G.reshape(draws, -1)
    wtw, ltw, ltl = (w * w).sum(1), (gv * w).sum(1), (gv * gv).sum(1)
    stars = wtw * ltw / (wtw * ltl + 2 * ltw**2)  # eq. 20 for every draw at once
    regime = ltw >= 1.0
    assert regime.sum() >= draws // 3
    lo, hi = 1.0 / (N**2 + 2), N**2 / (N**2 + 2)
    assert (stars[regime] >= lo).all() and (stars[regime] <= hi).all()
    # the closed form behind both bounds (w^T w = l^T l = N for orthonormal rows)
    closed = N * ltw / (N**2 + 2 * ltw**2)
    torch.testing.assert_close(stars, closed, rtol=1e-10, atol=0)
    # the library function agrees with the batch formula (on a subset, one call per draw)
    for k in range(0, draws, draws // 20):
        assert float(eta_star(W[k], G[k])) == pytest.approx(float(stars[k]), rel=1e-12)


@pytest.mark.parametrize("N", [4, 8, 16])
def test_proposition_1_lower_bound_needs_the_proofs_regime(N):
    """The proof's eq. 39 (<G, W> >= sigma_min(G) sigma_min(W) = 1) does not hold for every pair
    of orthogonal matrices: with W = I and G a block rotation by theta, <G, W> = N cos(theta) and
    eta* = cos / (1 + 2 cos^2), which drops below 1/(N^2+2) once cos(theta) is small enough."""
    W = torch.eye(N, dtype=F64)
    for c in (1e-3, 0.5 / N**2):
        s = (1 - c * c) ** 0.5
        G = torch.block_diag(*[torch.tensor([[c, -s], [s, c]], dtype=F64)] * (N // 2))
        torch.testing.assert_close(G @ G.mT, W)
        star = float(eta_star(W, G))
        assert star == pytest.approx(c / (1 + 2 * c * c), rel=1e-12)
        assert float((G * W).sum()) < 1.0 and star < 1.0 / (N**2 + 2)


def test_exact_minimiser_of_eq18_against_scipy():
    gen = torch.Generator().manual_seed(3)
    for shape in [(6, 6), (4, 10), (10, 4)]:
        W = torch.randn(*shape, generator=gen, dtype=F64) / shape[1] ** 0.5
        G = torch.randn(*shape, generator=gen, dtype=F64) + W
        M, L = W.numpy(), G.numpy()
        if shape[0] > shape[1]:
            M, L = M.T, L.T

        def f(eta):
            A = (M - eta * L) @ (M - eta * L).T - np.eye(M.shape[0])
            return np.linalg.norm(A)

        grid = np.linspace(0, 3, 30001)
        start = grid[np.argmin([f(e) for e in grid])]
        ref = scipy.optimize.minimize_scalar(
            f, bounds=(max(start - 1e-3, 0.0), start + 1e-3), method="bounded", options={"xatol": 1e-10}
        ).x
        assert exact_optimal_learning_rate(W, G) == pytest.approx(ref, abs=1e-6)
        assert f(exact_optimal_learning_rate(W, G)) <= f(float(eta_star(W, G))) + 1e-12


@pytest.mark.parametrize("lr", [0.0, -1.0, float("inf"), float("nan"), "0.1", True])
def test_bad_lr_is_rejected(lr):
    W = torch.ones(2, 2)
    with pytest.raises(ValueError, match="lr must be a finite positive float"):
        optimal_learning_rate(W, W, lr)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="G must have the shape of W"):
        optimal_learning_rate(torch.ones(2, 3), torch.ones(3, 2), 0.1)
