"""The two-step Pre-SVD model of eq. 10 (Song et al., ECCV 2022, sec. 4.1):
C = (W - eta G) Y Y^T (W - eta G)^T, and each treatment's effect on cond(C)."""
import numpy as np
import pytest
import torch

from svdlib.ortho import optimal_learning_rate
from svdlib.ortho.toy import parse_treatment, simulate, spiked_gradient_draws, two_step_covariance

F64 = torch.float64



D, N_IN, SAMPLES, LR = 16, 32, 256, 0.1


def _cond(C):
    lam = torch.linalg.eigvalsh(C)
    return float(lam[-1] / lam[0])


def _draws(sign, count, seed):
    """Kaiming-like W (16 x 32), inputs Y, and a gradient dominated by a rank-1 spike on W's
    leading singular pair with lr * beta in [5, 10] (see spiked_gradient_draws)."""
    return spiked_gradient_draws(sign, count, d=D, n=N_IN, samples=SAMPLES, lr=LR, seed=seed)


def test_plain_step_is_eq10():
    W, G, Y = next(_draws(-1, 1, seed=0))
    C, W1 = two_step_covariance(W, G, Y, LR, "plain")
    torch.testing.assert_close(W1, W - LR * G, atol=1e-14, rtol=0)
    torch.testing.assert_close(C, (W - LR * G) @ Y @ Y.T @ (W - LR * G).T, atol=1e-11, rtol=0)


def test_each_treatment_lowers_cond_when_the_step_reinforces_the_leading_direction():
    for W, G, Y in _draws(-1, 8, seed=1):
        plain = _cond(two_step_covariance(W, G, Y, LR, "plain")[0])
        assert plain > 3 * _cond(W @ Y @ Y.T @ W.T)  # the plain step really degrades C
        for treatment in ("SN", "OL", "OW", "NOG", "NOG+OW", "NOG+SN"):
            treated = _cond(two_step_covariance(W, G, Y, LR, treatment, ol_coefficient=1.0)[0])
            assert treated < plain, treatment
        # <G, W> < 0 here, so eta* < 0 and the switch of eq. 21 keeps lr: OLR cannot help,
        # and it changes nothing (exactly plain SGD)
        assert float(optimal_learning_rate(W, G, LR)) == LR
        olr = _cond(two_step_covariance(W, G, Y, LR, "OLR")[0])
        assert olr == pytest.approx(plain, rel=1e-10)


def test_each_treatment_lowers_cond_when_the_step_overshoots_the_leading_direction():
    for W, G, Y in _draws(+1, 8, seed=2):
        plain = _cond(two_step_covariance(W, G, Y, LR, "plain")[0])
        assert float(optimal_learning_rate(W, G, LR)) < LR  # OLR's switch picks eta*
        for treatment in ("OLR", "SN", "OW", "NOG", "NOG+OLR", "NOG+OW+OLR"):
            treated = _cond(two_step_covariance(W, G, Y, LR, treatment)[0])
            assert treated < plain, treatment


def test_simulation_is_deterministic_and_orthogonal_weight_keeps_c_well_conditioned():
    a = simulate("plain", steps=30, seed=3)
    b = simulate("plain", steps=30, seed=3)
    np.testing.assert_array_equal(a["condition"], b["condition"])
    ow = simulate("OW", steps=30, seed=3)
    assert np.median(ow["condition"][-10:]) < np.median(a["condition"][-10:]) / 3
    assert ow["orthogonality_error"].max() < 1e-10
    nog_olr = simulate("NOG+OLR", steps=5, seed=3)
    assert np.isfinite(nog_olr["condition"]).all() and (nog_olr["eta"] <= 0.05).all()


def test_parse_treatment():
    assert parse_treatment("plain") == frozenset()
    assert parse_treatment("nog+OW") == {"NOG", "OW"}
    with pytest.raises(ValueError, match="unknown parts"):
        parse_treatment("NOG+XYZ")
    with pytest.raises(ValueError, match="SN and OW"):
        parse_treatment("SN+OW")
