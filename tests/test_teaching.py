"""svdlib.teaching (notebooks 01-02) against independent references, float64."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from svdlib import teaching as T


def _sym_weight(n, seed):
    return T.matrix_with_spectrum(torch.linspace(-1.0, 1.0, n), seed=seed)


def test_matrix_with_spectrum_has_that_spectrum():
    lam = torch.tensor([3.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    A = T.matrix_with_spectrum(lam, seed=4)
    torch.testing.assert_close(A, A.T, rtol=0, atol=0)
    np.testing.assert_allclose(np.linalg.eigvalsh(A.numpy()), np.sort(lam.numpy()), atol=1e-13)
    with pytest.raises(ValueError, match="lam must have shape"):
        T.matrix_with_spectrum(torch.tensor(1.0))


def test_eigenvector_gradients_match_central_differences():
    """Reference and svdlib's exact remedy against finite differences of L_i = u_i^T W u_i."""
    n = 5
    A = T.matrix_with_spectrum([0.5, 1.0, 2.0, 3.5, 5.0], seed=1)
    W = _sym_weight(n, seed=2)
    E = _sym_weight(n, seed=3)
    h = 1e-6

    def losses(M):
        U = torch.linalg.eigh(M)[1]
        return torch.einsum("ki,kl,li->i", U, W, U)

    fd = (losses(A + h * E) - losses(A - h * E)) / (2 * h)
    for method in ("reference", "exact"):
        G = T.eigenvector_gradients(A, W, method)
        assert G.shape == (n, n, n)
        torch.testing.assert_close(torch.einsum("ijk,jk->i", G, E), fd, rtol=1e-6, atol=1e-8)


def test_eigenvector_gradients_pi_forward_converges_and_taylor_error_is_the_remainder():
    lam = [0.25, 0.5, 1.0, 2.0]  # ratios 1/2: 200 power iterations converge to rounding
    A = T.matrix_with_spectrum(lam, seed=5)
    W = _sym_weight(4, seed=6)
    ref = T.eigenvector_gradients(A, W)
    torch.testing.assert_close(T.eigenvector_gradients(A, W, "pi_forward", iterations=200), ref, rtol=1e-7, atol=1e-9)
    # Taylor's error on the dominant eigenvector is the remainder of eq. 10 (x^(K+1)/(1-x)).
    low = T.eigenvector_gradients(A, W, "taylor", degree=3)
    high = T.eigenvector_gradients(A, W, "taylor", degree=60)
    torch.testing.assert_close(high, ref, rtol=1e-9, atol=1e-12)
    assert (low[-1] - ref[-1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="takes no options"):
        T.eigenvector_gradients(A, W, "reference", degree=3)
    with pytest.raises(ValueError, match="W must have the shape"):
        T.eigenvector_gradients(A, W[:3, :3])


def test_exact_tie_breaks_exact_but_not_taylor():
    A = torch.diag(torch.tensor([1.0, 1.0, 2.0, 3.0], dtype=torch.float64))
    W = _sym_weight(4, seed=7)
    assert not torch.isfinite(T.eigenvector_gradients(A, W, "exact")).all()
    assert not torch.isfinite(T.eigenvector_gradients(A, W, "reference")).all()
    G = T.eigenvector_gradients(A, W, "taylor", degree=9, floor=1e-10)
    assert torch.isfinite(G).all()
    # L_0 + L_1 = tr(P W), P the tied eigenspace's projector, is differentiable at the tie: its
    # gradient pairs the tied directions with the others only, and Taylor's K~ for those pairs
    # is the degree-9 sum (1/lam_big) sum_k x^k, x = lam_small/lam_big, computed here by hand
    # for the spectrum svdlib.eigh sees (floor = 1e-10 is only the remedy's floor, no diagonal
    # shift). Measured 0 relative error (bitwise) without perturbation and under
    # SVDLIB_PERTURB=similarity:1, similarity:2 and numpy; a shift of the spectrum by 1e-10
    # would show as 4.9e-13, so the bound 1e-12 would also catch a shift by 2e-10.
    lam = [1.0, 1.0, 2.0, 3.0]
    expected = torch.zeros(4, 4, dtype=torch.float64)
    for i in (0, 1):
        for j in (2, 3):
            k_tilde = sum((lam[i] / lam[j]) ** k for k in range(10)) / lam[j]   # = K~_ij, i < j
            expected[i, j] = expected[j, i] = -2 * float(W[i, j]) * k_tilde / 2
    torch.testing.assert_close(G[0] + G[1], expected, rtol=1e-12, atol=1e-14)


def test_proposition_and_remainder():
    """Robust Differentiable SVD sec. 3.3: Taylor degree K == K+1 power iterations from u_1."""
    A = T.matrix_with_spectrum([0.1, 0.4, 0.9, 1.6, 2.0], seed=8)
    g = torch.randn(5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    rows = T.proposition_errors(A, g, [0, 3, 9, 30])
    for r in rows:
        assert r["taylor_vs_pi"] < 1e-13
        assert r["taylor_vs_exact"] == pytest.approx(r["remainder"], rel=1e-6)
    errors = [r["taylor_vs_exact"] for r in rows]
    assert all(b < a for a, b in zip(errors, errors[1:]))
    # the slowest pair has x = 1.6/2 = 0.8: error ~ 0.8^(K+1)
    assert errors[-1] / errors[-2] == pytest.approx(0.8 ** 21, rel=0.5)


def test_power_iteration_gradient_against_finite_differences():
    A = T.matrix_with_spectrum([0.3, 1.0, 2.0], seed=10)
    v0 = torch.tensor([0.2, -0.5, 0.84], dtype=torch.float64)
    g = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)
    E = _sym_weight(3, seed=11)

    def f(M):
        v = v0
        for _ in range(4):
            v = M @ v / (M @ v).norm()
        return g @ v

    h = 1e-6
    fd = (f(A + h * E) - f(A - h * E)) / (2 * h)
    G = T.power_iteration_gradient(A, v0, g, 4)
    assert (G * E).sum().item() == pytest.approx(fd.item(), rel=1e-7)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        T.power_iteration_gradient(A, v0, g, 0)


def test_min_relative_eigengaps_against_numpy():
    dims, trials = (3, 6), 7
    gaps = T.min_relative_eigengaps(dims, trials=trials, samples_per_dim=2.0, seed=3)
    # redraw the same Gaussians and recompute with numpy's eigensolver
    g = torch.Generator().manual_seed(3)
    for d in dims:
        X = torch.randn(trials, d, 2 * d, generator=g, dtype=torch.float64).numpy()
        expected = []
        for x in X:
            xc = x - x.mean(1, keepdims=True)
            lam = np.linalg.eigvalsh(np.cov(xc, bias=True))
            lam = lam / lam.sum()
            expected.append(np.diff(lam).min())
        np.testing.assert_allclose(gaps[d].numpy(), expected, rtol=1e-9, atol=1e-15)
    # fewer samples than features: a singular covariance with tied zero eigenvalues
    rank_deficient = T.min_relative_eigengaps([8], trials=5, samples_per_dim=0.5)[8]
    assert (rank_deficient < 1e-12).all()
    with pytest.raises(ValueError, match="every dimension must be >= 2"):
        T.min_relative_eigengaps([1])
    with pytest.raises(ValueError, match="trials must be >= 1"):
        T.min_relative_eigengaps([4], trials=0)


def test_k_column_angles_closed_forms():
    ang = T.k_column_angles(torch.tensor([1.0, 0.5, 0.25]), degree=9, k_max=100.0)
    assert ang["exact"].item() == pytest.approx(math.degrees(math.atan(3.0)), abs=1e-12)
    k1 = (1 - 0.25**10) / 0.75          # (1/lam_1) sum_k (lam_3/lam_1)^k
    k2 = 2.0 * (1 - 0.5**10) / 0.5      # (1/lam_2) sum_k (lam_3/lam_2)^k
    assert ang["taylor"].item() == pytest.approx(math.degrees(math.atan2(k2, k1)), abs=1e-12)
    assert ang["clip"].item() == pytest.approx(ang["exact"].item(), abs=1e-12)  # nothing above 100
    # k_max 2: k_2 = 4 is clipped to 2, k_1 = 4/3 is not (app. 7.2, eq. 57 middle case)
    clipped = T.k_column_angles(torch.tensor([1.0, 0.5, 0.25]), k_max=2.0)["clip"]
    assert clipped.item() == pytest.approx(math.degrees(math.atan(2.0 * 0.75)), abs=1e-12)
    # a tie lam_2 == lam_3: exact direction is 90 degrees, Taylor's k_2 = (K+1)/lam_2 (eq. 38)
    tie = T.k_column_angles(torch.tensor([0.5, 0.25, 0.25]), degree=9)
    assert tie["exact"].item() == 90.0
    k1 = 2.0 * (1 - 0.5**10) / 0.5
    assert tie["taylor"].item() == pytest.approx(math.degrees(math.atan2(10 / 0.25, k1)), abs=1e-12)
    # Taylor's direction is scale-free, clipping's is not
    lam = torch.tensor([[0.5, 0.26, 0.25]], dtype=torch.float64)
    scaled = T.k_column_angles(lam * 1e-3)
    torch.testing.assert_close(scaled["taylor"], T.k_column_angles(lam)["taylor"], rtol=0, atol=1e-9)
    assert (scaled["clip"] - T.k_column_angles(lam)["clip"]).abs().item() > 1.0
    with pytest.raises(ValueError, match="descending"):
        T.k_column_angles(torch.tensor([0.1, 0.5, 1.0]))


def test_taylor_discarded_fraction_is_x_to_the_k_plus_one():
    x = torch.linspace(0.0, 0.99, 34, dtype=torch.float64)
    degrees = [0, 1, 4, 9, 19, 100]
    frac = T.taylor_discarded_fraction(x, degrees)
    expected = torch.stack([x.pow(k + 1) for k in degrees])
    torch.testing.assert_close(frac, expected, rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        T.taylor_discarded_fraction([1.0], [9])


def test_format_table_and_atomic_saves(tmp_path):
    text = T.format_table([("a", "1", "2"), ("longer claim", "x", "y")])
    lines = text.splitlines()
    assert lines[0].startswith("claim        | paper value | our value")
    assert len({len(line) for line in lines}) == 1
    with pytest.raises(ValueError, match="needs 3 cells"):
        T.format_table([("only", "two")])
    assert T.save_json({"a": 1}, "", "x.json") is None
    path = T.save_json({"a": [1, 2]}, str(tmp_path / "out"), "x.json")
    assert json.loads(open(path).read()) == {"a": [1, 2]}
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    png = T.save_figure(fig, str(tmp_path), "f.png")
    plt.close(fig)
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "out"]
