"""svdlib.nn.whiten / color / wct / color_transfer (Robust Differentiable SVD sec. 5.3.1,
eq. 30-33): moments of the output, an independent numpy reference, blending, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import svdlib
from svdlib.nn import color, color_transfer, whiten, wct

scipy_linalg = pytest.importorskip("scipy.linalg")

F64 = torch.float64
from _spine_helpers import DEVICES  # noqa: E402


def _maps(B, C, H, W, seed, shift=0.0, dtype=F64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(C, C, generator=g, dtype=F64) + 1.5 * torch.eye(C, dtype=F64)
    x = torch.einsum("dc,bchw->bdhw", mix, torch.randn(B, C, H, W, generator=g, dtype=F64)) + shift
    return x.to(dtype=dtype, device=device)


def _moments(x: torch.Tensor, groups: int = 1):
    B, C = x.shape[:2]
    X = x.reshape(B, groups, C // groups, -1)
    return X.mean(-1), svdlib.covariance(X)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("style_batch", [3, 1])
@pytest.mark.parametrize("groups", [1, 2])
def test_wct_output_has_the_style_mean_and_covariance(device, style_batch, groups):
    content = _maps(3, 6, 7, 7, seed=0, shift=2.0, device=device)
    style = _maps(style_batch, 6, 5, 6, seed=1, shift=-1.0, device=device)   # other H, W
    out = wct(content, style, alpha=1.0, eps=0.0, groups=groups)
    assert out.shape == content.shape
    m_out, c_out = _moments(out, groups)
    m_sty, c_sty = _moments(style, groups)
    assert torch.allclose(m_out, m_sty.expand_as(m_out), atol=1e-10)
    assert torch.allclose(c_out, c_sty.expand_as(c_out), atol=1e-8)


def test_wct_equals_independent_numpy_reference():
    content, style = _maps(2, 4, 6, 6, seed=2), _maps(2, 4, 5, 5, seed=3, shift=1.0)
    eps = 1e-2
    out = wct(content, style, eps=eps, alpha=0.7).numpy()
    for b in range(2):
        Xc = content[b].reshape(4, -1).numpy()
        Xs = style[b].reshape(4, -1).numpy()
        mc, ms = Xc.mean(1, keepdims=True), Xs.mean(1, keepdims=True)
        Cc = (Xc - mc) @ (Xc - mc).T / Xc.shape[1]
        Cs = (Xs - ms) @ (Xs - ms).T / Xs.shape[1]
        white = np.linalg.inv(np.real(scipy_linalg.sqrtm(Cc + eps * np.eye(4)))) @ (Xc - mc)
        ref = 0.7 * (np.real(scipy_linalg.sqrtm(Cs)) @ white + ms) + 0.3 * Xc
        np.testing.assert_allclose(out[b].reshape(4, -1), ref, atol=1e-9)


def test_whiten_gives_zero_mean_identity_covariance():
    x = _maps(2, 5, 6, 6, seed=4, shift=3.0)
    m, c = _moments(whiten(x, eps=0.0))
    assert torch.allclose(m, torch.zeros_like(m), atol=1e-10)
    assert torch.allclose(c, torch.eye(5, dtype=F64).expand_as(c), atol=1e-8)
    # and colouring white features reproduces the style moments exactly
    style = _maps(2, 5, 4, 4, seed=5, shift=1.0)
    m2, c2 = _moments(color(whiten(x, eps=0.0), style))
    ms, cs = _moments(style)
    assert torch.allclose(m2, ms, atol=1e-10) and torch.allclose(c2, cs, atol=1e-8)


def test_newton_schulz_method_agrees_with_eigh():
    content, style = _maps(2, 4, 8, 8, seed=6), _maps(2, 4, 8, 8, seed=7)
    a = wct(content, style, eps=1e-3)
    b = wct(content, style, eps=1e-3, method="newton_schulz", iterations=40)
    assert torch.allclose(a, b, atol=1e-8)


def test_alpha_blends_with_the_content():
    content, style = _maps(2, 3, 5, 5, seed=8), _maps(2, 3, 5, 5, seed=9)
    full = wct(content, style)
    assert torch.allclose(wct(content, style, alpha=0.25), 0.25 * full + 0.75 * content, atol=1e-12)
    assert torch.equal(wct(content, style, alpha=0.0), content)


@pytest.mark.parametrize("backward", ["taylor", "pade"])
def test_rank_deficient_content_and_style_give_finite_gradients(backward):
    """Grey content (R = G = B) and a style with G = B: covariances of rank 1 and 2."""
    g = torch.Generator().manual_seed(10)
    grey = torch.rand(2, 1, 6, 6, generator=g, dtype=F64)
    content = grey.expand(2, 3, 6, 6).clone().requires_grad_(True)
    s = torch.rand(2, 2, 6, 6, generator=g, dtype=F64)
    style = torch.cat([s, s[:, 1:]], 1).requires_grad_(True)
    out = wct(content, style, backward=backward, eps=1e-3)
    (out * torch.randn(out.shape, generator=g, dtype=F64)).sum().backward()
    for t in (content, style):
        assert torch.isfinite(t.grad).all() and t.grad.abs().max() > 0


def test_color_transfer_moves_the_colour_moments():
    g = torch.Generator().manual_seed(11)
    # gentle palettes so the transfer stays inside the RGB cube (no clamping happens)
    content = 0.5 + 0.08 * torch.randn(1, 3, 10, 10, generator=g, dtype=F64)
    style = torch.tensor([0.6, 0.4, 0.5], dtype=F64).view(1, 3, 1, 1) \
        + 0.05 * torch.randn(1, 3, 8, 8, generator=g, dtype=F64)
    out = color_transfer(content, style, eps=0.0)
    assert out.min() > 0 and out.max() < 1                   # clamp inactive here
    m_out, c_out = _moments(out)
    m_sty, c_sty = _moments(style)
    assert torch.allclose(m_out, m_sty, atol=1e-10) and torch.allclose(c_out, c_sty, atol=1e-10)
    # a harsh style pushes pixels out of gamut: the output is clamped to [0, 1]
    harsh = torch.rand(1, 3, 8, 8, generator=g, dtype=F64).round()
    clamped = color_transfer(torch.rand(1, 3, 8, 8, generator=g, dtype=F64), harsh)
    assert clamped.min() >= 0 and clamped.max() <= 1
    assert ((clamped == 0) | (clamped == 1)).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float32_and_float64(dtype):
    content = _maps(2, 4, 6, 6, seed=12, dtype=dtype).requires_grad_(True)
    style = _maps(2, 4, 6, 6, seed=13, dtype=dtype)
    out = wct(content, style)
    assert out.dtype == dtype
    out.square().sum().backward()
    c64 = content.detach().double().requires_grad_(True)
    wct(c64, style.double()).square().sum().backward()
    rel = (content.grad.double() - c64.grad).norm() / c64.grad.norm()
    # float32: measured 5e-5 to 1.8e-4 under the perturbations of `make test-perturbed`; bound 2e-3
    assert rel < (2e-3 if dtype == torch.float32 else 1e-12)
    m_out, _ = _moments(out.detach())
    assert torch.allclose(m_out, _moments(style)[0], atol=1e-4)


def test_bad_input():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"x must be a feature map of shape \(B, C, H, W\).*got shape \(3, 4, 4\)"):
        whiten(x[0])
    with pytest.raises(ValueError, match="style must have 3 channels.*got 4"):
        wct(x, torch.randn(2, 4, 4, 4))
    with pytest.raises(ValueError, match="style must have batch size 1 or that of xw \\(2\\), got 3"):
        color(x, torch.randn(3, 3, 4, 4))
    with pytest.raises(ValueError, match=r"H\*W >= 2.*got H\*W = 1"):
        whiten(torch.randn(2, 3, 1, 1))
    with pytest.raises(ValueError, match="alpha must be a number in \\[0, 1\\], got 1.5"):
        wct(x, x, alpha=1.5)
    with pytest.raises(ValueError, match="groups must divide"):
        whiten(x, groups=2)
    with pytest.raises(ValueError, match="content_img must hold RGB values in \\[0, 1\\]"):
        color_transfer(x, torch.rand_like(x))
    with pytest.raises(ValueError, match="content_img must have 3 channels.*got 4"):
        color_transfer(torch.rand(1, 4, 4, 4), torch.rand(1, 3, 4, 4))


@pytest.mark.parametrize(
    "call,layer,argument",
    [
        (lambda bad, ok: whiten(bad), "whiten", "x"),
        (lambda bad, ok: color(bad, ok), "color", "xw"),
        (lambda bad, ok: color(ok, bad), "color", "style"),
        (lambda bad, ok: wct(bad, ok), "wct", "content"),
        (lambda bad, ok: wct(ok, bad), "wct", "style"),
        (lambda bad, ok: wct(ok, bad, alpha=0.5), "wct", "style"),
        (lambda bad, ok: color_transfer(bad, ok.sigmoid()), "color_transfer", "content_img"),
        (lambda bad, ok: color_transfer(ok.sigmoid(), bad), "color_transfer", "style_img"),
    ],
)
def test_non_finite_input_is_named_by_the_callers_argument(call, layer, argument):
    ok = torch.randn(2, 3, 4, 4)
    bad = ok.clone()
    bad[1, 2, 3, 0] = float("nan")
    with pytest.raises(ValueError) as info:
        call(bad, ok)
    message = str(info.value)
    assert message.startswith(f"{layer}: {argument} contains 1 NaN/Inf entries (shape (2, 3, 4, 4)"), message
    assert not any(word in message.split() for word in ("X", "A", "Xs", "Xw"))


def test_wct_names_its_own_arguments_in_shape_errors():
    content = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"^wct: content needs at least 2 spatial positions"):
        wct(torch.randn(2, 3, 1, 1), content)
    with pytest.raises(ValueError, match=r"^wct: style must have batch size 1 or that of content \(2\), got 3"):
        wct(content, torch.randn(3, 3, 4, 4))


@pytest.mark.parametrize(
    "call,argument",
    [(lambda x: whiten(x), "x"), (lambda x: wct(x, x), "content"), (lambda x: color(x.detach(), x), "style")],
)
def test_huge_input_says_the_covariance_overflowed(call, argument):
    x = _maps(2, 3, 5, 5, seed=3, dtype=torch.float32) * 1e20
    with pytest.raises(ValueError, match=rf"the covariance of {argument} \(shape \(2, 3, 5, 5\).*"
                                         r"overflowed float32; scale the input or .*float64") as info:
        call(x)
    assert "NaN" not in str(info.value)


def test_integer_input_lists_the_accepted_dtypes():
    with pytest.raises(ValueError, match=r"whiten: x must have a real floating dtype "
                                         r"\(float16/bfloat16/float32/float64\), got torch.int64"):
        whiten(torch.ones(2, 3, 4, 4, dtype=torch.int64))
