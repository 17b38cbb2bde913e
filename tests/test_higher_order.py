"""Issue 19: forward mode and second derivatives of svdlib.eigh and the matrix functions.

Exact where the gradient is exact (divided_difference, exact), against independent references
(mpmath, torch.func.hessian of plain torch.linalg.eigh, finite differences of the gradient,
the Sylvester identity of the square root); a clear error where a remedy has no second
derivative; never a silent wrong number. Every comparison here is basis-independent (matrix
functions, or sign-invariant eigenvector losses), so it holds on any eigensolver.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch

import svdlib
from svdlib.divided_difference import (
    second_divided_difference,
    second_divided_difference_tensor,
    second_order_product,
)
from _spine_helpers import matrix_with_spectrum, sign_invariant_loss

F64 = torch.float64
SEPARATED = [0.2, 0.5, 1.3, 2.1, 3.7]   # eigenvalues >= 0.2, gaps >= 0.3: no tie
TIED = [0.5, 1.0, 1.0, 1.0, 3.0]        # a triple eigenvalue


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _randn(*shape, seed: int, symmetric: bool = False) -> torch.Tensor:
    X = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return X + X.transpose(-1, -2) if symmetric else X


MATRIX_FUNCTIONS = {
    "sqrtm": (lambda a, **k: svdlib.sqrtm(a, **k), 0.5),
    "inv_sqrtm": (lambda a, **k: svdlib.inv_sqrtm(a, **k), -0.5),
    "powm_0.3": (lambda a, **k: svdlib.powm(a, 0.3, **k), 0.3),
    "powm_2": (lambda a, **k: svdlib.powm(a, 2, **k), 2.0),
}


def _plain(p):
    """The matrix power through torch.linalg.eigh and its own autograd: the reference."""
    def f(a):
        lam, U = torch.linalg.eigh(0.5 * (a + a.transpose(-1, -2)))
        return (U * lam.pow(p).unsqueeze(-2)) @ U.transpose(-1, -2)
    return f


def _loss(f, W):
    """A loss nonlinear in the matrix function (a linear one has a zero Hessian in Q)."""
    return lambda a: (f(a) * W).sum() ** 2 + (f(a) ** 3).sum()


def _gradient(L, a):
    a = a.detach().clone().requires_grad_(True)
    return torch.autograd.grad(L(a), a)[0]


def _hvp(L, a, v):
    """Hessian-vector product by double backward (create_graph=True)."""
    a = a.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(L(a), a, create_graph=True)
    return torch.autograd.grad((grad * v).sum(), a)[0]


# ----------------------------------------------------------------------------- divided differences
def _mp_second(a: float, b: float, c: float, p: float):
    """f[a, b, c] of x^p in 60-digit arithmetic, ties by their limits."""
    import mpmath

    mpmath.mp.dps = 60
    f = lambda x: x ** mpmath.mpf(p)  # noqa: E731
    d1 = lambda x: mpmath.mpf(p) * x ** (mpmath.mpf(p) - 1)  # noqa: E731
    a, b, c = sorted(map(mpmath.mpf, (a, b, c)))
    if a == c:
        return mpmath.mpf(p) * (mpmath.mpf(p) - 1) / 2 * a ** (mpmath.mpf(p) - 2)
    first = lambda x, y: d1(x) if x == y else (f(x) - f(y)) / (x - y)  # noqa: E731
    return (first(c, b) - first(b, a)) / (c - a)


@pytest.mark.parametrize("p", [0.5, -0.5, 0.3, -1.0, 1.7, 2.5, -2.3, 2.0, 3.0])
def test_second_divided_differences_match_mpmath_at_all_spreads(p):
    pytest.importorskip("mpmath")
    rng = np.random.default_rng(7)
    worst = 0.0
    for trial in range(120):
        base = 10 ** rng.uniform(-3, 3)
        spread = 10 ** rng.uniform(-14, 1)      # from rounding-level near-ties to a factor of 10
        a, b, c = base, base * (1 + spread * rng.random()), base * (1 + spread * rng.random())
        if trial % 10 == 0:
            b = a                              # a pair tie
        if trial % 17 == 0:
            b = c = a                          # a triple tie
        t = torch.tensor([a, b, c], dtype=F64)
        value = float(second_divided_difference(t[0], t[1], t[2], p))
        ref = _mp_second(*t.tolist(), p)
        worst = max(worst, abs(value - float(ref)) / max(abs(float(ref)), 1e-300))
    # measured worst 1.3e-14 (p = 0.3: above spread 1/16 the recursion amplifies rounding by up
    # to 4/(spread |p - 1|) ~ 90), <= 4.6e-15 for the other general p, <= 6e-16 closed forms
    assert worst < 2e-13


@pytest.mark.parametrize("p", [0.5, -0.5, 2.0, 3.0, 0.3, -1.3])
def test_second_order_product_contracts_the_second_divided_differences(p, monkeypatch):
    """The separable forms (p = +-1/2, integers) and the sliced contraction equal
    Z_ij = sum_k f[l_i, l_k, l_j] (X_ik Y_kj + Y_ik X_kj) written with the full tensor."""
    lam = torch.rand(3, 6, generator=torch.Generator().manual_seed(2), dtype=F64) * 3 + 0.1
    X, Y = _randn(3, 6, 6, seed=3, symmetric=True), _randn(3, 6, 6, seed=4, symmetric=True)
    T = second_divided_difference_tensor(lam, p)
    ref = torch.einsum("...ikj,...ik,...kj->...ij", T, X, Y) + torch.einsum("...ikj,...ik,...kj->...ij", T, Y, X)
    assert _rel(second_order_product(lam, X, Y, p), ref) < 1e-13   # measured <= 2.5e-16
    monkeypatch.setattr(svdlib.divided_difference, "_CHUNK_ELEMENTS", 50)  # one slice of k at a time
    assert _rel(second_order_product(lam, X, Y, p), ref) < 1e-13   # measured 2.1e-16


# ----------------------------------------------------------------------------- forward mode
def _adjointness_gap(f, A: torch.Tensor, seed: int) -> float:
    """|<vjp(g), v> - <g, jvp(v)>| relative to the sizes of both sides (0 up to rounding)."""
    out, vjp = torch.func.vjp(f, A)
    outs = out if isinstance(out, tuple) else (out,)
    gs = tuple(_randn(*o.shape, seed=seed + i) for i, o in enumerate(outs))
    (grad,) = vjp(gs if isinstance(out, tuple) else gs[0])
    v = _randn(*A.shape, seed=seed + 10)
    _, tangent = torch.func.jvp(f, (A,), (v,))
    tangents = tangent if isinstance(tangent, tuple) else (tangent,)
    lhs = float((grad * v).sum())
    rhs = sum(float((g * t).sum()) for g, t in zip(gs, tangents))
    scale = float(grad.norm() * v.norm()) + sum(float(g.norm() * t.norm()) for g, t in zip(gs, tangents))
    return abs(lhs - rhs) / scale


REMEDIES = [("exact", {}), ("clip", {"k_max": 5.0}), ("taylor", {}), ("pade", {}), ("truncate", {"cutoff": 0.3})]


@pytest.mark.parametrize("backward,options", REMEDIES)
def test_eigh_forward_and_reverse_mode_agree(backward, options):
    """jvp . vjp adjointness: the tangent uses the same remedied K~ (and kept mask) as the
    backward, on separated and (for bounded remedies) tied spectra."""
    f = lambda a: svdlib.eigh(a, backward=backward, **options)  # noqa: E731
    spectra = [SEPARATED] if backward == "exact" else [SEPARATED, TIED]
    for i, spectrum in enumerate(spectra):
        # measured <= 4.3e-17 (exact, clip, taylor, pade, truncate; ties included)
        assert _adjointness_gap(f, matrix_with_spectrum(spectrum, seed=3 + i), seed=20) < 1e-13


@pytest.mark.parametrize("backward,options", REMEDIES + [("divided_difference", {})])
@pytest.mark.parametrize("p", [0.5, -0.5, 0.3])
def test_matrix_function_forward_and_reverse_mode_agree(backward, options, p):
    f = lambda a: svdlib.powm(a, p, backward=backward, **options)  # noqa: E731
    # measured <= 1e-16 on both; the chain remedies (exact: K infinite, truncate: K~ clipped
    # at 1e10) are checked on the separated spectrum only, where K~ is moderate
    assert _adjointness_gap(f, matrix_with_spectrum(SEPARATED, seed=3), seed=30) < 1e-13
    if backward not in ("exact", "truncate"):
        assert _adjointness_gap(f, matrix_with_spectrum(TIED, seed=5), seed=40) < 1e-13


@pytest.mark.parametrize("spectrum", ["separated", "tied", "scalar"])
def test_divided_difference_tangent_is_the_frechet_derivative(spectrum):
    """Independent identities: Q = A^{1/2} gives Q dQ + dQ Q = dA, and S = A^{-1/2} gives
    dS A S + S A dS = -S dA S (differentiate Q Q = A and S A S = I), also at exact ties."""
    A = {"separated": matrix_with_spectrum(SEPARATED, seed=3), "tied": matrix_with_spectrum(TIED, seed=5),
         "scalar": 2.0 * torch.eye(5, dtype=F64)}[spectrum]
    V = _randn(5, 5, seed=6, symmetric=True)
    Q, dQ = torch.func.jvp(lambda a: svdlib.sqrtm(a, backward="divided_difference"), (A,), (V,))
    S, dS = torch.func.jvp(lambda a: svdlib.inv_sqrtm(a, backward="divided_difference"), (A,), (V,))
    assert _rel(Q @ dQ + dQ @ Q, V) < 1e-12                          # measured <= 2e-15
    assert _rel(dS @ A @ S + S @ A @ dS, -S @ V @ S) < 1e-12         # measured <= 1.3e-15


def test_divided_difference_tangent_is_finite_at_an_exact_tie():
    """At an exactly repeated eigenvalue (a diagonal matrix: every solver returns the tie
    exactly) the Fréchet derivative is bounded; it equals the Sylvester solution."""
    D = torch.diag(torch.tensor([1.0, 1.0, 2.0, 3.0], dtype=F64))
    V = _randn(4, 4, seed=7, symmetric=True)
    Q, dQ = torch.func.jvp(lambda a: svdlib.sqrtm(a, backward="divided_difference"), (D,), (V,))
    assert torch.isfinite(dQ).all()
    assert _rel(Q @ dQ + dQ @ Q, V) < 1e-12                          # measured 1e-16


def test_jacfwd_equals_jacrev_and_forward_ad():
    A = matrix_with_spectrum(SEPARATED, seed=3)
    f = lambda a: svdlib.inv_sqrtm(a, backward="divided_difference")  # noqa: E731
    J_fwd, J_rev = torch.func.jacfwd(f)(A), torch.func.jacrev(f)(A)
    J_rev = 0.5 * (J_rev + J_rev.transpose(-1, -2))   # reverse mode returns the symmetric gradient
    J_fwd = 0.5 * (J_fwd + J_fwd.transpose(-1, -2))
    assert _rel(J_fwd, J_rev) < 1e-13                                 # measured 2e-16
    V = _randn(5, 5, seed=8, symmetric=True)
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(f(fwAD.make_dual(A, V))).tangent
    assert _rel(tangent, torch.func.jvp(_plain(-0.5), (A,), (V,))[1]) < 1e-12   # measured 2e-16


# ----------------------------------------------------------------------------- second derivatives
@pytest.mark.parametrize("name", list(MATRIX_FUNCTIONS))
def test_divided_difference_hessian_vector_products_are_exact(name):
    """On a separated spectrum: the double-backward HVP equals torch.func.hessian of the plain
    torch.linalg.eigh chain and central differences of the gradient; every mode (reverse over
    reverse, forward over reverse, reverse over forward, forward over forward) agrees."""
    fn, p = MATRIX_FUNCTIONS[name]
    A = matrix_with_spectrum(SEPARATED, seed=3)
    W, V = _randn(5, 5, seed=1), _randn(5, 5, seed=2, symmetric=True)
    L = _loss(lambda a: fn(a, backward="divided_difference"), W)
    H_ref = torch.func.hessian(_loss(_plain(p), W))(A)
    hv = _hvp(L, A, V)
    assert _rel(hv, (H_ref * V).sum((-1, -2))) < 1e-12              # measured <= 1e-15
    h = 1e-5
    fd = (_gradient(L, A + h * V) - _gradient(L, A - h * V)) / (2 * h)
    assert _rel(hv, fd) < 1e-6          # central differences, error ~h^2: measured 8.6e-10 to 3.3e-8
    for mode in (torch.func.hessian(L), torch.func.jacrev(torch.func.jacrev(L)),
                 torch.func.jacrev(torch.func.jacfwd(L)), torch.func.jacfwd(torch.func.jacfwd(L))):
        assert _rel(mode(A), H_ref) < 1e-12                           # measured <= 1.4e-15


@pytest.mark.parametrize("name", ["sqrtm", "inv_sqrtm", "powm_0.3"])
def test_divided_difference_second_derivative_is_bounded_and_right_at_exact_ties(name):
    """A triple eigenvalue (rotated): the HVP is finite and equals central differences of the
    gradient, which is itself exact and smooth there."""
    fn, _ = MATRIX_FUNCTIONS[name]
    A = matrix_with_spectrum(TIED, seed=5)
    W, V = _randn(5, 5, seed=1), _randn(5, 5, seed=2, symmetric=True)
    L = _loss(lambda a: fn(a, backward="divided_difference"), W)
    hv = _hvp(L, A, V)
    h = 1e-5
    fd = (_gradient(L, A + h * V) - _gradient(L, A - h * V)) / (2 * h)
    assert torch.isfinite(hv).all()
    assert _rel(hv, fd) < 1e-6          # central differences, error ~h^2: measured 2.3e-9 to 1.6e-8


def test_second_frechet_derivative_at_a_scalar_matrix():
    """A = c I: L(A)[G] = G / (2 sqrt(c)) and D^2 f(A)[X, G] = f''(c)/2 (XG + GX) =
    -c^(-3/2)/8 (XG + GX) for the square root, in any basis."""
    c = 2.0
    A = (c * torch.eye(4, dtype=F64)).requires_grad_(True)
    G, X = _randn(4, 4, seed=3, symmetric=True), _randn(4, 4, seed=4, symmetric=True)
    (grad,) = torch.autograd.grad((svdlib.sqrtm(A, backward="divided_difference") * G).sum(), A, create_graph=True)
    (hv,) = torch.autograd.grad((grad * X).sum(), A)
    assert _rel(hv, -c**-1.5 / 8 * (X @ G + G @ X)) < 1e-13           # measured 3.8e-16


@pytest.mark.parametrize("label,fn", [
    ("sqrtm dd", lambda a: svdlib.sqrtm(a, backward="divided_difference")),
    ("inv_sqrtm dd", lambda a: svdlib.inv_sqrtm(a, backward="divided_difference")),
    ("powm 0.3 dd", lambda a: svdlib.powm(a, 0.3, backward="divided_difference")),
    ("powm 3 dd", lambda a: svdlib.powm(a, 3, backward="divided_difference")),
    ("sqrtm exact", lambda a: svdlib.sqrtm(a, backward="exact")),
    ("sqrtm newton_schulz", lambda a: svdlib.sqrtm(a, method="newton_schulz")),
])
def test_gradgradcheck(label, fn):
    A = matrix_with_spectrum([0.3, 0.7, 1.2, 2.0], seed=9).requires_grad_(True)
    # torch's tolerances (atol 1e-5, rtol 1e-3) against its own finite differences; the HVP
    # tests above hold the same derivatives to 1e-12
    assert torch.autograd.gradgradcheck(fn, (A,))


def test_eigh_exact_second_derivative_matches_plain_eigh():
    """An eigenvector loss through svdlib.eigh(backward="exact"): gradgradcheck, and the
    Hessian equals torch.func.hessian of torch.linalg.eigh (sign-invariant loss)."""
    A = matrix_with_spectrum(SEPARATED, seed=3)
    W, c = _randn(5, 5, seed=5, symmetric=True), _randn(5, seed=6)
    L = lambda a: sign_invariant_loss(*svdlib.eigh(a, backward="exact"), W, c)  # noqa: E731
    R = lambda a: sign_invariant_loss(*torch.linalg.eigh(0.5 * (a + a.T)), W, c)  # noqa: E731
    assert torch.autograd.gradgradcheck(lambda a: L(a).reshape(1), (A.clone().requires_grad_(True),))
    H_ref = torch.func.hessian(R)(A)
    for H in (torch.func.hessian(L)(A), torch.func.jacrev(torch.func.jacrev(L))(A)):
        assert _rel(H, H_ref) < 1e-12                                 # measured 2e-16


def test_batched_second_derivatives_equal_per_matrix_ones():
    """A batch (one matrix with a triple eigenvalue): vmap(hessian) and a batched double
    backward equal the same computed matrix by matrix."""
    A = matrix_with_spectrum(torch.tensor([[0.2, 0.5, 1.3, 2.1], [1.0, 1.0, 1.0, 2.0]], dtype=F64), seed=2)
    W, V = _randn(4, 4, seed=1), _randn(2, 4, 4, seed=2, symmetric=True)
    L = lambda a: ((svdlib.sqrtm(a, backward="divided_difference") * W) ** 2).sum()  # noqa: E731
    H = torch.func.vmap(torch.func.hessian(L))(A)
    assert _rel(H, torch.stack([torch.func.hessian(L)(a) for a in A])) < 1e-13    # measured 9e-17
    assert _rel(_hvp(L, A, V), torch.stack([_hvp(L, a, v) for a, v in zip(A, V)])) < 1e-13  # measured 7e-16


# ----------------------------------------------------------------------------- clear errors
@pytest.mark.parametrize("backward", ["taylor", "clip", "pade", "truncate", "power_iteration"])
def test_remedies_refuse_a_second_derivative_in_A(backward):
    A = matrix_with_spectrum(SEPARATED, seed=3).requires_grad_(True)
    W = _randn(5, 5, seed=1)
    Q = svdlib.sqrtm(A, backward=backward)
    (grad,) = torch.autograd.grad(((Q * W).sum()) ** 2, A, create_graph=True)  # building the graph is fine
    with pytest.raises(NotImplementedError, match=f"backward='{backward}' has no second derivative"):
        grad.pow(2).sum().backward()
    with pytest.raises(NotImplementedError, match=f"backward='{backward}'"):
        torch.func.hessian(lambda a: (svdlib.sqrtm(a, backward=backward) * W).sum() ** 2)(A.detach())


@pytest.mark.parametrize("backward", ["taylor", "clip", "pade"])
def test_remedied_gradient_stays_differentiable_in_the_incoming_gradient(backward):
    """The double-backward trick of torch.autograd.functional.jvp differentiates the backward
    in its incoming gradient only (linear, no second derivative in A): it gives the remedied
    tangent, equal to the jvp rule's."""
    A, V = matrix_with_spectrum(SEPARATED, seed=3), _randn(5, 5, seed=2, symmetric=True)
    f = lambda a: svdlib.sqrtm(a, backward=backward)  # noqa: E731
    via_double_backward = torch.autograd.functional.jvp(f, A, V)[1]
    assert _rel(via_double_backward, torch.func.jvp(f, (A,), (V,))[1]) < 1e-13   # measured 2e-16


def test_eigh_remedies_refuse_a_second_derivative():
    A = matrix_with_spectrum(SEPARATED, seed=3)
    W, c = _randn(5, 5, seed=5, symmetric=True), _randn(5, seed=6)
    for backward in ("taylor", "clip", "power_iteration"):
        L = lambda a: sign_invariant_loss(*svdlib.eigh(a, backward=backward), W, c)  # noqa: E731
        with pytest.raises(NotImplementedError, match="has no second derivative"):
            torch.autograd.gradgradcheck(lambda a: L(a).reshape(1), (A.clone().requires_grad_(True),))


def test_power_iteration_has_no_forward_mode():
    A = matrix_with_spectrum(SEPARATED, seed=3)
    with pytest.raises(NotImplementedError, match="no forward-mode rule"):
        torch.func.jvp(lambda a: svdlib.eigh(a, backward="power_iteration")[1], (A,), (A,))


@pytest.mark.parametrize("fn", [lambda a: svdlib.eigh(a, backward="exact")[0].pow(3).sum(),
                                lambda a: svdlib.sqrtm(a, backward="exact").pow(3).sum(),
                                lambda a: svdlib.sqrtm(a, backward="taylor").pow(3).sum()])
def test_forward_over_forward_through_eigh_raises_instead_of_returning_zeros(fn):
    """torch runs a custom forward rule with forward mode off, so jacfwd(jacfwd(.)) would see
    a constant tangent: svdlib says so instead (divided_difference supports it, above)."""
    with pytest.raises(NotImplementedError, match="forward mode over forward mode"):
        torch.func.jacfwd(torch.func.jacfwd(fn))(matrix_with_spectrum(SEPARATED, seed=3))


def test_divided_difference_third_derivative_raises():
    A = matrix_with_spectrum([0.3, 0.7, 1.2, 2.0], seed=9).requires_grad_(True)
    L = svdlib.sqrtm(A, backward="divided_difference").pow(3).sum()
    (g1,) = torch.autograd.grad(L, A, create_graph=True)
    (g2,) = torch.autograd.grad(g1.pow(2).sum(), A, create_graph=True)   # second order: fine
    with pytest.raises(NotImplementedError, match="third derivative"):
        g2.pow(2).sum().backward()
    f = lambda a: svdlib.sqrtm(a, backward="divided_difference").pow(3).sum()  # noqa: E731
    with pytest.raises(NotImplementedError, match="third derivative"):
        torch.func.jacfwd(torch.func.hessian(f))(A.detach())


def test_first_order_backward_unchanged_when_the_graph_is_kept():
    """create_graph=True with divided_difference gives the same first derivative as a plain
    backward (the Fréchet Function is the stage's product, bit for bit up to rounding)."""
    A = matrix_with_spectrum(SEPARATED, seed=3).requires_grad_(True)
    W = _randn(5, 5, seed=1)
    for backward in ("divided_difference", "exact", "taylor"):
        (plain,) = torch.autograd.grad((svdlib.inv_sqrtm(A, backward=backward) * W).sum(), A)
        (kept,) = torch.autograd.grad((svdlib.inv_sqrtm(A, backward=backward) * W).sum(), A, create_graph=True)
        assert _rel(kept.detach(), plain) < 1e-14                      # measured 0


# ----------------------------------------------------------------------------- layers
def _penalty_gradient(layer, x):
    """d/dx of the gradient penalty ||d l / d x||^2, l = sum(y^3) / N: create_graph=True, then
    backward of the penalty."""
    x = x.detach().clone().requires_grad_(True)
    y = layer(x)
    (g,) = torch.autograd.grad(y.pow(3).sum() / y.numel(), x, create_graph=True)
    penalty = g.pow(2).sum()
    return penalty, torch.autograd.grad(penalty, x)[0]


def _plain_powm_patch(monkeypatch, name, p):
    """Replace svdlib.<name> by the plain torch.linalg.eigh chain (eps as a diagonal shift)."""
    def reference(A, method="eigh", backward=None, *, eps=0.0, **options):
        return _plain(p)(A + eps * torch.eye(A.shape[-1], dtype=A.dtype))
    monkeypatch.setattr(svdlib, name, reference)


@pytest.mark.parametrize("layer_name", ["DecorrelatedBatchNorm2d", "CovariancePooling"])
def test_gradient_penalty_through_the_layers(layer_name, monkeypatch):
    """With backward="divided_difference" a gradient penalty runs through the layer and its
    gradient equals the same layer built on plain torch.linalg.eigh (separated spectra: the
    batch covariances of random input) and central differences of the penalty."""
    torch.manual_seed(0)
    if layer_name == "DecorrelatedBatchNorm2d":
        make = lambda b: svdlib.nn.DecorrelatedBatchNorm2d(4, eps=1e-2, backward=b,  # noqa: E731
                                                           track_condition_number=False).double()
        x, patched, p = torch.randn(6, 4, 3, 3, dtype=F64), "inv_sqrtm", -0.5
    else:
        make = lambda b: svdlib.nn.CovariancePooling(4, reduced_dim=None, backward=b).double()  # noqa: E731
        x, patched, p = torch.randn(2, 4, 4, 4, dtype=F64), "sqrtm", 0.5
    penalty, grad = _penalty_gradient(make("divided_difference"), x)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    h = 1e-5
    layer = make("divided_difference")
    fd = (_penalty_gradient(layer, x + h * v)[0] - _penalty_gradient(layer, x - h * v)[0]) / (2 * h)
    # central differences of the penalty, error ~h^2: measured 3.5e-10 (DBN), 3.0e-9 (pooling)
    assert abs(float((grad * v).sum()) - float(fd)) < 1e-6 * abs(float(fd))
    with pytest.raises(NotImplementedError, match="backward='taylor' has no second derivative"):
        _penalty_gradient(make("taylor"), x)
    _plain_powm_patch(monkeypatch, patched, p)
    penalty_ref, grad_ref = _penalty_gradient(make("divided_difference"), x)
    assert abs(float(penalty - penalty_ref)) < 1e-12 * float(penalty_ref)     # measured <= 2.7e-16
    assert _rel(grad, grad_ref) < 1e-11                                        # measured 7.8e-16, 3.2e-15
