"""svdlib.eigh: forward, dtypes, bad input, failure repair, vmap / compile."""
from __future__ import annotations

import pytest
import torch

import svdlib
from svdlib import diagnostics, solvers
from _spine_helpers import matrix_with_spectrum


def test_forward_matches_torch_and_reconstructs():
    A = matrix_with_spectrum(torch.rand(3, 7, dtype=torch.float64) + 0.1, seed=0)
    lam, U = svdlib.eigh(A)
    torch.testing.assert_close(lam, torch.linalg.eigvalsh(A))
    torch.testing.assert_close((U * lam.unsqueeze(-2)) @ U.transpose(-1, -2), A)
    torch.testing.assert_close(U.transpose(-1, -2) @ U, torch.eye(7, dtype=torch.float64).expand(3, 7, 7))


def test_eps_shifts_eigenvalues_and_keeps_eigenvectors():
    A = matrix_with_spectrum([0.0, 1.0, 2.0], seed=1)
    lam0, U0 = svdlib.eigh(A)
    lam1, U1 = svdlib.eigh(A, eps=0.5)
    torch.testing.assert_close(lam1, lam0 + 0.5)
    torch.testing.assert_close((U1.transpose(-1, -2) @ U0).abs(), torch.eye(3, dtype=torch.float64))


def test_min_eigenvalue_clamps_with_straight_through_gradient():
    A = torch.diag(torch.tensor([-1e-9, 1.0, 2.0], dtype=torch.float64)).requires_grad_()
    lam, _ = svdlib.eigh(A, min_eigenvalue=1e-6)
    assert lam[0].item() == 1e-6
    lam.sum().backward()
    torch.testing.assert_close(A.grad, torch.eye(3, dtype=torch.float64))


NONSYMMETRIC = torch.tensor([[2.0, 1.0], [0.0, 2.0]], dtype=torch.float64)
#: Its symmetric part [[2, .5], [.5, 2]] has eigenvalues 1.5 and 2.5; its lower triangle
#: mirrored, [[2, 0], [0, 2]], has 2 and 2.
SYMMETRIC_PART_EIGENVALUES = torch.tensor([1.5, 2.5], dtype=torch.float64)
LOWER_TRIANGLE_EIGENVALUES = torch.tensor([2.0, 2.0], dtype=torch.float64)


def test_nonsymmetric_input_is_symmetrised_when_a_derivative_is_recorded():
    A = NONSYMMETRIC.clone().requires_grad_()
    lam, _ = svdlib.eigh(A)
    torch.testing.assert_close(lam.detach(), SYMMETRIC_PART_EIGENVALUES)
    lam[1].backward()
    torch.testing.assert_close(A.grad, A.grad.transpose(-1, -2))   # sym(G): the derivative
    assert torch.autograd.gradcheck(lambda X: svdlib.eigh(X, backward="exact")[0], (A.detach().requires_grad_(),))


def test_nonsymmetric_input_without_a_derivative_reads_the_lower_triangle_like_torch():
    with torch.no_grad():
        lam, _ = svdlib.eigh(NONSYMMETRIC.clone().requires_grad_())
    torch.testing.assert_close(lam, LOWER_TRIANGLE_EIGENVALUES)
    torch.testing.assert_close(svdlib.eigh(NONSYMMETRIC)[0], torch.linalg.eigvalsh(NONSYMMETRIC))
    torch.testing.assert_close(svdlib.powm(NONSYMMETRIC, 2.0), torch.full((2,), 4.0, dtype=torch.float64).diag())


def test_solvers_that_read_the_whole_matrix_get_the_symmetric_part():
    lam, _ = svdlib.eigh(NONSYMMETRIC, solver="power_iteration_forward", iterations=200)
    torch.testing.assert_close(lam, SYMMETRIC_PART_EIGENVALUES)
    previous = diagnostics.check_eigenvectors()
    diagnostics.check_eigenvectors(True)   # the check reads the whole matrix too
    try:
        torch.testing.assert_close(svdlib.eigh(NONSYMMETRIC)[0], SYMMETRIC_PART_EIGENVALUES)
    finally:
        diagnostics.check_eigenvectors(previous)
    assert solvers.reads_lower_triangle("torch") and not solvers.reads_lower_triangle("cusolver_batched")


@pytest.mark.parametrize("lower_triangle", [True, False])
def test_a_registered_solver_gets_the_symmetric_part_unless_it_reads_one_triangle(lower_triangle):
    seen = []

    def spy(A):
        seen.append(A.detach().clone())
        lam, U = torch.linalg.eigh(A)
        return lam, U, None

    solvers.register_solver("spy_test", spy, lower_triangle=lower_triangle)
    try:
        svdlib.eigh(NONSYMMETRIC, solver="spy_test")                       # no derivative
        svdlib.eigh(NONSYMMETRIC.clone().requires_grad_(), solver="spy_test")
    finally:
        del solvers.SOLVERS["spy_test"]
    half = 0.5 * (NONSYMMETRIC + NONSYMMETRIC.mT)
    assert torch.equal(seen[0], NONSYMMETRIC if lower_triangle else half)
    assert torch.equal(seen[1], half)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_with_and_without_a_derivative_agree(dtype):
    """A symmetric A: the solver gets the same matrix, bit for bit (lerp(x, x, 1/2) = x is exact),
    so the eigenpairs agree as far as the solver is deterministic. A nearly symmetric X X^T:
    Weyl's bound, |lam(L) - lam(S)| <= ||L - S||_2 for the lower triangle mirrored L and the
    symmetric part S, plus both solves' rounding (each <= 2.1 n eps max|lam| measured). Measured
    (unperturbed, similarity:1/2, numpy, 2 threads, MKL SSE4_2): the eigenvalues of the same
    input agree exactly, and the X X^T differences use at most 8% of Weyl's bound."""
    from svdlib.eigen import prepare_for_solver

    g = torch.Generator().manual_seed(4)
    X = torch.randn(6, 9, 20, generator=g, dtype=torch.float64).to(dtype)
    C = X @ X.transpose(-1, -2)
    S = 0.5 * (C + C.transpose(-1, -2))
    with torch.no_grad():
        seen_without, _, records = prepare_for_solver(S, "auto", None, 0.0)
        lam0, U0 = svdlib.eigh(S)
    assert not records
    seen_with = prepare_for_solver(S.clone().requires_grad_(), "auto", None, 0.0)[0]
    assert torch.equal(seen_without, seen_with.detach())
    lam1, U1 = svdlib.eigh(S.clone().requires_grad_())
    tol = 8 * 9 * torch.finfo(dtype).eps
    torch.testing.assert_close(lam1.detach(), lam0, rtol=0, atol=tol * float(lam0.abs().max()))
    with torch.no_grad():
        lam_lower = svdlib.eigh(C)[0]
    lam_sym = svdlib.eigh(C.clone().requires_grad_())[0].detach()
    L = C.tril() + C.tril(-1).transpose(-1, -2)
    weyl = torch.linalg.matrix_norm((L - S).double(), ord=2)
    rounding = tol * lam_sym.abs().amax(-1).double()
    assert ((lam_lower - lam_sym).double().abs().amax(-1) <= weyl + rounding).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32_and_returned_in_its_dtype(dtype):
    A = matrix_with_spectrum([1.0, 2.0, 3.0], seed=2, dtype=torch.float32).to(dtype)
    lam, U = svdlib.eigh(A)
    assert lam.dtype == dtype and U.dtype == dtype
    torch.testing.assert_close(lam.float(), torch.tensor([1.0, 2.0, 3.0]), atol=2e-2, rtol=2e-2)


def test_compute_dtype_float64_returns_caller_dtype():
    A = matrix_with_spectrum([1.0, 1.0 + 1e-6, 3.0], seed=3, dtype=torch.float32).requires_grad_()
    lam, U = svdlib.eigh(A, compute_dtype=torch.float64)
    assert lam.dtype == torch.float32
    lam.sum().backward()
    assert A.grad.dtype == torch.float32


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.ones(3), "at least 2 dimensions"),
        (torch.ones(2, 3), "square"),
        (torch.ones(3, 3, dtype=torch.int64), "real floating dtype"),
        (torch.tensor([[1.0, 0.0], [float("nan"), 1.0]]), "NaN/Inf"),
        (torch.tensor([[1.0, 0.0], [0.0, float("inf")]]), "NaN/Inf"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(bad, message):
    with pytest.raises(ValueError, match=message) as info:
        svdlib.eigh(bad)
    assert str(tuple(bad.shape)) in str(info.value)


def test_the_upper_triangle_is_checked_where_it_is_read():
    """NaN in the upper triangle: refused when a derivative is recorded (the symmetric part
    reads it) and in check mode; without a derivative the torch solver reads the lower
    triangle only, as torch.linalg.eigh, so the NaN is not part of the input."""
    bad = torch.tensor([[1.0, float("nan")], [0.5, 3.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="NaN/Inf"):
        svdlib.eigh(bad.clone().requires_grad_())
    lam, U = svdlib.eigh(bad)
    torch.testing.assert_close(lam, torch.linalg.eigvalsh(bad.tril() + bad.tril(-1).mT))
    assert torch.isfinite(U).all()
    previous = diagnostics.check_eigenvectors()
    diagnostics.check_eigenvectors(True)
    try:
        with pytest.raises(ValueError, match="NaN/Inf"):
            svdlib.eigh(bad)
    finally:
        diagnostics.check_eigenvectors(previous)


def test_unknown_solver_and_cusolver_on_cpu_are_clear_errors():
    with pytest.raises(ValueError, match="unknown solver 'nope'"):
        svdlib.eigh(torch.eye(2), solver="nope")
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        svdlib.eigh(torch.eye(2), solver="cusolver_batched")


def test_auto_solver_is_torch_on_cpu_without_warning(recwarn):
    assert solvers.resolve_solver("auto", torch.device("cpu")) == "torch"
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_injected_failure_is_repaired_counted_and_reset():
    def flaky(A):
        lam, U = torch.linalg.eigh(A)
        lam, U = lam.clone(), U.clone()
        lam[1] = float("nan")  # matrix 1 of the batch "fails"
        ok = torch.ones(A.shape[0], dtype=torch.bool)
        ok[2] = False  # and matrix 2 reports a bad info code
        return lam, U, ok

    solvers.register_solver("flaky_test", flaky)
    try:
        diagnostics.reset_failures()
        A = matrix_with_spectrum(torch.rand(4, 5, dtype=torch.float64) + 0.5, seed=4).requires_grad_()
        lam, U = svdlib.eigh(A, solver="flaky_test")
        assert diagnostics.failure_count() == 2
        assert diagnostics.last_failure()["indices"] == [1, 2]
        torch.testing.assert_close(lam, torch.linalg.eigvalsh(A.detach()))
        lam.sum().backward()
        # d(sum lam)/dA = d tr(A)/dA = I, whatever the repair did
        torch.testing.assert_close(A.grad, torch.eye(5, dtype=torch.float64).expand(4, 5, 5))
        assert diagnostics.reset_failures() == 2 and diagnostics.failure_count() == 0
    finally:
        solvers.SOLVERS.pop("flaky_test")


def test_torch_linalg_error_path_repairs_only_failed_matrix(monkeypatch):
    real = torch.linalg.eigh
    calls = {"batched": 0}

    def raising(A, *args, **kwargs):
        if A.dim() == 3:
            calls["batched"] += 1
            raise torch.linalg.LinAlgError("injected")
        if A[0, 0] > A[1, 1] and A.dtype == torch.float32:  # the second matrix, at any scale
            raise torch.linalg.LinAlgError("injected")
        return real(A, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", raising)
    diagnostics.reset_failures()
    A = torch.stack([torch.diag(torch.tensor([1.0, 2.0])), torch.diag(torch.tensor([7.0, 3.0]))])
    lam, _ = svdlib.eigh(A)
    assert calls["batched"] == 1 and diagnostics.failure_count() == 1
    torch.testing.assert_close(lam, torch.tensor([[1.0, 2.0], [3.0, 7.0]]))
    diagnostics.reset_failures()


def test_power_iteration_solver_is_differentiable_baseline():
    A = matrix_with_spectrum([0.5, 2.0, 8.0], seed=5).requires_grad_()
    lam, U = svdlib.eigh(A, solver="power_iteration_forward", iterations=200)
    torch.testing.assert_close(lam, torch.linalg.eigvalsh(A.detach()), rtol=1e-8, atol=1e-10)
    lam.sum().backward()
    torch.testing.assert_close(A.grad, torch.eye(3, dtype=torch.float64), rtol=1e-6, atol=1e-8)


def test_vmap_matches_batched_call():
    A = matrix_with_spectrum(torch.rand(4, 5, dtype=torch.float64) + 0.1, seed=6)
    lam_v, _ = torch.func.vmap(lambda a: svdlib.eigh(a))(A)
    torch.testing.assert_close(lam_v, svdlib.eigh(A)[0])
    f = lambda a: svdlib.sqrtm(a, backward="taylor", degree=50).sum()  # noqa: E731
    grads = torch.func.vmap(torch.func.grad(f))(A)
    ref = torch.stack([torch.func.grad(f)(a) for a in A])
    torch.testing.assert_close(grads, ref)


def test_torch_compile_fullgraph_on_cpu():
    def f(a):
        return svdlib.sqrtm(a, backward="taylor").sum()

    A = matrix_with_spectrum([1.0, 2.0, 3.0, 4.0], seed=7).requires_grad_()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(A)
    out.backward()
    B = A.detach().clone().requires_grad_()
    f(B).backward()
    torch.testing.assert_close(out, f(A.detach()))
    torch.testing.assert_close(A.grad, B.grad)


def test_one_host_synchronisation_per_call(monkeypatch):
    """The forward reads one scalar back from the device (the failure check); nothing else.
    (A plain solver registered here: the test harness may wrap the shipped ones.)"""
    A = matrix_with_spectrum(torch.rand(4, 6, dtype=torch.float64) + 0.5, seed=8)
    monkeypatch.setitem(solvers.SOLVERS, "plain_test", solvers.Solver(lambda a: (*torch.linalg.eigh(a), None)))
    reads = []
    for name in ("item", "__bool__", "tolist", "__float__", "__int__"):
        real = getattr(torch.Tensor, name)

        def counting(self, *args, _real=real, _name=name):
            reads.append(_name)
            return _real(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counting)
    svdlib.eigh(A, solver="plain_test")
    assert reads == ["item"]
    reads.clear()
    svdlib.sqrtm(A, solver="plain_test")
    assert reads == ["item"]
    reads.clear()
    svdlib.eigh(A.clone().requires_grad_(), solver="plain_test", backward="taylor", degree=20)
    assert reads == ["item"]
    # the positive semi-definite and zero-matrix checks of negative powers ride on the same read
    for call in (lambda: svdlib.inv_sqrtm(A, solver="plain_test"),
                 lambda: svdlib.inv_sqrtm(A, solver="plain_test", backward="exact"),
                 lambda: svdlib.sqrtm(A, method="newton_schulz")):
        reads.clear()
        call()
        assert reads == ["item"]


def test_symmetric_part_is_one_pass_equal_to_the_half_sum():
    """prepare's lerp(A^T, A, 1/2) is (A + A^T)/2 bit for bit when A is nearly symmetric (the
    difference A_ij - A_ji is then exact), A itself when A is symmetric, and within an ulp
    otherwise; its gradient is sym(G)."""
    from svdlib.eigen import prepare

    g = torch.Generator().manual_seed(9)
    X = torch.randn(4, 12, 30, generator=g, dtype=torch.float64)
    C = X @ X.transpose(-1, -2)                      # symmetric up to the product's rounding
    assert torch.equal(prepare(C, None, 0.0), 0.5 * (C + C.transpose(-1, -2)))
    S = 0.5 * (C + C.transpose(-1, -2))
    assert torch.equal(prepare(S, None, 0.0), S)
    R = torch.randn(4, 7, 7, generator=g, dtype=torch.float64)   # far from symmetric
    half = 0.5 * (R + R.transpose(-1, -2))
    assert (prepare(R, None, 0.0) - half).abs().max() <= 2 * torch.finfo(torch.float64).eps * half.abs().max()
    Rg = R.clone().requires_grad_()
    G = torch.randn(4, 7, 7, generator=g, dtype=torch.float64)
    (prepare(Rg, None, 0.25) * G).sum().backward()
    assert torch.equal(Rg.grad, 0.5 * G + (0.5 * G).transpose(-1, -2))


def test_eigenvector_scan_is_optional():
    """By default the failure check reads the eigenvalues (and the solver's info) only; with
    check_eigenvectors(True) a non-finite eigenvector is caught and repaired too."""
    def bad_vectors(A):
        lam, U = torch.linalg.eigh(A)
        U = U.clone()
        U[0, 0, 0] = float("nan")
        return lam, U, None

    solvers.register_solver("bad_vectors_test", bad_vectors)
    try:
        A = matrix_with_spectrum(torch.rand(2, 4, dtype=torch.float64) + 0.5, seed=10)
        diagnostics.reset_failures()
        _, U = svdlib.eigh(A, solver="bad_vectors_test")
        assert not torch.isfinite(U).all() and diagnostics.failure_count() == 0
        assert diagnostics.check_eigenvectors(True)
        _, U = svdlib.eigh(A, solver="bad_vectors_test")
        assert torch.isfinite(U).all() and diagnostics.failure_count() == 1
    finally:
        diagnostics.check_eigenvectors(False)
        diagnostics.reset_failures()
        solvers.SOLVERS.pop("bad_vectors_test")


def _numpy_eigh(A):
    """A solver that does not use torch.linalg.eigh (so a test can make the repair fail)."""
    import numpy as np

    lam, U = np.linalg.eigh(A.detach().numpy())
    return torch.from_numpy(np.ascontiguousarray(lam)), torch.from_numpy(np.ascontiguousarray(U))


def test_last_resort_fallback_warns_naming_the_matrix(monkeypatch):
    """Issue 17: when every repair failed, the diagonal and the identity came back with only the
    counter moving. Now a RuntimeWarning names the matrix."""
    def fails_on_second(A):
        lam, U = _numpy_eigh(A)
        lam, U = lam.clone(), U.clone()
        lam[0, 1] = float("nan")
        return lam, U, None

    monkeypatch.setitem(solvers.SOLVERS, "fails_test", solvers.Solver(fails_on_second))

    def never(*args, **kwargs):
        raise torch.linalg.LinAlgError("injected: the repair fails too")

    monkeypatch.setattr(torch.linalg, "eigh", never)
    A = matrix_with_spectrum(torch.rand(2, 3, 4, dtype=torch.float64) + 0.5, seed=11)
    diagnostics.reset_failures()
    with pytest.warns(RuntimeWarning, match=r"every repair failed on A\[0, 1\]; returning its diagonal"):
        lam, _ = svdlib.eigh(A, solver="fails_test")
    assert torch.equal(lam[0, 1], torch.sort(torch.diagonal(A[0, 1]))[0])
    assert diagnostics.last_failure()["repaired_by"] == ["diagonal fallback"]
    diagnostics.reset_failures()


def test_a_solver_that_raises_is_repaired_counted_and_named():
    def raising(A):
        raise RuntimeError("boom")

    solvers.register_solver("raising_test", raising)
    try:
        diagnostics.reset_failures()
        A = matrix_with_spectrum(torch.rand(3, 4, dtype=torch.float64) + 0.5, seed=12)
        with pytest.warns(RuntimeWarning, match=r"solver 'raising_test' raised RuntimeError: boom; the 3 "
                                                r"matrices of A were decomposed by the float64 repair"):
            lam, U = svdlib.eigh(A, solver="raising_test")
        torch.testing.assert_close(lam, torch.linalg.eigvalsh(A))
        assert diagnostics.failure_count() == 3 and diagnostics.last_failure()["error"] == "RuntimeError: boom"
        with pytest.raises(ValueError, match="NaN/Inf"):  # bad input is still named as such
            svdlib.eigh(torch.full((2, 2), float("nan")), solver="raising_test")
    finally:
        diagnostics.reset_failures()
        solvers.SOLVERS.pop("raising_test")


@pytest.mark.parametrize("garbage", ["not orthonormal", "wrong eigenvalues"])
def test_a_solver_reporting_success_with_garbage_is_not_trusted_when_checked(garbage):
    """A solver whose eigenpairs are not an eigendecomposition is trusted by default (the check
    costs two products per call) and repaired with check_eigenvectors(True), in the same one
    host synchronisation."""
    def lying(A):
        lam, U = torch.linalg.eigh(A)
        if garbage == "not orthonormal":
            return lam, U + 0.1, torch.ones(A.shape[:-2], dtype=torch.bool)
        return 2 * lam, U, None

    solvers.register_solver("lying_test", lying)
    A = matrix_with_spectrum(torch.rand(3, 5, dtype=torch.float64) + 0.5, seed=13)
    try:
        diagnostics.reset_failures()
        svdlib.eigh(A, solver="lying_test")
        assert diagnostics.failure_count() == 0
        assert diagnostics.check_eigenvectors(True)
        lam, U = svdlib.eigh(A, solver="lying_test")
        assert diagnostics.failure_count() == 3
        torch.testing.assert_close((U * lam.unsqueeze(-2)) @ U.transpose(-1, -2), A)
        assert not solvers.untrusted(A, *torch.linalg.eigh(A)).any()  # LAPACK's own pass
    finally:
        diagnostics.check_eigenvectors(False)
        diagnostics.reset_failures()
        solvers.SOLVERS.pop("lying_test")
