"""NOG: nearest_orthogonal (Song et al., ECCV 2022, eq. 14-17, app. A.1)."""
import numpy as np
import pytest
import scipy.linalg
import torch

from svdlib.ortho import nearest_orthogonal

F64 = torch.float64




def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _haar(n, m, gen, dtype=F64, batch=()):
    """n x m with orthonormal rows (n <= m) or columns (n > m), Haar distributed."""
    big, small = max(n, m), min(n, m)
    Q, R = torch.linalg.qr(torch.randn(*batch, big, small, generator=gen, dtype=dtype))
    Q = Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1)).unsqueeze(-2)
    return Q.mT if n <= m else Q


@pytest.mark.parametrize("shape", [(6, 6), (5, 9), (9, 5), (8, 3, 3, 3), (64, 3, 3, 3), (4, 2, 5)])
def test_nog_is_u_vt_with_orthonormal_rows_or_columns(shape):
    G = torch.randn(*shape, generator=_gen(0), dtype=F64)
    R = nearest_orthogonal(G, method="svd")
    assert R.shape == G.shape and R.dtype == F64
    M, Rm = G.reshape(shape[0], -1), R.reshape(shape[0], -1)
    U, _, Vh = np.linalg.svd(M.numpy(), full_matrices=False)  # independent reference (LAPACK via numpy)
    np.testing.assert_allclose(Rm.numpy(), U @ Vh, atol=1e-12)
    m, n = Rm.shape
    gram = Rm @ Rm.mT if m <= n else Rm.mT @ Rm
    torch.testing.assert_close(gram, torch.eye(min(m, n), dtype=F64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", [(7, 7), (4, 10), (10, 4)])
def test_nog_equals_scipy_polar_factor_and_keeps_directions(shape):
    G = torch.randn(*shape, generator=_gen(1), dtype=F64)
    R = nearest_orthogonal(G, method="svd")
    side = "right" if shape[0] >= shape[1] else "left"
    u, p = scipy.linalg.polar(G.numpy(), side=side)  # G = u p (right) or p u (left)
    np.testing.assert_allclose(R.numpy(), u, atol=1e-12)
    # Directions kept (sec. 5.1): G = R P with P = (G^T G)^{1/2} symmetric positive definite,
    # i.e. R and G share their singular vectors and only the singular values changed.
    P = R.mT @ G if shape[0] >= shape[1] else G @ R.mT
    torch.testing.assert_close(P, P.mT, atol=1e-12, rtol=0)
    assert torch.linalg.eigvalsh(P).min() > 0


def test_nog_is_frobenius_nearest_among_random_and_perturbed_orthogonal_matrices():
    gen = _gen(2)
    for shape in [(6, 6), (4, 9), (9, 4)]:
        G = torch.randn(*shape, generator=gen, dtype=F64)
        R = nearest_orthogonal(G, method="svd")
        best = torch.linalg.matrix_norm(G - R)
        # 300 Haar-random semi-orthogonal matrices are all farther away ...
        others = _haar(*shape, gen, batch=(300,))
        assert (torch.linalg.matrix_norm(G - others) > best).all()
        # ... and so are small moves of R along the manifold, R exp(eps S) / exp(eps S) R.
        k = shape[1] if shape[0] >= shape[1] else shape[0]
        S = torch.randn(50, k, k, generator=gen, dtype=F64)
        Rot = torch.linalg.matrix_exp(1e-3 * (S - S.mT))
        moved = R @ Rot if shape[0] >= shape[1] else Rot @ R
        assert (torch.linalg.matrix_norm(G - moved) > best).all()


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("shape", [(16, 16), (8, 27), (64, 27), (16, 4, 3, 3)])
def test_newton_schulz_path_matches_svd_path(shape, dtype, atol):
    # singular values spread over one decade: well inside what 30 iterations resolve
    gen = _gen(3)
    m, n = shape[0], int(np.prod(shape[1:]))
    k = min(m, n)
    U = _haar(m, k, gen) if m >= k else _haar(k, m, gen).mT
    V = _haar(n, k, gen)
    s = torch.logspace(0, -1, k, dtype=F64) * 7.0
    G = ((U * s) @ V.mT).reshape(shape).to(dtype)
    R_ns = nearest_orthogonal(G, method="newton_schulz")
    R_svd = nearest_orthogonal(G, method="svd")
    assert R_ns.dtype == dtype
    torch.testing.assert_close(R_ns, R_svd, atol=atol, rtol=0)


def test_newton_schulz_needs_more_iterations_for_ill_conditioned_gradients():
    gen = _gen(4)
    U, V = _haar(12, 12, gen), _haar(12, 12, gen)
    G = (U * torch.logspace(0, -6, 12, dtype=F64)) @ V.mT
    exact = nearest_orthogonal(G, method="svd")
    few = nearest_orthogonal(G, method="newton_schulz", iterations=10)
    many = nearest_orthogonal(G, method="newton_schulz", iterations=60)
    assert torch.linalg.matrix_norm(few - exact) > 0.5  # 1e-6 singular values not yet lifted
    torch.testing.assert_close(many, exact, atol=1e-9, rtol=0)


@pytest.mark.parametrize("method", ["svd", "newton_schulz"])
def test_zero_and_rank_deficient_gradients_give_the_partial_isometry(method):
    Z = torch.zeros(5, 8, dtype=F64)
    out = nearest_orthogonal(Z, method=method)
    assert torch.equal(out, Z)
    gen = _gen(5)
    A, B = torch.randn(7, 2, generator=gen, dtype=F64), torch.randn(2, 9, generator=gen, dtype=F64)
    G = A @ B  # rank 2
    R = nearest_orthogonal(G, method=method)
    assert torch.isfinite(R).all()
    # reference: G (G^T G)^{+1/2}, the pseudo-inverse square root from numpy's eigh (not an SVD)
    w, Q = np.linalg.eigh((G.mT @ G).numpy())
    inv_sqrt = np.where(w > 1e-10 * w.max(), 1.0 / np.sqrt(np.clip(w, 1e-300, None)), 0.0)
    ref = G.numpy() @ (Q * inv_sqrt) @ Q.T
    np.testing.assert_allclose(R.numpy(), ref, atol=1e-7)
    s = torch.linalg.svdvals(R)
    torch.testing.assert_close(s[:2], torch.ones(2, dtype=F64), atol=1e-9, rtol=0)
    assert s[2:].abs().max() < 1e-9


def test_half_precision_is_computed_in_float32_and_returned_in_its_dtype():
    G = torch.randn(8, 12, generator=_gen(6)).to(torch.bfloat16)
    R = nearest_orthogonal(G, method="svd")
    assert R.dtype == torch.bfloat16
    ref = nearest_orthogonal(G.float(), method="svd")
    # Only the final rounding to bfloat16 differs: half an ulp of |R_ij| < 1 is at most 2^-9 =
    # 2e-3 (measured 1.8e-3), so 1e-2 holds on any machine.
    torch.testing.assert_close(R.float(), ref, atol=1e-2, rtol=0)


def test_auto_uses_svd_on_cpu():
    G = torch.randn(6, 10, generator=_gen(7), dtype=F64)
    assert torch.equal(nearest_orthogonal(G), nearest_orthogonal(G, method="svd"))


@pytest.mark.cuda
def test_auto_on_cuda_matches_svd():
    G = torch.randn(64, 27, generator=_gen(8), dtype=F64)
    torch.testing.assert_close(nearest_orthogonal(G.cuda()).cpu(), nearest_orthogonal(G), atol=1e-8, rtol=0)


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.ones(5), "at least 2 dimensions"),
        (torch.ones(3, 3, dtype=torch.int64), "real floating"),
        (torch.tensor([[1.0, float("nan")]]), "NaN"),
        ([[1.0]], "torch.Tensor"),
    ],
)
def test_validation_names_the_argument(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        nearest_orthogonal(bad)


def test_bad_method_and_iterations():
    G = torch.ones(2, 2)
    with pytest.raises(ValueError, match="method must be one of"):
        nearest_orthogonal(G, method="qr")
    with pytest.raises(ValueError, match="iterations must be a positive int"):
        nearest_orthogonal(G, method="newton_schulz", iterations=0)
