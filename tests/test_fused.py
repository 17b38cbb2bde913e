"""svdlib.fused, the one backward stage: it equals the unfused formulas written out here
(eq. 7 symmetrised after the products; eq. 5-6 then eq. 7 for matrix functions) within float
tolerance, and the exact ones satisfy an independent identity (the Sylvester equation of the
square root)."""
from __future__ import annotations

import pytest
import torch

import svdlib
from svdlib import fused, remedies
from svdlib.divided_difference import divided_difference_matrix

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


K_BUILDERS = {"exact": remedies.k_exact, "clip": remedies.k_clip, "taylor": remedies.k_taylor,
              "pade": remedies.k_pade}


def _eq7(U, K, grad_lam, grad_U):
    """The unfused eigen backward: sym(U (K^T o U^T dL/dU + diag dL/dlam) U^T) (eq. 7)."""
    inner = K.transpose(-1, -2) * (U.transpose(-1, -2) @ grad_U) + torch.diag_embed(grad_lam)
    dA = U @ inner @ U.transpose(-1, -2)
    return 0.5 * (dA + dA.transpose(-1, -2))


def _reference_eigen(lam, U, grad_lam, grad_U, backward, **options):
    return _eq7(U, K_BUILDERS[backward](lam, **options), grad_lam, grad_U)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backward", ["exact", "clip", "taylor", "pade"])
def test_remedy_backward_equals_reference(dtype, backward):
    A = _covariances(4, 12, 30, dtype)
    lam, U = torch.linalg.eigh(A)
    g = torch.Generator().manual_seed(1)
    grad_lam = torch.randn(lam.shape, generator=g, dtype=torch.float64).to(dtype)
    grad_U = torch.randn(U.shape, generator=g, dtype=torch.float64).to(dtype)
    ref = _reference_eigen(lam, U, grad_lam, grad_U, backward)
    out = fused.remedy_backward(lam, U, grad_lam, grad_U, backward, compile=False)
    assert _rel(out, ref) < RTOL[dtype]
    assert _rel(remedies.BACKWARDS[backward](lam, U, grad_lam, grad_U), ref) < RTOL[dtype]  # the record's call
    # one missing incoming gradient is zero, as in the autograd node
    ref_u = _reference_eigen(lam, U, torch.zeros_like(lam), grad_U, backward)
    assert _rel(fused.remedy_backward(lam, U, None, grad_U, backward, compile=False), ref_u) < RTOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backward,options", [("taylor", {"degree": 100, "floor": 1e-3}),
                                              ("clip", {"k_max": 10.0}),
                                              ("pade", {"order": (3, 2)})])
def test_remedy_backward_options_and_ties(dtype, backward, options):
    """Options reach the K~ builder, and exact ties give the reference's bounded values."""
    A = _tied(dtype)
    lam, U = torch.linalg.eigh(A)
    g = torch.Generator().manual_seed(2)
    grad_lam = torch.randn(lam.shape, generator=g, dtype=torch.float64).to(dtype)
    grad_U = torch.randn(U.shape, generator=g, dtype=torch.float64).to(dtype)
    ref = _reference_eigen(lam, U, grad_lam, grad_U, backward, **options)
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


def test_pade_order_is_resolved_once_into_constants():
    """order=(p, q) becomes a PadeOrder holding the float64 coefficients, computed once, so the
    stage (and torch.compile) evaluates constants; k_pade gives the same K~ either way."""
    spec = svdlib._options.backward_spec("pade", {"order": (3, 2)})
    order = spec.as_dict()["order"]
    assert isinstance(order, remedies.PadeOrder) and (order.p, order.q) == (3, 2)
    a, b = remedies.pade_coefficients([1.0] * 6, 3, 2)
    assert order.numerator == tuple(a.tolist()) and order.denominator == tuple(b.tolist())
    lam = torch.linalg.eigvalsh(_tied(torch.float64))
    assert torch.equal(remedies.k_pade(lam, order), remedies.k_pade(lam, (3, 2)))


def _chain_powm(A, p, backward, **options):
    """The unfolded chain of eq. 5-7: Q = U diag(max(lam, floor)^p) U^T through autograd, the
    eigen backward being eq. 7 with the remedy's K~ (written out here). The forward is
    svdlib's own (the same eigenpairs, whatever solver the environment installs), so only the
    backwards are compared."""
    from svdlib._validation import is_traced
    from svdlib.eigen import prepare
    from svdlib.matfuncs import default_floor

    class Eig(torch.autograd.Function):
        @staticmethod
        def forward(S):
            return svdlib.solvers.solve(S, "torch", traced=is_traced(S))

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*output)

        @staticmethod
        def backward(ctx, grad_lam, grad_U):
            lam, U = ctx.saved_tensors
            return _reference_eigen(lam, U, grad_lam, grad_U, backward, **options)

    lam, U = Eig.apply(prepare(A, None, 0.0))
    floor = default_floor(lam, p)
    lam = lam + (torch.maximum(lam, floor) - lam).detach() if floor is not None else lam
    return (U * lam.pow(p).unsqueeze(-2)) @ U.transpose(-1, -2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backward", ["exact", "clip", "taylor", "pade"])
def test_matrix_function_stage_equals_the_unfused_chain(dtype, backward):
    """svdlib.powm (folded F~ for clip / taylor / pade, eigh's stage for exact): same forward
    and, up to rounding, same gradient as the chain of eq. 5-7 written out."""
    A = _covariances(3, 10, 40, dtype, seed=4)
    G = torch.randn(A.shape, dtype=torch.float64).to(dtype)
    for p in (0.5, -0.5, 1.5, 2.0):
        Q_ref, g_ref = _grad(lambda X: _chain_powm(X, p, backward), A, G)
        Q_out, g_out = _grad(lambda X: svdlib.powm(X, p, backward=backward, compile=False), A, G)
        assert _rel(Q_out, Q_ref) < RTOL[dtype], p
        assert _rel(g_out, g_ref) < RTOL[dtype], p


def _rank_deficient(dtype) -> torch.Tensor:
    """Covariances with N = 5 < n = 12 samples, and zero-padded tied spectra: many zero
    eigenvalues, which the default floor lifts to eps_machine * lam_max."""
    A = torch.cat([_covariances(2, 12, 5, torch.float64, seed=5),
                   torch.nn.functional.pad(_tied(torch.float64), (0, 6, 0, 6))])
    return A.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backward,eps", [("taylor", 1e-2), ("clip", 1e-2), ("clip", 0.0)])
def test_rank_deficient_bounded_remedies_equal_the_chain(dtype, backward, eps):
    """Bounded remedies on rank-deficient input: eigenvalue floor (straight-through) and eps
    (diagonal shift, and the remedy's floor by the one rule) as in the chain."""
    A = _rank_deficient(dtype)
    G = torch.randn(A.shape, dtype=torch.float64).to(dtype)
    shifted = A + eps * torch.eye(A.shape[-1], dtype=dtype)
    options = {"floor": eps} if backward == "taylor" else {}
    _, g_ref = _grad(lambda X: _chain_powm(X + eps * torch.eye(X.shape[-1], dtype=dtype), 0.5, backward,
                                           **options), A, G)
    _, g_out = _grad(lambda X: svdlib.sqrtm(X, backward=backward, eps=eps, compile=False), A, G)
    assert torch.isfinite(g_out).all() and torch.isfinite(shifted).all()
    assert _rel(g_out, g_ref) < 50 * RTOL[dtype]


def _reference_chain(lam_k, lam, U, G, p, backward):
    """The unfused reference: eq. 5-6 of Q = U diag(lam^p) U^T, then the remedy's eq. 7."""
    Gs = 0.5 * (G + G.transpose(-1, -2))
    grad_U = 2 * (Gs @ U) * lam.pow(p).unsqueeze(-2)
    M = U.transpose(-1, -2) @ Gs @ U
    grad_lam = p * lam.pow(p - 1) * torch.diagonal(M, dim1=-2, dim2=-1)
    if backward == "divided_difference":
        M = U.transpose(-1, -2) @ Gs @ U
        return U @ (divided_difference_matrix(lam, p) * M) @ U.transpose(-1, -2)
    return _reference_eigen(lam_k, U, grad_lam, grad_U, backward)


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
    Gs = 0.5 * (G + G.transpose(-1, -2))
    ref = U @ (divided_difference_matrix(lam, p) * (U.transpose(-1, -2) @ Gs @ U)) @ U.transpose(-1, -2)
    out = fused.spectral_backward(lam, U, G, p, "divided_difference", compile=False)
    assert _rel(out, ref) < RTOL[dtype]


def test_sqrt_gradient_solves_sylvester_equation():
    """Independent identity: Q = A^{1/2} gives dL/dA = X with Q X + X Q = sym(dL/dQ)
    (differentiate Q Q = A). Holds for the exact remedies, float64."""
    A = _covariances(3, 8, 30, torch.float64, seed=7) + 0.1 * torch.eye(8, dtype=torch.float64)
    G = torch.randn(A.shape, dtype=torch.float64)
    Gs = 0.5 * (G + G.transpose(-1, -2))
    for backward in ("divided_difference", "exact", "pade"):
        Q, X = _grad(lambda M: svdlib.sqrtm(M, backward=backward, compile=False), A, G)
        assert _rel(Q @ X + X @ Q, Gs) < 1e-10, backward


def test_gradcheck_divided_difference():
    g = torch.Generator().manual_seed(8)
    B = torch.randn(2, 4, 4, generator=g, dtype=torch.float64)
    A = (B @ B.transpose(-1, -2) + 0.5 * torch.eye(4, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda M: svdlib.inv_sqrtm(M, backward="divided_difference", compile=False), (A,))


def test_spectral_weights_exact_is_divided_difference():
    """F~ built from the exact K is the divided-difference matrix (Daleckii-Krein)."""
    lam = torch.tensor([[0.5, 1.0, 2.0, 7.0]], dtype=torch.float64)
    for p in (0.5, -0.5, 2.0):
        assert torch.allclose(fused.spectral_weights(lam, p, "exact"), divided_difference_matrix(lam, p),
                              rtol=1e-13, atol=0)


def test_torch_func_transforms_match_reference():
    """vmap(grad(...)) and jacrev through the stage equal the unfused chain / eager calls."""
    A = _covariances(3, 5, 20, torch.float64, seed=9)
    G = torch.randn(5, 5, dtype=torch.float64)
    f = lambda M: (svdlib.sqrtm(M, backward="taylor", compile=False) * G).sum()  # noqa: E731
    r = lambda M: (_chain_powm(M, 0.5, "taylor") * G).sum()  # noqa: E731
    assert _rel(torch.func.vmap(torch.func.grad(f))(A), torch.stack([torch.func.grad(r)(a) for a in A])) < 1e-12
    jf = torch.func.jacrev(lambda M: svdlib.sqrtm(M, backward="divided_difference", compile=False))(A[0])
    s = lambda M: (svdlib.sqrtm(M, backward="divided_difference") * G).sum()  # noqa: E731
    assert _rel((jf * G).sum((-1, -2)), torch.func.grad(s)(A[0])) < 1e-12


def test_errors_name_the_argument():
    A = _covariances(1, 4, 10, torch.float64)
    lam, U = torch.linalg.eigh(A)
    with pytest.raises(ValueError, match="has no folded"):
        fused.spectral_backward(lam, U, A, 0.5, "power_iteration")
    with pytest.raises(ValueError, match="valid options: none"):
        svdlib.sqrtm(A, backward="divided_difference", degree=3)
    with pytest.raises(ValueError, match="unknown option"):
        svdlib.sqrtm(A, backward="taylor", k_max=3)
    with pytest.raises(ValueError, match="compile must be"):
        fused.remedy_backward(lam, U, lam, U, compile="yes")
    with pytest.raises(ValueError, match=r"order\[1\] must be"):
        fused.k_matrix(lam, "pade", order=(1, -1))
    with pytest.raises(ValueError, match="has no K~ matrix"):
        fused.k_matrix(lam, "power_iteration")


def test_compile_not_used_on_cpu_by_default():
    assert fused.compile_available("cpu") is False


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backward", ["taylor", "pade", "divided_difference"])
def test_compiled_equals_eager_on_cuda(dtype, backward):
    A = _covariances(8, 32, 64, dtype).cuda()
    G = torch.randn(A.shape, dtype=dtype, device="cuda")
    _, g_ref = _grad(lambda X: svdlib.sqrtm(X, backward=backward, solver="torch", compile=False), A, G)
    _, g_out = _grad(lambda X: svdlib.sqrtm(X, backward=backward, solver="torch", compile=True), A, G)
    assert fused._compile_broken is None, fused._compile_broken
    assert _rel(g_out, g_ref) < 10 * RTOL[dtype]


@pytest.mark.parametrize("backward", ["taylor", "pade", "clip", "divided_difference"])
def test_stage_kernels_trace_into_one_graph(backward):
    """What the CUDA path compiles: the stage's kernels with a resolved spec (Padé's order
    included, as constants) trace with fullgraph=True, no graph break, and equal eager."""
    spec = svdlib._options.backward_spec(backward, {})
    A = _covariances(2, 6, 20, torch.float64, seed=10)
    lam, U = torch.linalg.eigh(A)
    G = torch.randn(A.shape, dtype=torch.float64)
    compiled = torch.compile(fused._spectral_backward_impl, fullgraph=True, backend="eager")
    eager = fused._spectral_backward_impl(lam, lam, U, G, 0.5, spec)
    assert torch.equal(compiled(lam, lam, U, G, 0.5, spec), eager)
    if backward != "divided_difference":
        compiled = torch.compile(fused._eigen_backward_impl, fullgraph=True, backend="eager")
        assert torch.equal(compiled(lam, U, lam, G, spec), fused._eigen_backward_impl(lam, U, lam, G, spec))


def test_exact_is_not_folded_in_matrix_functions(monkeypatch):
    """backward="exact" keeps the papers' plain-SVD chain in the matrix functions (its record
    says foldable=False): autograd through U f(Lambda) U^T, then eigh's stage, where the terms
    K_ij s_i and K_ij s_j are formed separately and cancel near ties. Folding remedies go
    through the one Hadamard product instead."""
    assert not svdlib.BACKWARDS["exact"].foldable and not fused.folds(svdlib._options.backward_spec("exact"))
    calls = []
    for name in ("eigen_backward", "spectral_stage"):
        real = getattr(fused, name)
        monkeypatch.setattr(fused, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    A = _covariances(2, 5, 20, torch.float64, seed=12)
    G = torch.randn(A.shape, dtype=torch.float64)
    for backward, path in (("exact", "eigen_backward"), ("taylor", "spectral_stage"),
                           ("divided_difference", "spectral_stage"), ("truncate", "eigen_backward")):
        calls.clear()
        _grad(lambda X: svdlib.sqrtm(X, backward=backward), A, G)
        assert calls == [path], backward
