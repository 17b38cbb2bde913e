"""Issue 10: the exact divided-difference (Daleckii-Krein) gradient of matrix functions."""
from __future__ import annotations

import pytest
import scipy.linalg
import torch

import svdlib
from svdlib.divided_difference import divided_difference_matrix
from _spine_helpers import matrix_with_spectrum


@pytest.mark.parametrize("p", [0.5, -0.5, 0.3, -1.0, 1.7, 2.0])
def test_jacobian_equals_jacrev_of_float64_reference_on_separated_spectrum(p):
    A = matrix_with_spectrum([0.4, 0.9, 1.6, 2.5, 5.0], seed=p.__hash__() % 100)

    def reference(a):
        lam, U = torch.linalg.eigh(a)
        return (U * lam.pow(p).unsqueeze(-2)) @ U.T

    J_ref = torch.func.jacrev(reference)(A)
    J_ref = 0.5 * (J_ref + J_ref.transpose(-1, -2))
    J = torch.func.jacrev(lambda a: svdlib.powm(a, p, backward="divided_difference"))(A)
    torch.testing.assert_close(J, J_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("p", [0.5, -0.5, 0.3, 2.5])
def test_divided_differences_are_accurate_near_ties_and_equal_the_derivative_at_ties(p):
    lam0 = 1.3
    for delta in [1e-3, 1e-6, 1e-9, 1e-12]:
        lam = torch.tensor([lam0, lam0 * (1 + delta)], dtype=torch.float64)
        F = divided_difference_matrix(lam, p)
        # mpmath-free reference: the mean value theorem series, f'(m) + f'''(m) h^2/24, h = gap
        m, h = float(lam.mean()), lam0 * delta
        ref = p * m ** (p - 1) + p * (p - 1) * (p - 2) * m ** (p - 3) * h**2 / 24
        assert F[0, 1].item() == pytest.approx(ref, rel=1e-9)
    F = divided_difference_matrix(torch.tensor([lam0, lam0], dtype=torch.float64), p)
    torch.testing.assert_close(F, torch.full((2, 2), p * lam0 ** (p - 1), dtype=torch.float64))


def test_float32_near_ties_stay_accurate():
    lam = torch.tensor([1.0, 1.0 + 2e-7, 4.0])
    F = divided_difference_matrix(lam, 0.3)
    assert F[0, 1].item() == pytest.approx(0.3, rel=1e-5)
    assert torch.isfinite(F).all()


def test_gradient_at_exact_ties_and_at_the_floor_is_finite_and_analytic():
    # A = c I exactly: sqrtm gradient is G / (2 sqrt(c)) for any symmetric G.
    c = 2.0
    A = (c * torch.eye(4, dtype=torch.float64)).requires_grad_()
    G = matrix_with_spectrum([-1.0, 0.5, 1.0, 3.0], seed=5)
    (svdlib.sqrtm(A, backward="divided_difference") * G).sum().backward()
    torch.testing.assert_close(A.grad, G / (2 * c**0.5))
    # exactly singular: eigenvalue 0 floored at min_eigenvalue; gradient = the limit at the floor
    floor = 1e-6
    A = torch.diag(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).requires_grad_()
    (svdlib.inv_sqrtm(A, backward="divided_difference", min_eigenvalue=floor) * torch.eye(3, dtype=torch.float64)).sum().backward()
    expected = torch.tensor([-0.5 * floor**-1.5, -0.5 * floor**-1.5, -0.5], dtype=torch.float64)
    torch.testing.assert_close(A.grad.diagonal(), expected)


def _sylvester_sqrt_gradient(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Independent reference: dL/dA for Q = sqrtm(A) solves Q X + X Q = sym(G) (scipy)."""
    Q = scipy.linalg.sqrtm(A.numpy()).real
    Gs = 0.5 * (G.numpy() + G.numpy().T)
    return torch.from_numpy(scipy.linalg.solve_sylvester(Q, Q, Gs))


def test_rank_deficient_covariances_only_divided_difference_keeps_the_gradient_energy():
    """The issue's measurement, small: rank-deficient covariance + eps I, sqrt gradient
    error of every remedy against the Sylvester reference."""
    g = torch.Generator().manual_seed(6)
    X = torch.randn(32, 12, generator=g, dtype=torch.float64)  # 32 features, 12 samples
    A = svdlib.covariance(X) + 1e-3 * torch.eye(32, dtype=torch.float64)
    G = torch.randn(32, 32, generator=g, dtype=torch.float64)
    ref = _sylvester_sqrt_gradient(A, G)

    def rel_error(backward, **opts):
        a = A.clone().requires_grad_()
        (svdlib.sqrtm(a, backward=backward, **opts) * G).sum().backward()
        return ((a.grad - ref).norm() / ref.norm()).item()

    errors = {
        "divided_difference": rel_error("divided_difference"),
        "taylor": rel_error("taylor", degree=100),
        "clip": rel_error("clip"),
        "power_iteration": rel_error("power_iteration"),
        "truncate": rel_error("truncate"),
    }
    assert errors["divided_difference"] < 1e-9, errors
    for name, err in errors.items():
        if name != "divided_difference":
            assert err > 1e3 * errors["divided_difference"], errors
    assert errors["taylor"] > 0.05, errors  # the null-space cluster's contribution is lost


def test_positive_integer_powers_of_indefinite_matrices():
    """Positive integer powers take any symmetric matrix (issue 17's property test found NaN:
    the general formula takes log(max(lam_i, lam_j)), which needs lam > 0). Checked against the
    closed form d tr(G^T A^2)/dA = sym(G) A + A sym(G)."""
    A = matrix_with_spectrum([-3.0, -1.0, 0.5, 2.0], seed=20)
    G = torch.randn(4, 4, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    X = A.clone().requires_grad_()
    (svdlib.powm(X, 2, backward="divided_difference") * G).sum().backward()
    S = 0.5 * (G + G.T)
    # measured 1e-15 relative; bound 1e-12
    torch.testing.assert_close(X.grad, S @ A + A @ S, rtol=1e-12, atol=1e-12)
    lam = torch.tensor([-2.0, 1.0, 3.0], dtype=torch.float64)
    li, lj = lam[:, None], lam[None, :]
    torch.testing.assert_close(divided_difference_matrix(lam, 3), li**2 + li * lj + lj**2)
