"""Weight treatments: spectral_norm (eq. 11), orthogonal_loss (eq. 12), orthogonal_weight (eq. 13)."""
import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from svdlib.ortho import add_orthogonal_loss, orthogonal_loss, orthogonal_weight, spectral_norm

F64 = torch.float64




def _as_matrix(W):
    return W.reshape(W.shape[0], -1)


# ------------------------------------------------------------------ spectral norm
@pytest.mark.parametrize(
    "make",
    [lambda: nn.Linear(12, 7), lambda: nn.Conv2d(3, 8, 3), lambda: nn.Conv2d(16, 4, 3), lambda: nn.Conv1d(5, 6, 2)],
)
def test_spectral_norm_gives_sigma_max_one(make):
    torch.manual_seed(0)
    layer = make().double()
    raw = layer.weight.detach().clone()
    spectral_norm(layer, n_power_iterations=200)
    W = layer.weight.detach()  # one training-mode forward: 200 more power iterations
    sigma = torch.linalg.matrix_norm(_as_matrix(W), ord=2)
    assert float(sigma) == pytest.approx(1.0, abs=1e-6)
    # and it is W / sigma_max(W) of the out x (in*kh*kw) matrix, not of some other reshaping
    ref = raw / torch.linalg.matrix_norm(_as_matrix(raw), ord=2)
    torch.testing.assert_close(W.detach(), ref, atol=1e-6, rtol=0)


def test_spectral_norm_power_iteration_converges_over_training_forwards():
    torch.manual_seed(1)
    layer = spectral_norm(nn.Conv2d(4, 6, 3).double())  # 1 power iteration per forward
    errors = []
    for _ in range(60):
        W = layer.weight.detach()
        errors.append(abs(float(torch.linalg.matrix_norm(_as_matrix(W), ord=2)) - 1.0))
    assert errors[-1] < 1e-6 and errors[-1] <= errors[0]
    assert isinstance(layer.parametrizations.weight.original, nn.Parameter)


def test_spectral_norm_validation():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        spectral_norm(nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="no attribute"):
        spectral_norm(nn.Linear(2, 2), name="kernel")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        spectral_norm(torch.ones(2, 2))


# ------------------------------------------------------------------ orthogonal loss
@pytest.mark.parametrize("shape", [(5, 5), (4, 9), (9, 4), (8, 3, 3, 3)])
def test_orthogonal_loss_value(shape):
    W = torch.randn(*shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    M = _as_matrix(W).numpy()
    gram = M @ M.T if M.shape[0] <= M.shape[1] else M.T @ M
    ref = np.linalg.norm(gram - np.eye(gram.shape[0]), "fro")
    assert float(orthogonal_loss(W)) == pytest.approx(ref, rel=1e-13)


def test_orthogonal_loss_gradient_gradcheck_and_zero_at_orthogonal():
    W = torch.randn(4, 7, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(orthogonal_loss, (W,))
    Wc = torch.randn(3, 2, 2, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(orthogonal_loss, (Wc,))
    Q, _ = torch.linalg.qr(torch.randn(7, 4, dtype=F64))
    Q = Q.mT.clone().requires_grad_(True)
    loss = orthogonal_loss(Q)
    assert float(loss.detach()) < 1e-14
    loss.backward()
    # At (rounding-level) orthogonality the gradient 2 R W / ||R||_F (R = W W^T - I) is a unit
    # direction times 2 W: its norm is at most 2 ||W||_2 ||R||_F/||R||_F = 2, never more.
    assert torch.isfinite(Q.grad).all() and float(Q.grad.norm()) <= 2.0 + 1e-9


def test_orthogonal_loss_descent_makes_a_weight_orthogonal():
    W = torch.randn(6, 10, dtype=F64, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    start = float(orthogonal_loss(W.detach()))
    opt = torch.optim.SGD([W], lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        loss = orthogonal_loss(W)
        loss.backward()
        opt.step()
    # the (unsquared) norm has unit-size gradients, so fixed-lr descent ends within ~lr of 0
    assert float(orthogonal_loss(W.detach())) < min(0.1, start / 20)


def test_add_orthogonal_loss_with_modules_and_tensors():
    torch.manual_seed(4)
    conv, lin = nn.Conv2d(3, 8, 3).double(), nn.Linear(5, 4).double()
    base = torch.tensor(2.0, dtype=F64)
    total = add_orthogonal_loss(base, [conv, lin.weight], coefficient=0.3)
    ref = 2.0 + 0.3 * (float(orthogonal_loss(conv.weight.detach())) + float(orthogonal_loss(lin.weight.detach())))
    assert float(total.detach()) == pytest.approx(ref, rel=1e-13)
    total.backward()
    assert conv.weight.grad is not None and lin.weight.grad is not None
    assert float(add_orthogonal_loss(base, conv, coefficient=0.0).detach()) == 2.0
    with pytest.raises(ValueError, match="coefficient must be a non-negative float"):
        add_orthogonal_loss(base, conv, coefficient=-1.0)
    with pytest.raises(ValueError, match="loss must be a scalar"):
        add_orthogonal_loss(torch.ones(3), conv, coefficient=1.0)


# ------------------------------------------------------------------ orthogonal weight
@pytest.mark.parametrize(
    "make,rows",
    [
        (lambda: nn.Linear(6, 6, bias=False), True),
        (lambda: nn.Linear(10, 4), True),  # wide: orthonormal rows
        (lambda: nn.Linear(4, 10), False),  # tall: orthonormal columns
        (lambda: nn.Conv2d(3, 8, 3), True),  # 8 x 27
        (lambda: nn.Conv2d(3, 64, 3, bias=False), False),  # 64 x 27: the ECCV Pre-SVD conv
    ],
)
def test_orthogonal_weight_is_orthonormal_with_finite_gradients(make, rows):
    torch.manual_seed(5)
    layer = orthogonal_weight(make().double())
    M = _as_matrix(layer.weight)
    gram = M @ M.mT if rows else M.mT @ M
    torch.testing.assert_close(gram, torch.eye(gram.shape[0], dtype=F64), atol=1e-6, rtol=0)
    x = torch.randn(2, *((layer.in_features,) if isinstance(layer, nn.Linear) else (3, 8, 8)), dtype=F64)
    layer(x).square().sum().backward()
    g = layer.parametrizations.weight.original.grad
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # still orthonormal after an optimizer step on the unconstrained parameter
    torch.optim.SGD(layer.parameters(), lr=0.5).step()
    M = _as_matrix(layer.weight)
    gram = M @ M.mT if rows else M.mT @ M
    torch.testing.assert_close(gram, torch.eye(gram.shape[0], dtype=F64), atol=1e-6, rtol=0)


def test_orthogonal_weight_square_is_exp_of_w_minus_wt():
    torch.manual_seed(6)
    layer = nn.Linear(5, 5, bias=False).double()
    W0 = layer.weight.detach().numpy().copy()
    orthogonal_weight(layer)
    np.testing.assert_allclose(layer.weight.detach().numpy(), scipy.linalg.expm(W0 - W0.T), atol=1e-13)


def test_orthogonal_weight_parametrization_gradcheck():
    from svdlib.ortho.weight import _SkewExponential

    param = _SkewExponential()
    for shape in [(3, 3), (2, 5), (5, 2), (2, 1, 2, 2)]:
        X = (0.5 * torch.randn(*shape, dtype=F64)).requires_grad_(True)
        assert torch.autograd.gradcheck(param, (X,))


def test_orthogonal_weight_rejects_double_registration_and_vectors():
    layer = orthogonal_weight(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="already an orthogonal weight"):
        orthogonal_weight(layer)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        orthogonal_weight(nn.Linear(3, 3), name="bias")
