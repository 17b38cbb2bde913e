"""Tests of svdlib.experiments.style (notebook 13: WCT style transfer, Robust Differentiable SVD sec. 5.3)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from svdlib.experiments import style as st




# ----------------------------------------------------------------------------- sharpness
def test_sharpness_matches_a_hand_computed_example():
    # Grey levels (8-bit) of a 3 x 3 image. Forward differences at the 4 pixels (y, x < 2):
    #   (0,0): gx = 3, gy = 4 -> 5     (0,1): gx = 0, gy = -3 -> 3
    #   (1,0): gx = -4, gy = 0 -> 4    (1,1): gx = 0, gy = 0 -> 0      mean = 12 / 4 = 3
    grey = torch.tensor([[0.0, 3.0, 3.0], [4.0, 0.0, 0.0], [4.0, 0.0, 9.0]], dtype=torch.float64)
    img = (grey / 255.0)[None]  # (1, H, W): a single-channel image in [0, 1]
    assert st.sharpness(img).item() == pytest.approx(3.0, abs=1e-12)
    assert st.sharpness(grey[None], scale=1.0).item() == pytest.approx(3.0, abs=1e-12)
    # The same grey image as RGB (R = G = B) has luma equal to the grey level.
    rgb = img.expand(3, 3, 3)
    assert st.sharpness(rgb).item() == pytest.approx(3.0, abs=1e-9)


def test_sharpness_uses_bt601_luma_and_is_batched():
    ramp = torch.linspace(0, 1, 6, dtype=torch.float64).repeat(5, 1)  # +0.2 per column
    img = torch.zeros(2, 3, 5, 6, dtype=torch.float64)
    img[0, 1] = ramp                       # green ramp: gradient 0.587 * 0.2 * 255 everywhere
    img[1] = 0.25                          # flat image: no gradient
    got = st.sharpness(img)
    assert got.shape == (2,)
    assert got[0].item() == pytest.approx(0.587 * 0.2 * 255, rel=1e-12)
    assert got[1].item() == 0.0
    # Independent reference: numpy differences of the luma.
    luma = np.tensordot(np.array(st.LUMA_WEIGHTS), img[0].numpy(), axes=1) * 255
    gx, gy = np.diff(luma, axis=1)[:-1], np.diff(luma, axis=0)[:, :-1]
    assert got[0].item() == pytest.approx(np.hypot(gx, gy).mean(), rel=1e-12)


def test_sharpness_rejects_bad_shapes():
    with pytest.raises(ValueError, match="C in"):
        st.sharpness(torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match="2 x 2"):
        st.sharpness(torch.rand(3, 1, 5))


# ----------------------------------------------------------------------------- model
def test_encoder_decoder_shapes_and_range():
    model = st.WCTAutoencoder(width=8)
    x = torch.rand(2, 3, 16, 24)
    f = model.encode(x)
    assert f.shape == (2, 8, 8, 12) and bool((f >= 0).all())  # ReLU features
    y = model.decode(f)
    assert y.shape == x.shape and bool(((y > 0) & (y < 1)).all())
    assert model.stylize(x, torch.rand(1, 3, 10, 10)).shape == x.shape
    with pytest.raises(ValueError, match="even"):
        model.encode(torch.rand(1, 3, 15, 16))
    with pytest.raises(ValueError, match="width"):
        st.WCTAutoencoder(width=7)


def test_wct_step_gives_the_style_feature_moments():
    model = st.WCTAutoencoder(width=8).double()
    with torch.no_grad():  # keep every ReLU of the last encoder conv active: full-rank features
        model.encoder[4].bias.fill_(1.0)
    g = torch.Generator().manual_seed(1)
    content = torch.rand(2, 3, 24, 24, generator=g, dtype=torch.float64)
    style = torch.rand(2, 3, 20, 20, generator=g, dtype=torch.float64)
    with torch.no_grad():
        fc = model.encode(content)
        assert torch.linalg.matrix_rank(torch.cov(fc[0].flatten(1))) == 8  # whitening is exact
        out = model.transfer_features(content, style, eps=0.0, backward="taylor")
        fs = model.encode(style).flatten(2).numpy()
    assert out.shape == fc.shape
    o = out.flatten(2).numpy()
    for b in range(2):  # numpy: an implementation independent of svdlib
        np.testing.assert_allclose(o[b].mean(1), fs[b].mean(1), atol=1e-10)
        np.testing.assert_allclose(np.cov(o[b], bias=True), np.cov(fs[b], bias=True), atol=1e-9)
    # the library's moment helper agrees with numpy too
    mu, cov = st.feature_moments(out)
    np.testing.assert_allclose(cov[1].numpy(), np.cov(o[1], bias=True), atol=1e-12)
    assert st.moment_loss(out, model.encode(style)).item() < 1e-15


def test_transfer_colors_moves_rgb_moments_to_the_style():
    g = torch.Generator().manual_seed(2)
    # Mid-range pixels with small spread: the affine transfer stays inside [0, 1] (no clamping).
    content = 0.5 + 0.1 * (torch.rand(3, 12, 16, generator=g, dtype=torch.float64) - 0.5)
    mix = torch.tensor([[1.0, 0.3, 0.0], [0.2, 1.0, 0.1], [0.0, 0.4, 1.0]], dtype=torch.float64)
    style = 0.4 + 0.1 * torch.einsum("ij,jhw->ihw", mix, torch.rand(3, 10, 10, generator=g, dtype=torch.float64))
    out = st.transfer_colors(content, style, eps=0.0)
    assert out.shape == content.shape
    o, s = out.reshape(3, -1).numpy(), style.reshape(3, -1).numpy()
    assert 0.0 < o.min() and o.max() < 1.0
    np.testing.assert_allclose(o.mean(1), s.mean(1), atol=1e-12)
    np.testing.assert_allclose(np.cov(o, bias=True), np.cov(s, bias=True), atol=1e-12)


# ----------------------------------------------------------------------------- gradient
def test_directional_error_against_finite_differences():
    g = torch.Generator().manual_seed(3)
    fc = torch.rand(2, 6, 8, 8, generator=g, dtype=torch.float64)
    fs = torch.rand(2, 6, 7, 7, generator=g, dtype=torch.float64)  # well-separated spectra
    methods = st.parse_methods("divided_difference,taylor,exact")
    errors = st.wct_directional_error(fc, fs, methods, eps=1e-5)
    # exact and divided differences are the exact gradient; the central difference is O(h^2).
    assert errors["exact"] < 1e-6 and errors["divided_difference"] < 1e-6
    # Taylor truncates 1/(1 - x) (sec. 3.2): off on close pairs, converging with the degree.
    high = st.wct_directional_error(fc, fs, st.parse_methods("taylor"), eps=1e-5, degree=200)
    assert high["taylor"] < errors["taylor"] / 10
    # A wrong gradient is caught: a method's forward that differs (Newton-Schulz on an
    # unconverged iteration) disagrees with the exact forward's derivative.
    ns = st.wct_directional_error(fc, fs, st.parse_methods("newton_schulz"), eps=1e-5)
    assert ns["newton_schulz"] > 10 * errors["divided_difference"]


def test_finetune_through_wct_trains_a_copy_and_reaches_the_encoder():
    model = st.WCTAutoencoder(width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = [torch.rand(3, 20, 20), torch.rand(3, 18, 22)]
    net, rec = st.finetune_through_wct(model, images, steps=2, backward="taylor", batch=2, size=8,
                                       lr=1e-2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    assert rec["skipped"] == 0 and len(rec["loss"]) == 2 and np.isfinite(rec["grad_norm"]).all()
    # The first conv only feeds the WCT layer, so its change proves the gradient crossed it.
    assert not torch.equal(net.encoder[0].weight, model.encoder[0].weight)


# ----------------------------------------------------------------------------- data, settings
def test_photographs_and_pairs():
    pytest.importorskip("sklearn")
    photos = st.load_photographs(scale=0.25)
    assert list(photos) == list(st.PHOTOGRAPHS)
    assert all(p.shape == (3, 106, 160) and 0 <= p.min() and p.max() <= 1 for p in photos.values())
    c1, s1 = st.content_style_pairs(photos, 3, 32, seed=5)
    c2, s2 = st.content_style_pairs(photos, 3, 32, seed=5)
    assert c1.shape == s1.shape == (3, 3, 32, 32)
    assert torch.equal(c1, c2) and torch.equal(s1, s2)
    assert not torch.equal(c1[0], c1[1])


def test_settings_and_methods_validation():
    quick = st.style_settings("quick")
    assert st.style_settings("quick", ae_steps=0, width=None) == quick  # 0 / None keep the profile
    assert st.style_settings("paper").groups == 8 and st.style_settings("paper").width // 8 == 32
    long = st.style_settings("long")
    assert long.seeds == 10 and quick.seeds == 3 and {**long.as_dict(), "profile": "quick", "seeds": 3} == quick.as_dict()
    with pytest.raises(ValueError, match="profile"):
        st.style_settings("full")
    with pytest.raises(ValueError, match="unknown setting"):
        st.style_settings("quick", epochs=3)
    with pytest.raises(ValueError, match="groups must divide"):
        st.style_settings("quick", groups=5)
    assert st.parse_methods("clip,newton_schulz")[1] == ("newton_schulz", "newton_schulz", "taylor")
    with pytest.raises(ValueError, match="unknown method"):
        st.parse_methods("taylor,svd")
    with pytest.raises(ValueError, match="twice"):
        st.parse_methods("taylor,taylor")
