"""The layers under torch.autocast: statistics and spectral functions in float32 with autocast
off, the result in the autocast dtype (issue 16). Reference: the same layer, outside autocast,
on the same reduced-precision features widened to float32; the autocast result must be that,
rounded once (|y - ref| <= u |ref|, u the unit roundoff of the autocast dtype)."""
from __future__ import annotations

import copy

import pytest
import torch

from svdlib.nn import CovariancePooling, DecorrelatedBatchNorm2d

from _spine_helpers import DEVICES

LOW = [torch.bfloat16, torch.float16]


def _features(B=4, C=8, H=5, W=5, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(C, C, generator=g) + 2 * torch.eye(C)
    x = torch.einsum("dc,bchw->bdhw", mix, torch.randn(B, C, H, W, generator=g)) + 1.0
    return x.to(device)


def _rounded_once(y: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """y is ref (float32) rounded to ``dtype``: relative error at most the unit roundoff;
    the absolute term covers float16's subnormals (spacing 6e-8) near zero."""
    assert y.dtype == dtype
    u = torch.finfo(dtype).eps / 2
    err = (y.double() - ref.double()).abs()
    bound = u * ref.double().abs() * 1.001 + 1e-7 * ref.double().abs().max()
    assert (err <= bound).all(), float((err / ref.double().abs().clamp_min(1e-30)).max())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW)
def test_decorrelated_bn_computes_in_float32_and_returns_the_autocast_dtype(device, dtype):
    torch.manual_seed(0)
    bn = DecorrelatedBatchNorm2d(8, group_size=3).to(device)
    ref = copy.deepcopy(bn)
    x = _features(device=device).to(dtype)             # as a conv under autocast would give
    for training in (True, False):
        bn.train(training)
        ref.train(training)
        with torch.autocast(device, dtype=dtype):
            y = bn(x)
        _rounded_once(y, ref(x.float()), dtype)
    # the running statistics were updated from float32 moments, as the reference's
    assert torch.equal(bn.running_covariance, ref.running_covariance)
    assert torch.equal(bn.running_mean, ref.running_mean)


@pytest.mark.parametrize("dtype", LOW)
def test_decorrelated_bn_gradients_under_autocast(dtype):
    torch.manual_seed(0)
    bn = DecorrelatedBatchNorm2d(8, group_size=4)
    ref = copy.deepcopy(bn)
    x = _features().to(dtype).requires_grad_(True)
    R = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=dtype):
        y = bn(x)
    (gx,) = torch.autograd.grad((y.float() * R).sum(), x)
    x32 = x.detach().float().requires_grad_(True)
    (gref,) = torch.autograd.grad((ref(x32) * R).sum(), x32)
    assert gx.dtype == dtype
    rel = (gx.double() - gref.double()).norm() / gref.double().norm()
    # the output's rounding to the autocast dtype and the gradient's own rounding: a few u
    assert rel < 4 * torch.finfo(dtype).eps, rel


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW)
def test_covariance_pooling_computes_in_float32_and_returns_the_autocast_dtype(device, dtype):
    torch.manual_seed(0)
    pool = CovariancePooling(8, reduced_dim=6).to(device).eval()
    x = _features(device=device)
    with torch.autocast(device, dtype=dtype):
        z = pool.reduce(x)                             # the reduction stays under autocast
        P = pool.covariance(x)
        y = pool(x)
    assert z.dtype == dtype and P.dtype == torch.float32
    no_reduction = CovariancePooling(6, reduced_dim=None).to(device)
    _rounded_once(y, no_reduction(z.float()), dtype)


def test_float64_is_left_alone_by_autocast():
    bn = DecorrelatedBatchNorm2d(8, group_size=3).double()
    pool = CovariancePooling(8, reduced_dim=None)
    x = _features().double()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, v = bn(x), pool(x)
    assert y.dtype == torch.float64 and v.dtype == torch.float64
    assert torch.equal(v, pool(x))
