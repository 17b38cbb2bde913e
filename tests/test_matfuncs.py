"""sqrtm / inv_sqrtm / powm, Newton-Schulz, covariance and condition number."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

import svdlib
from _spine_helpers import matrix_with_spectrum


@pytest.mark.parametrize("method", ["eigh", "newton_schulz"])
def test_sqrt_and_inverse_sqrt_match_scipy(method):
    A = matrix_with_spectrum([0.6, 0.9, 1.3, 2.0], seed=0)  # well conditioned: NS converges
    ref = torch.from_numpy(np.real(scipy.linalg.sqrtm(A.numpy())))
    kw = {"iterations": 30} if method == "newton_schulz" else {}
    torch.testing.assert_close(svdlib.sqrtm(A, method=method, **kw), ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(svdlib.inv_sqrtm(A, method=method, **kw), torch.linalg.inv(ref), rtol=1e-9, atol=1e-10)


def test_newton_schulz_five_iterations_is_a_damped_root_on_ill_conditioned_input():
    A = matrix_with_spectrum(torch.logspace(-4, 0, 16, dtype=torch.float64), seed=1)
    exact = svdlib.sqrtm(A)
    ns = svdlib.sqrtm(A, method="newton_schulz")  # 5 iterations, iSQRT-COV default
    rel = (ns - exact).norm() / exact.norm()
    assert rel > 1e-3  # measurably off: what notebook 03 quantifies
    ns50 = svdlib.sqrtm(A, method="newton_schulz", iterations=60)
    assert (ns50 - exact).norm() / exact.norm() < rel


def test_powm_general_power_and_positive_integer():
    A = matrix_with_spectrum([0.5, 1.0, 4.0], seed=2)
    torch.testing.assert_close(svdlib.powm(A, 2), A @ A)
    ref = torch.from_numpy(scipy.linalg.fractional_matrix_power(A.numpy(), 0.3).real)
    torch.testing.assert_close(svdlib.powm(A, 0.3), ref)


def test_sqrtm_gradient_matches_jacrev_of_independent_reference():
    A = matrix_with_spectrum([0.5, 1.1, 2.0, 3.7, 6.0], seed=3)

    def reference(a):  # torch.linalg.eigh with its own (ATen) backward
        lam, U = torch.linalg.eigh(a)
        return (U * lam.sqrt().unsqueeze(-2)) @ U.T

    J_ref = torch.func.jacrev(reference)(A)
    J_ref = 0.5 * (J_ref + J_ref.transpose(-1, -2))  # gradient w.r.t. a symmetric input
    for backward, opts in [("exact", {}), ("taylor", {"degree": 300}), ("divided_difference", {})]:
        J = torch.func.jacrev(lambda a: svdlib.sqrtm(a, backward=backward, **opts))(A)
        torch.testing.assert_close(J, J_ref, rtol=1e-8, atol=1e-10)


def test_newton_schulz_gradient_is_autograd_and_finite_at_rank_deficiency():
    """Rank 2 of 6: Newton-Schulz is a polynomial in A / tr(A), smooth there, and its autograd
    gradient matches central differences of the same iteration."""
    X = torch.randn(6, 3, dtype=torch.float64)
    A = svdlib.covariance(X).requires_grad_()
    svdlib.sqrtm(A, method="newton_schulz").sum().backward()
    assert torch.isfinite(A.grad).all()
    E = torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    E = 0.5 * (E + E.T)
    h = 1e-6
    with torch.no_grad():
        f = lambda M: svdlib.sqrtm(M, method="newton_schulz").sum()  # noqa: E731
        fd = (f(A + h * E) - f(A - h * E)) / (2 * h)
    # central differences of a polynomial map: error ~h^2 + eps/h (measured 3.7e-10 of 12.3)
    assert abs(float((A.grad * E).sum()) - float(fd)) < 1e-7 * max(1.0, abs(float(fd)))


def test_method_errors():
    with pytest.raises(ValueError, match="unknown method"):
        svdlib.sqrtm(torch.eye(2), method="svd")
    with pytest.raises(ValueError, match="p = 0.5 or -0.5"):
        svdlib.powm(torch.eye(2), 0.3, method="newton_schulz")


def test_covariance_matches_numpy_and_condition_number_matches_eigenvalues():
    X = torch.randn(3, 4, 50, dtype=torch.float64)
    P = svdlib.covariance(X)
    for b in range(3):
        np.testing.assert_allclose(P[b].numpy(), np.cov(X[b].numpy(), bias=True), rtol=1e-12, atol=1e-12)
    A = matrix_with_spectrum([[0.5, 1.0, 10.0], [0.0, 1.0, 2.0]], seed=4)
    kappa = svdlib.condition_number(A)
    assert kappa[0].item() == pytest.approx(20.0, rel=1e-10)
    assert kappa[1].item() > 1e14  # singular up to rounding
    assert svdlib.condition_number(torch.diag(torch.tensor([0.0, 1.0]))).item() == float("inf")
    with pytest.raises(ValueError, match=r"\(\.\.\., d, N\)"):
        svdlib.covariance(torch.ones(3))


def test_covariance_reports_overflow_and_lists_the_accepted_dtypes():
    """Issue 17: a finite 1e20 float32 input returned an inf covariance silently; an int64 input
    was told "must be floating point" without the accepted dtypes."""
    X = torch.tensor([[1e20, -2e20, 3e20], [1.0, 2.0, 0.0]])
    with pytest.raises(ValueError, match=r"covariance of X \(shape \(2, 3\), largest \|entry\| 3e\+20\) "
                                         r"overflowed float32.*float64"):
        svdlib.covariance(X)
    # the float64 remedy it names works
    P = svdlib.covariance(X.double())
    assert P[0, 0].item() == pytest.approx(np.var(X[0].double().numpy()), rel=1e-12)
    with pytest.raises(ValueError, match="X contains 1 NaN/Inf"):
        svdlib.covariance(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    assert not torch.isfinite(svdlib.covariance(X, check_finite=False)).all()  # the caller checks
    with pytest.raises(ValueError, match=r"X must have a real floating dtype \(float16/bfloat16/float32/float64\), "
                                         r"got torch.int64"):
        svdlib.covariance(torch.ones(2, 3, dtype=torch.int64))


def test_shape_messages_name_the_layout_in_one_wording():
    for fn, bad, message in [(svdlib.covariance, torch.ones(3), r"X must have at least 2 dimensions \(\.\.\., d, N\), got shape \(3,\)"),
                             (svdlib.eigh, torch.ones(3), r"A must have at least 2 dimensions \(\.\.\., n, n\), got shape \(3,\)"),
                             (svdlib.covariance, torch.ones(2, 0), r"X must have d >= 1 features and N >= 1 samples .*\(2, 0\)"),
                             (svdlib.sqrtm, torch.ones(0, 0), r"A must have n >= 1 .*\(0, 0\)")]:
        with pytest.raises(ValueError, match=message):
            fn(bad)


# ----------------------------------------------------------------------------- zero matrices
REMEDIES_WITHOUT_TIES_NAN = ["taylor", "pade", "clip", "truncate", "power_iteration", "divided_difference"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_floor_is_a_normal_number_relative_to_the_scale(dtype):
    """Issue 17: eps * max|lam| with max|lam| = 0 was a denormal (inv_sqrtm(0) = 2.7e22 I)."""
    from svdlib.matfuncs import default_floor

    finfo = torch.finfo(dtype)
    lam = torch.tensor([[0.0, 0.0], [0.0, 3.0], [0.0, 1e-3 * finfo.tiny]], dtype=dtype)
    floor = default_floor(lam, -0.5)
    assert (floor >= finfo.tiny).all()
    assert floor[1].item() == pytest.approx(3.0 * finfo.eps, rel=1e-6)
    assert default_floor(lam, 2) is None


@pytest.mark.parametrize("method", ["eigh", "newton_schulz"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_negative_powers_of_the_zero_matrix_raise_and_name_the_remedy(method, dtype):
    A = torch.stack([torch.eye(2, dtype=dtype), torch.zeros(2, 2, dtype=dtype)])
    with pytest.raises(ValueError, match=r"A\[1\] is the zero matrix.*eps > 0"):
        svdlib.inv_sqrtm(A, method=method)
    torch.testing.assert_close(svdlib.inv_sqrtm(A, method=method, eps=0.25, iterations=30)[1],
                               2 * torch.eye(2, dtype=dtype))
    if method == "eigh":
        with pytest.raises(ValueError, match="zero matrix"):
            svdlib.powm(A, -1.0)
        torch.testing.assert_close(svdlib.inv_sqrtm(A, min_eigenvalue=0.04)[1], 5 * torch.eye(2, dtype=dtype))


@pytest.mark.parametrize("backward", REMEDIES_WITHOUT_TIES_NAN)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_positive_powers_of_the_zero_matrix_are_zero_with_zero_gradient(backward, dtype):
    """sqrtm(0) = 0 and its gradient, infinite in the limit, is defined as 0 (issue 17: 1e22);
    the other matrix of the batch is untouched. (``exact`` is NaN at the zero matrix's ties, as at
    every exact tie: it is the plain-SVD reference.)"""
    P = matrix_with_spectrum([1.0, 4.0], seed=5, dtype=dtype)
    A = torch.stack([torch.zeros(2, 2, dtype=dtype), P]).requires_grad_()
    G = torch.randn(2, 2, 2, generator=torch.Generator().manual_seed(6), dtype=dtype)
    for p in (0.5, 1.5):
        A.grad = None
        Q = svdlib.powm(A, p, backward=backward)
        assert torch.equal(Q[0], torch.zeros(2, 2, dtype=dtype))
        (Q * G).sum().backward()
        assert torch.equal(A.grad[0], torch.zeros(2, 2, dtype=dtype))
        alone = P.clone().requires_grad_()
        (svdlib.powm(alone, p, backward=backward) * G[1]).sum().backward()
        # the same remedy on the same matrix, batched or not: measured 0 (also perturbed); bound 100 eps
        tol = 100 * torch.finfo(dtype).eps
        torch.testing.assert_close(A.grad[1], alone.grad, rtol=tol, atol=tol)
    X = torch.zeros(3, 3, dtype=dtype, requires_grad=True)
    Q = svdlib.sqrtm(X, method="newton_schulz")
    Q.sum().backward()
    assert torch.equal(Q.detach(), torch.zeros(3, 3, dtype=dtype)) and torch.equal(X.grad, torch.zeros(3, 3, dtype=dtype))


# ----------------------------------------------------------------------------- negative eigenvalues
def test_clearly_negative_eigenvalues_raise_instead_of_being_clamped():
    """Issue 17: inv_sqrtm(-A) returned ~2e7 I (every eigenvalue clamped at the floor)."""
    P = matrix_with_spectrum([0.5, 1.0, 3.0], seed=7)
    with pytest.raises(ValueError, match=r"A must be positive semi-definite for the matrix power p = -0.5: "
                                         r"it has the eigenvalue -3"):
        svdlib.inv_sqrtm(-P)
    batch = torch.stack([P, matrix_with_spectrum([-1e-3, 1.0, 2.0], seed=8)])
    with pytest.raises(ValueError, match=r"A\[1\] must be positive semi-definite for the matrix power p = 0.5: "
                                         r"it has the eigenvalue -0.001"):
        svdlib.sqrtm(batch)
    for kwargs in ({"backward": "exact"}, {"solver": "power_iteration_forward"}):  # unfolded paths too
        with pytest.raises(ValueError, match=r"A\[1\] must be positive semi-definite"):
            svdlib.sqrtm(batch, **kwargs)
    # positive integer powers accept any symmetric matrix; an explicit floor is the caller's
    torch.testing.assert_close(svdlib.powm(-P, 2), P @ P)
    torch.testing.assert_close(svdlib.inv_sqrtm(-P, min_eigenvalue=4.0), 0.5 * torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(svdlib.sqrtm(batch, eps=1e-3)[0], svdlib.sqrtm(P + 1e-3 * torch.eye(3, dtype=torch.float64)))
    with pytest.raises(ValueError, match=r"min_eigenvalue must be > 0 for p = -0.5"):
        svdlib.inv_sqrtm(P, min_eigenvalue=0.0)


def test_power_iteration_forward_never_refuses_a_positive_semi_definite_matrix():
    """Deflation leaves clearly negative eigenvalue estimates when the leading directions have
    not converged (close eigenvalues 9.0-10.2, 19 iterations): the input is positive definite,
    so the sign check reads the Rayleigh quotients u^T A u instead (found by `make reproduce`,
    notebook 12's PI runs: -0.011 against 14.6)."""
    A = matrix_with_spectrum([1e-4, 0.5, 1.0, 9.0, 9.6, 10.0, 10.2], seed=0)
    lam, U = svdlib.eigh(A, solver="power_iteration_forward")
    assert lam.min() < -1e-3                   # measured -0.0136: what the old check refused
    X = svdlib.inv_sqrtm(A, solver="power_iteration_forward")
    assert torch.isfinite(X).all()
    quotients = (U * (A @ U)).sum(-2)
    assert quotients.min() > 0                 # never negative for a positive definite A


def test_power_iteration_forward_survives_float32_covariances_near_1e20():
    """A diverging ZCA run fed float32 covariances with entries ~1e20: the norm of M v
    overflowed, every vector became 0 and inv_sqrtm refused the matrix as "the zero matrix"."""
    S = matrix_with_spectrum([1.0, 2.0, 5.0, 10.0, 40.0, 100.0], seed=4)
    A = (1e19 * S).float()                                   # entries up to ~1e21, finite in float32
    lam, U = svdlib.eigh(A, solver="power_iteration_forward")
    torch.testing.assert_close((U * U).sum(-2), torch.ones(6), rtol=0, atol=1e-5)
    assert abs(float(lam[-1]) / 1e21 - 1.0) < 1e-3           # the leading eigenvalue, 1e21
    assert torch.isfinite(svdlib.inv_sqrtm(A, solver="power_iteration_forward")).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rounding_level_negatives_of_covariances_are_floored_as_before(dtype):
    """Rank-deficient covariances have eigenvalues that are negative by rounding: they pass the
    check and are floored; on the span of the data (rank 3) the result is the float64 truth."""
    X = torch.randn(16, 12, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    X[:, 1] = X[:, 0]
    P = svdlib.covariance(X.to(dtype))
    assert torch.linalg.eigvalsh(P).amin() < 0  # the rounding this test is about
    A = P.clone().requires_grad_()
    Q = svdlib.sqrtm(A)
    Q.sum().backward()
    assert torch.isfinite(A.grad).all()
    lam, U = torch.linalg.eigh(P.double())
    span = U[..., -3:] @ U[..., -3:].transpose(-1, -2)
    truth = (U * lam.clamp_min(0).sqrt().unsqueeze(-2)) @ U.transpose(-1, -2)
    rel = (span @ (Q.double() - truth) @ span).norm(dim=(-1, -2)) / (span @ truth @ span).norm(dim=(-1, -2))
    # measured 6.4e-7 (float32) and 1.5e-15 (float64), also under make test-perturbed; bound 100 eps
    assert rel.max() < 100 * torch.finfo(dtype).eps
    svdlib.inv_sqrtm(P)  # no error


# ----------------------------------------------------------------------------- Newton-Schulz
def test_newton_schulz_sqrtm_validates_its_arguments_and_reports_failure():
    """Issue 17: the public newton_schulz_sqrtm returned NaN on indefinite input, unvalidated."""
    P = matrix_with_spectrum([0.6, 0.9, 1.3], seed=10)
    for bad, message in [(torch.ones(2, 3), "square"), (torch.ones(2, 2, dtype=torch.int64), "real floating dtype"),
                         (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "NaN/Inf"),
                         (-P, r"A has trace -2.8 <= 0, so it is not positive semi-definite"),
                         (torch.zeros(2, 2), "zero matrix, which has no inverse square root")]:
        with pytest.raises(ValueError, match=message):
            svdlib.newton_schulz_sqrtm(bad)
    for iterations in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="iterations must be an integer >= 1"):
            svdlib.newton_schulz_sqrtm(P, iterations)
    indefinite = matrix_with_spectrum([-1.0, 2.0, 3.0], seed=11)  # positive trace
    with pytest.raises(ValueError, match=r"diverged on A .*not positive semi-definite"):
        svdlib.newton_schulz_sqrtm(indefinite, 20)
    with pytest.raises(ValueError, match=r"diverged on A\[1\] "):
        svdlib.sqrtm(torch.stack([P, indefinite]), method="newton_schulz", iterations=20)
    root, inv_root = svdlib.newton_schulz_sqrtm(P, 30)
    torch.testing.assert_close(root @ inv_root, torch.eye(3, dtype=torch.float64))
