"""svdlib.analysis (notebook 03's measurements) against independent references, float64."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

import svdlib
from svdlib import analysis, remedies
from _spine_helpers import matrix_with_spectrum


def _sym(G):
    return 0.5 * (G + G.transpose(-1, -2))


def _jacrev_gradient(A, G, p):
    """dL/dA of L = <G, U lam^p U^T> by torch.func.grad through torch.linalg.eigh (float64)."""
    def loss(a):
        lam, U = torch.linalg.eigh(_sym(a))
        return ((U * lam.pow(p).unsqueeze(-2)) @ U.transpose(-1, -2) * G).sum()
    return _sym(torch.func.grad(loss)(A))


@pytest.mark.parametrize("function,p", [("sqrtm", 0.5), ("inv_sqrtm", -0.5)])
def test_sylvester_reference_equals_jacrev_on_separated_spectrum(function, p):
    A = matrix_with_spectrum([[0.3, 0.8, 1.5, 2.9, 6.0], [0.1, 0.5, 1.0, 4.0, 9.0]], seed=1)
    G = torch.randn(2, 5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = _jacrev_gradient(A, G, p)
    torch.testing.assert_close(analysis.sylvester_sqrt_gradient(A, G, function), ref, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(analysis.exact_sqrt_gradient(A, G, function), ref, rtol=1e-12, atol=1e-13)


def test_sylvester_reference_at_a_scalar_matrix_is_the_analytic_limit():
    # at A = c I every eigenvalue is tied: d sqrt(A) = dA / (2 sqrt c), d A^{-1/2} = -dA / (2 c^{3/2})
    c = 2.5
    A = c * torch.eye(4, dtype=torch.float64)
    G = torch.randn(4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(analysis.sylvester_sqrt_gradient(A, G), _sym(G) / (2 * math.sqrt(c)))
    torch.testing.assert_close(analysis.sylvester_sqrt_gradient(A, G, "inv_sqrtm"), -_sym(G) / (2 * c**1.5))
    assert not torch.isfinite(analysis.exact_sqrt_gradient(A, G)).all()  # 1/(lam_i - lam_j) = 1/0


def test_remedy_errors_on_separated_spectrum_and_taylor_truncation():
    lam = 2.0 ** torch.arange(6, dtype=torch.float64)
    A = analysis.matrices_with_spectrum(lam, batch=2, seed=4)
    G = torch.randn(2, 6, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    errs = analysis.remedy_gradient_errors(A, G, ["exact", "pade", "divided_difference", "taylor(9)", "clip"])
    for label in ("exact", "pade", "divided_difference", "clip"):
        assert errs[label].rel_error.max() < 1e-10, (label, errs[label].summary())
        np.testing.assert_allclose(errs[label].norm_ratio, 1.0, atol=1e-10)
    # Taylor(9) keeps 1 + x + ... + x^9 of 1/(1-x); the worst pair has x = 1/2, so the error is
    # small but not rounding: between 0.5^10 / 100 and 0.5^10 relative
    assert 0.5**10 / 100 < errs["taylor(9)"].rel_error.min() and errs["taylor(9)"].rel_error.max() < 0.5**10
    same = analysis.remedy_gradient_errors(A, G, ["divided_difference"], reference="exact")
    assert same["divided_difference"].rel_error.max() < 1e-12


def test_k_remedies_drop_exactly_the_tied_block_at_exact_ties():
    """At a diagonal A with a tied block, the true sqrt gradient is F o sym(G), F_ij =
    1/(sqrt(l_i) + sqrt(l_j)); every K-form remedy multiplies K~ by f_i - f_j = 0 inside the
    block, so it loses exactly the block's off-diagonal part."""
    lam = torch.tensor([2.0, 1.0, 1.0, 1.0, 3.0, 5.0], dtype=torch.float64)
    A = torch.diag(lam).unsqueeze(0)
    G = torch.randn(1, 6, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    s = lam.sqrt()
    full = _sym(G[0]) / (s[:, None] + s[None, :])
    tied = (lam[:, None] == lam[None, :]) & ~torch.eye(6, dtype=torch.bool)
    expected = (full[tied].norm() / full.norm()).item()
    errs = analysis.remedy_gradient_errors(A, G, ["exact", "clip", "taylor(100)", "pade", "divided_difference"])
    assert not errs["exact"].finite.any() and errs["exact"].rel_error[0] == math.inf
    for label in ("clip", "taylor(100)", "pade"):
        assert errs[label].rel_error[0] == pytest.approx(expected, rel=1e-10), label
        assert errs[label].norm_ratio[0] == pytest.approx(math.sqrt(1 - expected**2), rel=1e-10)
    assert errs["divided_difference"].rel_error[0] < 1e-14


def test_rank_deficient_covariances_have_the_eps_cluster():
    d, n, eps = 12, 5, 1e-3
    A = analysis.rank_deficient_covariances(d, n, batch=3, eps=eps, seed=7)
    lam = torch.linalg.eigvalsh(A)
    torch.testing.assert_close(lam[:, : d - n + 1], torch.full((3, d - n + 1), eps, dtype=torch.float64),
                               rtol=0, atol=1e-13)
    assert (lam[:, d - n + 1:] > 10 * eps).all()


def test_effective_k_reads_the_remedies_k_matrices():
    lam = torch.tensor([0.0, 1e-12, 0.3, 0.3, 0.9, 1.0], dtype=torch.float64)
    cases = {
        ("clip", ()): remedies.k_clip(lam),
        ("taylor", (("degree", 9),)): remedies.k_taylor(lam, 9),
        ("taylor", (("degree", 100),)): remedies.k_taylor(lam, 100),
        ("pade", ()): remedies.k_pade(lam),
    }
    for (backward, opts), ref in cases.items():
        torch.testing.assert_close(analysis.effective_k(lam, backward, **dict(opts)), ref, rtol=1e-14, atol=0)
    separated = torch.tensor([0.1, 0.3, 0.9, 1.0], dtype=torch.float64)
    torch.testing.assert_close(analysis.effective_k(separated, "exact"), remedies.k_exact(separated),
                               rtol=1e-14, atol=0)
    # at the 0.3 / 0.3 tie the exact K is inf and the backward's matrix products (0 * inf)
    # turn every off-diagonal entry of the probe NaN, as they would turn a real gradient NaN
    off_diagonal = ~torch.eye(6, dtype=torch.bool)
    assert not torch.isfinite(analysis.effective_k(lam, "exact")[off_diagonal]).any()
    Kt = analysis.effective_k(lam, "truncate")  # directions below 1e-5 have no K
    assert Kt[:2].abs().max() == 0 and Kt[:, :2].abs().max() == 0 and Kt[3, 2] == 1e10
    with pytest.raises(ValueError, match="K-form remedy"):
        analysis.effective_k(lam, "power_iteration")


def test_k_versus_gap_limits_and_bounds():
    omx = [1e-1, 1e-4, 1e-9, 0.0]
    k = analysis.k_versus_gap(omx, lam_max=2.0)
    x = 1.0 - np.array(omx[:3])
    np.testing.assert_allclose(k["exact"][:3], 1.0 / (2.0 - 2.0 * x), rtol=1e-12)
    np.testing.assert_allclose(k["pade"][:2], k["exact"][:2], rtol=1e-9)
    assert math.isnan(k["exact"][3])  # 1/0 at the tie
    # Taylor: at x -> 1 the degree-K polynomial -> (K + 1) / lam_max
    assert k["taylor(9)"][3] == pytest.approx(10 / 2.0) and k["taylor(100)"][3] == pytest.approx(101 / 2.0)
    assert k["clip"][3] == 100.0 and k["clip"][0] == pytest.approx(5.0)
    # Padé at the tie: the overflow patch takes the largest other |K~| of the same matrix
    with_context = analysis.k_versus_gap([0.0], context=[0.5])
    assert with_context["pade"][0] == pytest.approx(2.0)  # 1 / (1 - 0.5)


def test_k_matrix_bound_table():
    rows = analysis.k_matrix_bound_table({"ties": [1.0, 1.0, 2.0], "singular": [0.0, 0.0, 1e-17, 1.0]})
    by = {(r["spectrum"], r["remedy"]): r for r in rows}
    assert not by[("ties", "exact")]["finite"] and not by[("ties", "exact")]["within_bound"]
    assert by[("singular", "taylor(9)")]["max_abs_k"] == pytest.approx(10 / 1e-10)  # (K+1)/eps reached
    assert all(by[(s, r)]["within_bound"] for s in ("ties", "singular") for r in ("clip", "taylor(9)", "taylor(100)"))
    assert by[("ties", "clip")]["bound"] == 100.0 and by[("ties", "pade")]["bound"] == math.inf


def test_pade_common_factor_and_the_mpmath_construction():
    a, b = remedies.pade_coefficients(np.ones(21), 10, 10)
    assert analysis.pade_common_factor(a, b) < 1e-14
    # exp's [2/2] Padé is not 1/(1-x): the check must see a difference
    a_exp, b_exp = remedies.pade_coefficients([1 / math.factorial(k) for k in range(5)], 2, 2)
    assert analysis.pade_common_factor(a_exp, b_exp) > 0.1
    mpmath = pytest.importorskip("mpmath")
    am, bm = analysis.pade_coefficients_mpmath(25, 25)
    assert analysis.pade_common_factor(am, bm) < 1e-10
    x = np.linspace(0.0, 0.99, 25)
    np.testing.assert_allclose(np.polyval(am[::-1], x) / np.polyval(bm[::-1], x), 1 / (1 - x), rtol=1e-8)
    # a different solution of the same rank-one system than svdlib's minimum-norm one
    a_min, b_min = remedies.pade_coefficients(np.ones(51), 25, 25)
    assert np.abs(bm - b_min).max() > 1e-3
    # at low order mpmath's numerical Taylor coefficients are exactly 1: the system is singular
    with pytest.raises(ZeroDivisionError):
        analysis.pade_coefficients_mpmath(10, 10)
    with pytest.raises(ZeroDivisionError):
        mpmath.pade([1] * 51, 25, 25)


def test_newton_schulz_scalar_response_matches_the_matrix_iteration_and_is_damped():
    lam = torch.tensor([1e-4, 1e-2, 0.3, 1.0, 2.0], dtype=torch.float64)
    A = matrix_with_spectrum(lam, seed=8)
    root, _ = svdlib.newton_schulz_sqrtm(A, iterations=5)
    trace = lam.sum().item()
    t = lam.numpy() / trace
    expected = np.sqrt(trace) * analysis.newton_schulz_scalar_response(t, 5) * np.sqrt(t)
    np.testing.assert_allclose(torch.linalg.eigvalsh(root).numpy(), np.sort(expected), rtol=1e-10)
    grid = np.logspace(-8, 0, 50)
    r = analysis.newton_schulz_scalar_response(grid, 5)
    assert np.all(r <= 1 + 1e-12) and np.all(np.diff(r) >= -1e-12)  # damped, monotone in t
    assert analysis.newton_schulz_scalar_response([0.25], 30)[0] == pytest.approx(1.0, abs=1e-12)
    # Frobenius error of the matrix root = closed form from the scalar response
    err = analysis.newton_schulz_relative_error(A, 5)[0]
    closed = np.sqrt(np.sum(lam.numpy() * (analysis.newton_schulz_scalar_response(t) - 1) ** 2) / trace)
    assert err == pytest.approx(closed, rel=1e-8)
    # kappa = 1: all n eigenvalues of A/tr(A) are 1/n, the error is |y_5(1/n)/sqrt(1/n) - 1|
    e1 = analysis.newton_schulz_error_vs_condition([1.0], n=16)[0]
    assert e1 == pytest.approx(1 - analysis.newton_schulz_scalar_response([1 / 16])[0], rel=1e-8)


def test_timing_helpers_rank_and_restore_threads():
    threads = torch.get_num_threads()
    times = analysis.median_times({"short": lambda: time.sleep(0.002), "long": lambda: time.sleep(0.012)},
                                  repeats=3, warmup=0, clock="wall")
    assert times["long"] > 2 * times["short"] > 0
    # the default clock counts CPU time: sleeping costs (almost) none, working does
    def work():
        return sum(i * i for i in range(200_000))
    cpu = analysis.median_times({"sleep": lambda: time.sleep(0.02), "work": work}, repeats=3, warmup=0)
    assert cpu["sleep"] < 0.005 < cpu["work"]
    assert torch.get_num_threads() == threads
    rows = analysis.remedy_costs(sizes=(6,), variants=["taylor(9)", "divided_difference", "newton_schulz"],
                                 batch=2, repeats=1)
    assert [r["label"] for r in rows] == ["taylor(9)", "divided_difference", "newton_schulz"]
    assert rows[-1]["ratio"] == 1.0 and all(r["seconds"] > 0 for r in rows)


def test_validation_errors_name_the_argument():
    A = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="reference must be one of"):
        analysis.remedy_gradient_errors(A, A, ["exact"], reference="scipy")
    with pytest.raises(ValueError, match="function must be one of"):
        analysis.sylvester_sqrt_gradient(A, A, function="logm")
    with pytest.raises(ValueError, match="variants: unknown label 'svd'"):
        analysis.remedy_gradient_errors(A, A, ["svd"])
    with pytest.raises(ValueError, match=r"G must have the shape of A \(3, 3\)"):
        analysis.sylvester_sqrt_gradient(A, torch.eye(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="backward must be one of"):
        analysis.remedy_gradient_errors(A, A, {"x": analysis.Variant("eigh", "nope")})
    with pytest.raises(ValueError, match="clock must be one of"):
        analysis.median_time(lambda: None, clock="cpu")
    with pytest.raises(ValueError, match="baseline 'newton_schulz' must be one of"):
        analysis.remedy_costs(sizes=(4,), variants=["exact"])
