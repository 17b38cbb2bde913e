"""svdlib.fused: the fused backwards equal the reference remedies (svdlib.remedies,
svdlib.divided_difference, the autograd chain of svdlib.powm) within float tolerance, and the
exact ones satisfy an independent identity (the Sylvester equation of the square root)."""
from __future__ import annotations

import pytest
import torch

import svdlib
from svdlib import fused, remedies
from svdlib.divided_difference import divided_difference_matrix, spectral_backward

DTYPES = [torch.float32, torch.float64]


# Relative Frobenius tolerance of fused vs reference: both round differently, nothing else.
RTOL = {torch.float32: 2e-5, torch.float64: 1e-12}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()  # float32 norms of Padé's tie values (~1e30) overflow
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _covariances(batch: int, n: int, samples: int, dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(batch, n, samples, generator=g, dtype=torch.float64)
    X = X - X.mean(-1, keepdim=True)
    return (X @ X.transpose(-1, -2) / samples).to(dtype)


def _tied(dtype) -> torch.Tensor:
    """Two SPD matrices with exactly repeated eigenvalues (ties) and a rank-deficient one."""
    g = torch.Generator().manual_seed(3)
    Q, _ = torch.linalg.qr(torch.randn(3, 6, 6, generator=g, dtype=torch.float64))
    lam = torch.tensor([[0.5, 1.0, 1.0, 1.0, 2.0, 3.0],
                        [1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
                        [0.0, 0.0, 0.0, 1.0, 2.0, 3.0]], dtype=torch.float64)
    A = (Q * lam.unsqueeze(-2)) @ Q.transpose(-1, -2)
    return (0.5 * (A + A.transpose(-1, -2))).to(dtype)


def _grad(fn, A: torch.Tensor, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    A = A.clone().requires_grad_(True)
    Q = fn(A)
    (grad,) = torch.autograd.grad(Q, A, G)
    return Q.detach(), grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backward", ["exact", "clip", "taylor", "pade"])
def test_remedy_backward_equals_reference(dtype, backward):
    A = _covariances(4, 12, 30, dtype)
    lam, U = torch.linalg.eigh(A)
    g = torch.Generator().manual_seed(1)
    grad_lam = torch.randn(lam.shape, generator=g, dtype=torch.float64).to(dtype)
    grad_U = torch.randn(U.shape, generator=g, dtype=torch.float64).to(dtype)
    ref = remedies.BACKWARDS[backward](lam, U, grad_lam, grad_U)
    out = fused.remedy_backward(lam, U, grad_lam, grad_U, backward, compile=False)
    assert _rel(out, ref) < RTOL[dtype]
    # one missing incoming gradient is zero, as in the autograd node
    ref_u = remedies.BACKWARDS[backward](lam, U, torch.zeros_like(lam), grad_U)
    assert _rel(fused.remedy_backward(lam, U, None, grad_U, backward, compile=False), ref_u) < RTOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backward,options", [("taylor", {"degree": 100, "eps": 1e-3}),
                                              ("clip", {"threshold": 10.0}),
                                              ("pade", {"order": (3, 2)})])
def test_remedy_backward_options_and_ties(dtype, backward, options):
    """Options reach the K~ builder, and exact ties give the reference's bounded values."""
    A = _tied(dtype)
    lam, U = torch.linalg.eigh(A)
    g = torch.Generator().manual_seed(2)
    grad_lam = torch.randn(lam.shape, generator=g, dtype=torch.float64).to(dtype)
    grad_U = torch.randn(U.shape, generator=g, dtype=torch.float64).to(dtype)
    ref = remedies.BACKWARDS[backward](lam, U, grad_lam, grad_U, **options)
    out = fused.remedy_backward(lam, U, grad_lam, grad_U, backward, compile=False, **options)
    assert torch.isfinite(out).all()
    assert _rel(out, ref) < RTOL[dtype]


@pytest.mark.parametrize("backward", ["exact", "clip", "taylor", "pade"])
def test_k_matrices_are_exactly_antisymmetric(backward):
    """The fused kernels use K~^T = -K~ (never forming K~^T); it must hold bit for bit,
    ties included (exact is infinite only at ties, so it gets a separated spectrum)."""
    lam = torch.linalg.eigvalsh(_tied(torch.float64) if backward != "exact"
                                else _covariances(2, 7, 20, torch.float64))
    K = fused.k_matrix(lam, backward)
    assert torch.equal(K.transpose(-1, -2), -K)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pade_graph_builder_equals_k_pade(dtype):
    """The compile-friendly Padé K~ (constants precomputed) is the reference k_pade, overflow
    patch at ties included."""
    lam = torch.linalg.eigvalsh(_tied(dtype))
    for order in [(50, 50), (3, 2), (4, 0)]:
        ref = remedies.k_pade(lam, order)
        out = fused.k_matrix(lam, "pade", order=order)
        assert torch.equal(torch.isfinite(out), torch.isfinite(ref))
        assert torch.allclose(out, ref, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backward", ["exact", "clip", "taylor", "pade", "divided_difference"])
def test_fused_powm_equals_autograd_chain(dtype, backward):
    """fused.powm: same forward and, up to rounding, same gradient as svdlib.powm."""
    A = _covariances(3, 10, 40, dtype, seed=4)
    G = torch.randn(A.shape, dtype=torch.float64).to(dtype)
    for p in (0.5, -0.5, 1.5, 2.0):
        Q_ref, g_ref = _grad(lambda X: svdlib.powm(X, p, backward=backward), A, G)
        Q_out, g_out = _grad(lambda X: fused.powm(X, p, backward=backward, compile=False), A, G)
        assert _rel(Q_out, Q_ref) < RTOL[dtype], p
        assert _rel(g_out, g_ref) < RTOL[dtype], p


def _rank_deficient(dtype) -> torch.Tensor:
    """Covariances with N = 5 < n = 12 samples, and zero-padded tied spectra: many zero
    eigenvalues, which the default floor lifts to eps_machine * lam_max."""
    A = torch.cat([_covariances(2, 12, 5, torch.float64, seed=5),
                   torch.nn.functional.pad(_tied(torch.float64), (0, 6, 0, 6))])
    return A.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backward,eps", [("taylor", 1e-2), ("clip", 1e-2), ("clip", 0.0),
                                          ("divided_difference", 1e-2), ("divided_difference", 0.0)])
def test_fused_powm_rank_deficient_bounded_remedies(dtype, backward, eps):
    """Bounded remedies on rank-deficient input: eigenvalue floor (straight-through) and eps
    (diagonal shift and remedy floor) are handled as in svdlib.sqrtm."""
    A = _rank_deficient(dtype)
    G = torch.randn(A.shape, dtype=torch.float64).to(dtype)
    _, g_ref = _grad(lambda X: svdlib.sqrtm(X, backward=backward, eps=eps), A, G)
    _, g_out = _grad(lambda X: fused.sqrtm(X, backward=backward, eps=eps, compile=False), A, G)
    assert torch.isfinite(g_out).all()
    assert _rel(g_out, g_ref) < 50 * RTOL[dtype]


def _reference_chain(lam_k, lam, U, G, p, backward):
    """The unfused reference: eq. 5-6 of Q = U diag(lam^p) U^T, then the remedy's eq. 7."""
    Gs = 0.5 * (G + G.transpose(-1, -2))
    grad_U = 2 * (Gs @ U) * lam.pow(p).unsqueeze(-2)
    M = U.transpose(-1, -2) @ Gs @ U
    grad_lam = p * lam.pow(p - 1) * torch.diagonal(M, dim1=-2, dim2=-1)
    if backward == "divided_difference":
        return spectral_backward(U, divided_difference_matrix(lam, p), G)
    return remedies.BACKWARDS[backward](lam_k, U, grad_lam, grad_U)


@pytest.mark.parametrize("backward", ["taylor", "pade", "clip", "divided_difference"])
def test_fused_float32_no_less_accurate_than_reference(backward):
    """Rank-deficient float32, no eps: K~ reaches 1e10 between the zero eigenvalues, so
    float32 rounding matters. Against the float64 evaluation of the same formula on the same
    eigenpairs, the fused form is never worse than the reference chain (which forms
    K~^T o (M S) and K~ o (S M) separately and cancels them; measured ~1e-2 for taylor,
    ~1e-4 for pade, where the fused F~ stays ~1e-7)."""
    from svdlib.matfuncs import default_floor

    A = _rank_deficient(torch.float32)
    G = torch.randn(A.shape, dtype=torch.float64).float()
    lam_k, U = torch.linalg.eigh(A)
    for p in (0.5, -0.5):
        lam = torch.maximum(lam_k, default_floor(lam_k, p))
        ref32 = _reference_chain(lam_k, lam, U, G, p, backward)
        ref64 = _reference_chain(lam_k.double(), lam.double(), U.double(), G.double(), p, backward)
        out32 = fused.spectral_backward(lam, U, G, p, backward, lam_k=lam_k, compile=False)
        for i in range(A.shape[0]):
            assert _rel(out32[i], ref64[i]) <= max(2 * _rel(ref32[i], ref64[i]), 1e-5), (p, i)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.5, -0.5, 0.3])
def test_divided_difference_spectral_backward(dtype, p):
    A = _covariances(4, 9, 25, dtype, seed=6)
    lam, U = torch.linalg.eigh(A)
    G = torch.randn(A.shape, dtype=torch.float64).to(dtype)
    ref = spectral_backward(U, divided_difference_matrix(lam, p), G)
    out = fused.spectral_backward(lam, U, G, p, "divided_difference", compile=False)
    assert _rel(out, ref) < RTOL[dtype]


def test_sqrt_gradient_solves_sylvester_equation():
    """Independent identity: Q = A^{1/2} gives dL/dA = X with Q X + X Q = sym(dL/dQ)
    (differentiate Q Q = A). Holds for the exact remedies, float64."""
    A = _covariances(3, 8, 30, torch.float64, seed=7) + 0.1 * torch.eye(8, dtype=torch.float64)
    G = torch.randn(A.shape, dtype=torch.float64)
    Gs = 0.5 * (G + G.transpose(-1, -2))
    for backward in ("divided_difference", "exact", "pade"):
        Q, X = _grad(lambda M: fused.sqrtm(M, backward=backward, compile=False), A, G)
        assert _rel(Q @ X + X @ Q, Gs) < 1e-10, backward


def test_gradcheck_divided_difference():
    g = torch.Generator().manual_seed(8)
    B = torch.randn(2, 4, 4, generator=g, dtype=torch.float64)
    A = (B @ B.transpose(-1, -2) + 0.5 * torch.eye(4, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda M: fused.inv_sqrtm(M, backward="divided_difference", compile=False), (A,))


def test_spectral_weights_exact_is_divided_difference():
    """F~ built from the exact K is the divided-difference matrix (Daleckii-Krein)."""
    lam = torch.tensor([[0.5, 1.0, 2.0, 7.0]], dtype=torch.float64)
    for p in (0.5, -0.5, 2.0):
        assert torch.allclose(fused.spectral_weights(lam, p, "exact"), divided_difference_matrix(lam, p),
                              rtol=1e-13, atol=0)


def test_torch_func_transforms_match_reference():
    """vmap(grad(...)) and jacrev through fused.sqrtm equal those through svdlib.sqrtm."""
    A = _covariances(3, 5, 20, torch.float64, seed=9)
    G = torch.randn(5, 5, dtype=torch.float64)
    f = lambda M: (fused.sqrtm(M, backward="taylor", compile=False) * G).sum()  # noqa: E731
    r = lambda M: (svdlib.sqrtm(M, backward="taylor") * G).sum()  # noqa: E731
    assert _rel(torch.func.vmap(torch.func.grad(f))(A), torch.func.vmap(torch.func.grad(r))(A)) < 1e-12
    jf = torch.func.jacrev(lambda M: fused.sqrtm(M, backward="divided_difference", compile=False))(A[0])
    jr = torch.func.jacrev(lambda M: svdlib.sqrtm(M, backward="divided_difference"))(A[0])
    assert _rel(jf, jr) < 1e-12


def test_errors_name_the_argument():
    A = _covariances(1, 4, 10, torch.float64)
    with pytest.raises(ValueError, match="backward must be one of"):
        fused.sqrtm(A, backward="power_iteration")
    with pytest.raises(ValueError, match="takes no options"):
        fused.sqrtm(A, backward="divided_difference", degree=3)
    with pytest.raises(ValueError, match="unknown option"):
        fused.sqrtm(A, backward="taylor", threshold=3)
    with pytest.raises(ValueError, match="solver='power_iteration'"):
        fused.sqrtm(A, solver="power_iteration")
    lam, U = torch.linalg.eigh(A)
    with pytest.raises(ValueError, match="compile must be"):
        fused.remedy_backward(lam, U, lam, U, compile="yes")
    with pytest.raises(ValueError, match="order must be"):
        fused.k_matrix(lam, "pade", order=(1, -1))


def test_compile_not_used_on_cpu_by_default():
    assert fused.compile_available("cpu") is False


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backward", ["taylor", "pade", "divided_difference"])
def test_compiled_equals_eager_on_cuda(dtype, backward):
    A = _covariances(8, 32, 64, dtype).cuda()
    G = torch.randn(A.shape, dtype=dtype, device="cuda")
    _, g_ref = _grad(lambda X: svdlib.sqrtm(X, backward=backward, solver="torch"), A, G)
    _, g_out = _grad(lambda X: fused.sqrtm(X, backward=backward, solver="torch", compile=True), A, G)
    assert fused._compile_broken is None, fused._compile_broken
    assert _rel(g_out, g_ref) < 10 * RTOL[dtype]
