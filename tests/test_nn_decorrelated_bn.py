"""svdlib.nn.DecorrelatedBatchNorm2d: ZCA whitening per group (Robust Differentiable SVD
Alg. 2; orthogonality paper eq. 43), checked against independent references."""
from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch

import svdlib
from svdlib.nn import DecorrelatedBatchNorm2d

F64 = torch.float64
from _spine_helpers import DEVICES  # noqa: E402


def _groups(y: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Split a (B, C, H, W) map into per-group (g, B*H*W) matrices."""
    Y = y.transpose(0, 1).reshape(y.shape[1], -1)
    return list(torch.split(Y, sizes, dim=0))


def _np_cov(Z: np.ndarray) -> np.ndarray:
    Zc = Z - Z.mean(axis=1, keepdims=True)
    return Zc @ Zc.T / Z.shape[1]


def _reference(x: torch.Tensor, sizes: list[int], eps: float, weight, bias) -> torch.Tensor:
    """Independent ZCA: torch.linalg.eigh with torch's own autograd, one group at a time."""
    outs = []
    for Z in _groups(x, sizes):
        mu = Z.mean(dim=1, keepdim=True)
        Zc = Z - mu
        cov = Zc @ Zc.T / Z.shape[1] + eps * torch.eye(Z.shape[0], dtype=Z.dtype)
        lam, U = torch.linalg.eigh(cov)
        outs.append((U * lam.rsqrt()) @ U.T @ Zc)
    Y = torch.cat(outs, 0)
    y = Y.reshape(x.shape[1], x.shape[0], *x.shape[2:]).transpose(0, 1)
    return y * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def _mixed_input(B=8, C=7, H=3, W=3, seed=0, dtype=F64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(C, C, generator=g, dtype=F64) + 2 * torch.eye(C, dtype=F64)
    x = torch.einsum("dc,bchw->bdhw", mix, torch.randn(B, C, H, W, generator=g, dtype=F64)) + 3.0
    return x.to(dtype=dtype, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "method,options", [("eigh", {}), ("newton_schulz", {"iterations": 40})]
)
def test_train_output_has_identity_covariance_per_group(device, method, options):
    C, gs = 8, 3                                     # groups 3, 3 and the smaller 2
    x = _mixed_input(B=10, C=C, device=device)
    bn = DecorrelatedBatchNorm2d(C, group_size=gs, eps=0.0, method=method, **options).to(device, F64)
    y = bn(x)
    assert y.shape == x.shape and y.dtype == F64
    for Z in _groups(y, [3, 3, 2]):
        assert torch.allclose(Z.mean(1), torch.zeros(Z.shape[0], dtype=F64, device=device), atol=1e-10, rtol=0)
        eye = torch.eye(Z.shape[0], dtype=F64, device=device)
        assert torch.allclose(svdlib.covariance(Z), eye, atol=1e-6, rtol=0)
    # and the groups are not whitened jointly: cross-group covariance stays non-zero
    Y = y.transpose(0, 1).reshape(C, -1)
    assert svdlib.covariance(Y)[:3, 3:].abs().max() > 1e-2


def test_eps_shrinks_towards_sigma_over_sigma_plus_eps():
    x = _mixed_input(C=4)
    eps = 0.5
    bn = DecorrelatedBatchNorm2d(4, eps=eps, affine=False).double()
    y = bn(x)
    X = x.transpose(0, 1).reshape(4, -1).numpy()
    S = _np_cov(X)
    expected = S @ np.linalg.inv(S + eps * np.eye(4))          # cov of (S+eps)^{-1/2} Xc
    got = svdlib.covariance(y.transpose(0, 1).reshape(4, -1)).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("backward", ["exact", "divided_difference"])
def test_output_and_gradients_match_independent_reference(backward):
    """Forward and input/parameter gradients equal torch.linalg.eigh + autograd (float64)."""
    C, sizes = 7, [3, 3, 1]
    x = _mixed_input(C=C, seed=1).requires_grad_(True)
    bn = DecorrelatedBatchNorm2d(C, group_size=3, eps=1e-3, backward=backward).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    R = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    y = bn(x)
    gx, gw, gb = torch.autograd.grad((y * R).sum(), (x, bn.weight, bn.bias))

    xr = x.detach().clone().requires_grad_(True)
    w, b = bn.weight.detach().clone().requires_grad_(True), bn.bias.detach().clone().requires_grad_(True)
    yr = _reference(xr, sizes, 1e-3, w, b)
    rx, rw, rb = torch.autograd.grad((yr * R).sum(), (xr, w, b))
    assert torch.allclose(y, yr, atol=1e-10, rtol=0)
    assert torch.allclose(gx, rx, atol=1e-8, rtol=0)
    assert torch.allclose(gw, rw, atol=1e-10, rtol=0) and torch.allclose(gb, rb, atol=1e-10)


def test_eval_output_of_a_sample_does_not_depend_on_the_batch():
    bn = DecorrelatedBatchNorm2d(6, group_size=4).double()
    for seed in range(3):
        bn(_mixed_input(C=6, seed=seed))
    bn.eval()
    x = _mixed_input(B=5, C=6, seed=10)
    other = _mixed_input(B=5, C=6, seed=11) * 7.0
    alone = bn(x[:1])
    in_batch = bn(torch.cat([x[:1], other]))[:1]
    assert torch.allclose(alone, in_batch, atol=1e-12, rtol=0)
    # eval mode uses the running statistics: (running_cov + eps I)^{-1/2} (x - running_mean)
    S = torch.linalg.eigh(bn.running_covariance + bn.eps * torch.eye(4, dtype=F64))
    W = (S.eigenvectors * S.eigenvalues.rsqrt().unsqueeze(-2)) @ S.eigenvectors.transpose(-1, -2)
    xc = (x[:1] - bn.running_mean.view(1, 6, 1, 1))[:, :4]
    expected = torch.einsum("ij,bjhw->bihw", W[0], xc)
    assert torch.allclose(alone[:, :4], expected, atol=1e-10, rtol=0)


def test_running_statistics_follow_momentum_and_converge_to_the_data():
    C, m = 5, 0.1
    x = _mixed_input(C=C, B=6, seed=3)
    bn = DecorrelatedBatchNorm2d(C, group_size=3, momentum=m).double()
    X = x.transpose(0, 1).reshape(C, -1)
    mean, cov_a, cov_b = X.mean(1), svdlib.covariance(X[:3]), svdlib.covariance(X[3:])
    k = 30
    for _ in range(k):
        bn(x)
    decay = (1 - m) ** k                              # running = (1-m)^k init + (1-(1-m)^k) batch
    assert torch.allclose(bn.running_mean, (1 - decay) * mean, atol=1e-12, rtol=0)
    assert torch.allclose(bn.running_covariance[0], decay * torch.eye(3, dtype=F64) + (1 - decay) * cov_a, atol=1e-12, rtol=0)
    assert torch.allclose(bn.running_covariance_tail[0], decay * torch.eye(2, dtype=F64) + (1 - decay) * cov_b, atol=1e-12, rtol=0)
    assert int(bn.num_batches_tracked) == k

    # random batches of a fixed Gaussian: running statistics approach the population's
    g = torch.Generator().manual_seed(4)
    L = torch.tensor([[1.0, 0, 0], [0.8, 0.6, 0], [-0.5, 0.3, 0.4]], dtype=F64)
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    bn = DecorrelatedBatchNorm2d(3, momentum=0.05).double()
    for _ in range(150):
        z = torch.randn(16, 3, 8, 8, generator=g, dtype=F64)
        bn(torch.einsum("ij,bjhw->bihw", L, z) + mu.view(1, 3, 1, 1))
    assert torch.allclose(bn.running_mean, mu, atol=0.02)
    assert torch.allclose(bn.running_covariance[0], L @ L.T, atol=0.03)


def test_cumulative_average_when_momentum_is_none():
    bn = DecorrelatedBatchNorm2d(3, momentum=None).double()
    xs = [_mixed_input(C=3, seed=s) for s in range(4)]
    for x in xs:
        bn(x)
    covs = [svdlib.covariance(x.transpose(0, 1).reshape(3, -1)) for x in xs]
    # rtol=0: a float32 factor 1/3 once left the average 7e-8 off
    assert torch.allclose(bn.running_covariance[0], torch.stack(covs).mean(0), atol=1e-12, rtol=0)


def test_running_whitening_matrix_mode():
    x = _mixed_input(C=4, seed=5)
    bn = DecorrelatedBatchNorm2d(4, running="whitening_matrix", momentum=0.25, eps=0.1).double()
    bn(x)
    assert not hasattr(bn, "running_covariance")
    X = x.transpose(0, 1).reshape(4, -1)
    lam, U = torch.linalg.eigh(svdlib.covariance(X) + 0.1 * torch.eye(4, dtype=F64))
    W = (U * lam.rsqrt()) @ U.T
    expected = 0.75 * torch.eye(4, dtype=F64) + 0.25 * W
    assert torch.allclose(bn.running_whitening[0], expected, atol=1e-12, rtol=0)
    bn.eval()
    xc = x - bn.running_mean.view(1, 4, 1, 1)
    assert torch.allclose(bn(x), torch.einsum("ij,bjhw->bihw", expected, xc), atol=1e-12, rtol=0)


def test_state_dict_round_trip_and_eval_cache_invalidation():
    bn = DecorrelatedBatchNorm2d(7, group_size=4).double()
    for s in range(3):
        bn(_mixed_input(C=7, seed=s))
    bn.eval()
    x = _mixed_input(C=7, seed=20)
    y_before = bn(x)

    buf = io.BytesIO()
    torch.save(bn.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert {"running_mean", "running_covariance", "running_covariance_tail",
            "num_batches_tracked", "weight", "bias"} <= set(state)
    fresh = DecorrelatedBatchNorm2d(7, group_size=4).double().eval()
    fresh(x)                                          # fills the eval cache with identity stats
    fresh.load_state_dict(state)                      # in-place copy must invalidate the cache
    assert torch.allclose(fresh(x), y_before, atol=1e-13, rtol=0)

    bn.train()
    bn(_mixed_input(C=7, seed=30))                    # stats change -> eval output changes
    bn.eval()
    assert not torch.allclose(bn(x), y_before, atol=1e-6)


@pytest.mark.parametrize("backward,options,rtol", [
    ("taylor", {}, 1e-3),                 # degree 9 truncates the series: an approximation
    ("taylor", {"degree": 100}, 1e-6),
    ("pade", {}, 1e-6),
])
def test_rank_deficient_input_has_finite_accurate_gradients(backward, options, rtol):
    """Channels 2-5 repeat channels 0, 1: four zero eigenvalues, tied after + eps I."""
    g = torch.Generator().manual_seed(6)
    base = torch.randn(4, 2, 3, 3, generator=g, dtype=F64)
    x = torch.cat([base, base, 2 * base], 1).requires_grad_(True)
    bn = DecorrelatedBatchNorm2d(6, backward=backward, **options).double()
    R = torch.randn(x.shape, generator=g, dtype=F64)
    loss = (bn(x) * R).sum()
    (gx,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(gx).all() and gx.abs().max() > 0
    assert bn.last_condition_number.item() > 1e12     # the singular covariance, before eps
    # and it is the gradient of the true loss, which is smooth here (eps > 0): central
    # finite differences along random directions (an independent reference)
    bn_ref = DecorrelatedBatchNorm2d(6, backward=backward, **options).double()
    with torch.no_grad():
        for _ in range(2):
            v = torch.randn(x.shape, generator=g, dtype=F64)
            h = 1e-5
            fd = ((bn_ref(x + h * v) * R).sum() - (bn_ref(x - h * v) * R).sum()) / (2 * h)
            assert torch.allclose((gx * v).sum(), fd, rtol=rtol, atol=1e-7)


def test_last_condition_number_matches_numpy():
    x = _mixed_input(C=7, seed=7)
    bn = DecorrelatedBatchNorm2d(7, group_size=3).double()
    bn(x)
    X = x.transpose(0, 1).reshape(7, -1).numpy()
    expected = []
    for s, e in [(0, 3), (3, 6), (6, 7)]:
        lam = np.linalg.eigvalsh(_np_cov(X[s:e]))
        expected.append(lam[-1] / lam[0])
    assert bn.last_condition_number.shape == (3,)
    assert not bn.last_condition_number.requires_grad
    np.testing.assert_allclose(bn.last_condition_number.numpy(), expected, rtol=1e-8)


@pytest.mark.parametrize("device", DEVICES)
def test_float32(device):
    x = _mixed_input(C=6, B=16, dtype=torch.float32, device=device).requires_grad_(True)
    bn = DecorrelatedBatchNorm2d(6, group_size=3, eps=0.0).to(device)
    y = bn(x)
    assert y.dtype == torch.float32 and y.device == x.device
    for Z in _groups(y.detach().double(), [3, 3]):
        assert torch.allclose(svdlib.covariance(Z), torch.eye(3, dtype=F64, device=device), atol=1e-3, rtol=0)
    # not y.square().sum(): exact whitening makes that constant, its gradient rounding noise
    R = torch.randn(y.shape, generator=torch.Generator().manual_seed(8), dtype=F64)
    (y * R.to(device, torch.float32)).sum().backward()
    x64 = x.detach().to("cpu", F64).requires_grad_(True)
    bn64 = DecorrelatedBatchNorm2d(6, group_size=3, eps=0.0).double()
    (bn64(x64) * R).sum().backward()
    rel = (x.grad.cpu().double() - x64.grad).norm() / x64.grad.norm()
    assert rel < 1e-4, rel  # measured 1.3e-7 to 2e-7 under the perturbations; bound 1e-4
    bn.eval()
    assert bn(x).dtype == torch.float32


def test_bad_input_and_arguments():
    bn = DecorrelatedBatchNorm2d(4)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\).*got shape \(2, 4\)"):
        bn(torch.randn(2, 4))
    with pytest.raises(ValueError, match="must have 4 channels.*got 5"):
        bn(torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match=r"B\*H\*W >= 2.*got B\*H\*W = 1"):
        bn(torch.randn(1, 4, 1, 1))
    bn.eval()
    assert bn(torch.randn(1, 4, 1, 1)).shape == (1, 4, 1, 1)      # eval needs no batch stats
    with pytest.raises(ValueError, match="group_size must be <= num_features = 4, got 5"):
        DecorrelatedBatchNorm2d(4, group_size=5)
    with pytest.raises(ValueError, match="running must be one of"):
        DecorrelatedBatchNorm2d(4, running="variance")
    with pytest.raises(ValueError, match="method must be one of"):
        DecorrelatedBatchNorm2d(4, method="svd")
    with pytest.raises(ValueError, match="backward must be one of"):
        DecorrelatedBatchNorm2d(4, backward="nope")
    with pytest.raises(ValueError, match="momentum"):
        DecorrelatedBatchNorm2d(4, momentum=1.5)
    with pytest.raises(ValueError, match="eps must be a finite real number >= 0, got -1"):
        DecorrelatedBatchNorm2d(4, eps=-1)
    with pytest.raises(RuntimeError, match="init_process_group"):
        DecorrelatedBatchNorm2d(4, sync=True)(torch.randn(2, 4, 2, 2))


def _state(bn: DecorrelatedBatchNorm2d) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in bn.state_dict().items()}


def _assert_same_state(before: dict, bn: DecorrelatedBatchNorm2d) -> None:
    after = bn.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "state changed by a failed call"


def test_non_finite_input_is_refused_in_both_modes_naming_the_input():
    bn = DecorrelatedBatchNorm2d(4, group_size=2)
    x = _mixed_input(B=4, C=4, dtype=torch.float32)
    bn(x)
    before = _state(bn)
    x[2, 3, 1, 1] = float("nan")
    for training in (True, False):                 # eval used to return NaN silently
        bn.train(training)
        with pytest.raises(ValueError) as info:
            bn(x)
        message = str(info.value)
        assert message.startswith("DecorrelatedBatchNorm2d: input contains 1 NaN/Inf entries "
                                  "(shape (4, 4, 3, 3)"), message
        assert not any(word in message.split() for word in ("X", "A"))
        _assert_same_state(before, bn)


def test_huge_input_says_the_covariance_overflowed_and_changes_nothing():
    bn = DecorrelatedBatchNorm2d(4)
    x = _mixed_input(B=4, C=4, dtype=torch.float32) * 1e20
    before = _state(bn)
    with pytest.raises(ValueError, match=r"DecorrelatedBatchNorm2d: the covariance of input "
                                         r"\(shape \(4, 4, 3, 3\).*overflowed float32; scale the "
                                         r"input or .*float64") as info:
        bn(x)
    assert "NaN" not in str(info.value)
    _assert_same_state(before, bn)
    # the float64 remedy it names works: the output is white
    bn64 = DecorrelatedBatchNorm2d(4, eps=0.0).double()
    y = bn64(x.double())
    Y = y.transpose(0, 1).reshape(4, -1)
    assert torch.allclose(svdlib.covariance(Y), torch.eye(4, dtype=F64), atol=1e-8, rtol=0)


def test_synced_statistics_that_are_not_finite_raise_on_every_rank(monkeypatch):
    """With sync the finiteness check runs after the all-reduce, so a rank whose own input is
    finite raises too (instead of waiting in the next collective for a rank that raised)."""
    from svdlib.nn import _sync

    poison = {"on": False}

    def fake_all_reduce(t, group=None):            # a world of one; optionally a NaN peer
        if not poison["on"]:
            return t
        out = t.clone()
        out[1:] = float("nan")                     # the count (entry 0) stays finite
        return out

    monkeypatch.setattr(_sync, "all_reduce_sum", fake_all_reduce)
    bn = DecorrelatedBatchNorm2d(4, sync=False)
    monkeypatch.setattr(bn, "_use_sync", lambda: True)
    x = _mixed_input(B=4, C=4, dtype=torch.float32)
    bn(x)
    before = _state(bn)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"DecorrelatedBatchNorm2d: input contains 1 NaN/Inf"):
        bn(bad)
    poison["on"] = True
    with pytest.raises(ValueError, match=r"DecorrelatedBatchNorm2d: the covariance of input .* "
                                         r"shared over the process group is not finite although "
                                         r"this process's input is"):
        bn(x)
    _assert_same_state(before, bn)


# ------------------------------------------------------------------ eval mode: a fixed map
def _whitening_from(bn: DecorrelatedBatchNorm2d) -> list[torch.Tensor]:
    """Independent (Sigma_run + eps I)^{-1/2} per running buffer: torch.linalg.eigh in float64."""
    out = []
    for name in bn._running_names():
        cov = getattr(bn, name).detach().to(F64)
        lam, U = torch.linalg.eigh(cov + bn.eps * torch.eye(cov.shape[-1], dtype=F64))
        out.append((U * lam.rsqrt().unsqueeze(-2)) @ U.transpose(-1, -2))
    return out


def _uncached_eval(bn: DecorrelatedBatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """gamma * S (x - mu_run) + beta, group by group, everything in float64 from the buffers."""
    sizes = [g for _, n, g in bn._layout for _ in range(n)]
    mats = [m for block in _whitening_from(bn) for m in block] if bn.running == "covariance" else \
        [m.to(F64) for name in bn._running_names() for m in getattr(bn, name)]
    Z = _groups(x.to(F64) - bn.running_mean.to(F64).view(1, -1, 1, 1), sizes)
    Y = torch.cat([S @ z for S, z in zip(mats, Z)])
    y = Y.reshape(x.shape[1], x.shape[0], *x.shape[2:]).transpose(0, 1)
    if bn.affine:
        y = y * bn.weight.detach().to(F64).view(1, -1, 1, 1) + bn.bias.detach().to(F64).view(1, -1, 1, 1)
    return y


def _trained(C=7, group_size=3, steps=3, dtype=F64, **kwargs) -> DecorrelatedBatchNorm2d:
    bn = DecorrelatedBatchNorm2d(C, group_size=group_size, **kwargs).to(dtype)
    with torch.no_grad():
        if bn.affine:                                 # gamma, beta away from 1, 0
            bn.weight.copy_(torch.linspace(0.5, 1.5, C))
            bn.bias.copy_(torch.linspace(-1.0, 1.0, C))
    for s in range(steps):
        bn(_mixed_input(C=C, seed=40 + s, dtype=dtype))
    return bn


@pytest.mark.parametrize("running", ["covariance", "whitening_matrix"])
@pytest.mark.parametrize("group_size,affine", [(3, True), (7, False), (4, True)])
def test_eval_output_equals_the_uncached_whitening(running, group_size, affine):
    """Eval mode is one batched product with weight diag(gamma) S and bias
    beta - diag(gamma) S mu: equal to gamma * S (x - mu) + beta from an independent float64
    eigendecomposition of the running covariance (groups 3+3+1, 7, 4+3)."""
    bn = _trained(group_size=group_size, affine=affine, running=running).eval()
    x = _mixed_input(B=3, C=7, seed=50)
    assert torch.allclose(bn(x), _uncached_eval(bn, x), atol=1e-12, rtol=0)  # measured 1.8e-15
    # float32: the same map within float32 rounding of entries of size ~5
    bn32 = _trained(group_size=group_size, affine=affine, running=running, dtype=torch.float32).eval()
    y32 = bn32(x.float())
    assert y32.dtype == torch.float32
    err = (y32.double() - _uncached_eval(bn32, x.float())).abs().max()
    assert err < 1e-4, err                             # measured 3.0e-6; bound 1e-4


def test_eval_whitening_is_recomputed_after_train_steps_and_mode_switches():
    bn = _trained()
    assert bn._eval_stale                              # training steps do not pay for it
    bn.eval()                                          # the switch computes it, no forward needed
    first = [bn.eval_whitening.clone(), bn.eval_whitening_tail.clone()]
    for got, ref in zip(first, _whitening_from(bn)):
        assert torch.allclose(got, ref, atol=1e-12, rtol=0)
    bn.train()
    bn(_mixed_input(C=7, seed=60) * 2.0)               # statistics move
    bn.eval()
    for old, got, ref in zip(first, [bn.eval_whitening, bn.eval_whitening_tail], _whitening_from(bn)):
        assert not torch.allclose(old, got, atol=1e-3)
        assert torch.allclose(got, ref, atol=1e-12, rtol=0)
    x = _mixed_input(B=2, C=7, seed=61)
    assert torch.allclose(bn(x), _uncached_eval(bn, x), atol=1e-12, rtol=0)


def test_eval_whitening_is_recomputed_by_load_state_dict_also_through_a_parent():
    trained = _trained().eval()
    x = _mixed_input(B=2, C=7, seed=62)
    expected = trained(x)
    fresh = DecorrelatedBatchNorm2d(7, group_size=3).double().eval()
    fresh(x)                                           # identity statistics in use
    fresh.load_state_dict(trained.state_dict())
    assert not fresh._eval_stale                       # computed by the hook, before any forward
    assert torch.allclose(fresh.eval_whitening, trained.eval_whitening, atol=0, rtol=0)
    assert torch.allclose(fresh(x), expected, atol=1e-13, rtol=0)

    parent = torch.nn.Sequential(torch.nn.Identity(), DecorrelatedBatchNorm2d(7, group_size=3).double()).eval()
    parent.load_state_dict({f"1.{k}": v for k, v in trained.state_dict().items()})
    assert not parent[1]._eval_stale
    assert torch.equal(parent[1].eval_whitening_tail, trained.eval_whitening_tail)
    # the eval whitening matrices are a function of the state dict, not part of it
    assert not any(k.startswith("eval_whitening") for k in trained.state_dict())


def test_to_recomputes_eval_whitening_from_the_converted_statistics():
    """.double() of a float32 layer: S comes from the float64 running covariance (float64
    accurate), not from converting the float32 S (float32 accurate)."""
    bn = _trained(dtype=torch.float32).eval()
    converted = bn.eval_whitening.double()
    bn.double()
    assert bn.eval_whitening.dtype == F64
    exact = _whitening_from(bn)[0]
    assert (bn.eval_whitening - exact).abs().max() < 1e-12       # measured 0 to 2e-15
    assert (converted - exact).abs().max() > 1e-9                # float32 rounding: measured 2.5e-7
    x = _mixed_input(B=2, C=7, seed=63)
    assert torch.allclose(bn(x), _uncached_eval(bn, x), atol=1e-12, rtol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_eval_whitening_moves_with_the_layer_to_cuda():
    bn = _trained().eval().cuda()
    assert bn.eval_whitening.is_cuda and not bn._eval_stale
    x = _mixed_input(B=2, C=7, seed=64)
    assert torch.allclose(bn(x.cuda()).cpu(), _uncached_eval(bn.cpu(), x), atol=1e-10, rtol=0)


def test_in_place_changes_of_the_statistics_in_eval_mode_are_seen():
    bn = _trained().eval()
    x = _mixed_input(B=2, C=7, seed=65)
    bn(x)
    with torch.no_grad():
        bn.running_covariance.mul_(4.0)                # by hand, behind the layer's back
    assert torch.allclose(bn(x), _uncached_eval(bn, x), atol=1e-12, rtol=0)   # eager: a new version
    bn.reset_running_stats()                           # in eval mode: S = (1 + eps)^{-1/2} I at once
    eye = torch.eye(3, dtype=F64).expand(2, 3, 3)
    assert torch.allclose(bn.eval_whitening, eye / (1 + bn.eps) ** 0.5, atol=1e-14, rtol=0)


def test_a_traced_eval_forward_refuses_an_out_of_date_whitening_matrix():
    """Training steps followed by ``training = False`` set by hand (not ``eval()``): an eager
    call recomputes S, a tracer must not record the old one."""
    bn = _trained()
    bn.training = False
    x = _mixed_input(B=2, C=7, seed=66)
    with pytest.raises(RuntimeError, match=r"DecorrelatedBatchNorm2d: the eval whitening matrix "
                                           r"is out of date.*model\.eval\(\)"):
        torch.export.export(bn, (x,))
    assert torch.allclose(bn(x), _uncached_eval(bn, x), atol=1e-12, rtol=0)
    exported = torch.export.export(bn, (x,)).module()  # up to date now
    assert torch.allclose(exported(x), bn(x), atol=1e-13, rtol=0)


def test_non_finite_running_statistics_are_named_in_eval_mode():
    bn = _trained()
    with torch.no_grad():
        bn.running_covariance_tail[0, 0, 0] = float("nan")
    bn.eval()                                          # does not raise: nothing to compute yet
    with pytest.raises(ValueError, match=r"DecorrelatedBatchNorm2d: the running statistics "
                                         r"running_covariance_tail contain NaN/Inf.*"
                                         r"reset_running_stats"):
        bn(_mixed_input(B=2, C=7, seed=67))
    bn.reset_running_stats()
    assert bn(_mixed_input(B=2, C=7, seed=67)).isfinite().all()


def test_eval_under_inference_mode_then_with_autograd():
    """S recomputed inside torch.inference_mode stays an ordinary tensor: a later eval forward
    outside it can save S for backward (inference tensors cannot be)."""
    bn = _trained().eval()
    with torch.no_grad():
        bn.running_covariance.mul_(2.0)                # S must be recomputed by the next call
    x = _mixed_input(B=2, C=7, seed=68)
    with torch.inference_mode():
        y_inference = bn(x)
    assert not bn.eval_whitening.is_inference()
    xr = x.clone().requires_grad_(True)
    y = bn(xr)
    assert torch.equal(y.detach(), y_inference)
    (gx,) = torch.autograd.grad((y * y.detach()).sum(), xr)
    assert gx.isfinite().all() and gx.abs().max() > 0


def test_training_mode_exports_with_the_cumulative_average():
    """momentum=None divides by the batch count: a tensor in the graph, not a Python float
    read from it, so the exported training step keeps averaging over every batch it sees."""
    eager = DecorrelatedBatchNorm2d(5, group_size=3, momentum=None).double()
    program = torch.export.export(copy.deepcopy(eager), (_mixed_input(C=5, seed=70),)).module()
    for seed in (71, 72, 73):
        x = _mixed_input(C=5, seed=seed)
        assert torch.allclose(program(x), eager(x), atol=1e-12, rtol=0)
    for name in ("running_mean", "running_covariance", "running_covariance_tail", "num_batches_tracked"):
        assert torch.allclose(getattr(program, name).double(), getattr(eager, name).double(), atol=1e-13, rtol=0), name
    assert int(eager.num_batches_tracked) == 3


def test_deferred_initialisation_on_meta_then_load():
    """Built on the meta device (no memory), switched to eval, materialised with to_empty and
    loaded: the eval whitening matrix follows the loaded statistics."""
    trained = _trained().eval()
    bn = DecorrelatedBatchNorm2d(7, group_size=3, device="meta", dtype=F64).eval()
    assert bn._eval_stale                              # nothing to compute on meta tensors
    bn = bn.to_empty(device="cpu")
    bn.load_state_dict(trained.state_dict())
    assert not bn._eval_stale
    x = _mixed_input(B=2, C=7, seed=69)
    assert torch.allclose(bn(x), trained(x), atol=1e-13, rtol=0)
