"""Whitening and colouring transform (WCT) of feature maps, and colour transfer of images.

Robust Differentiable SVD (TPAMI), sec. 5.3.1, eq. 30-33 (after Li et al. 2017, "Universal
Style Transfer via Feature Transforms", and Cho et al. 2019, GD-WCT, for the channel groups).
"""
from __future__ import annotations

import numbers

import torch

import svdlib
from svdlib.remedies import DEFAULT_MATFUNC_BACKWARD

from ._checks import (check_backward, check_covariance_finite, check_feature_map,
                      check_finite_input, check_method, check_nonnegative, check_positive_int)

__all__ = ["whiten", "color", "wct", "color_transfer"]


# compute_dtype only widens the eigendecomposition; the covariance is formed in the input's dtype
_WIDER = "pass float64 features (x.double())"


def _checked(x: torch.Tensor, name: str, layer: str, channels: int | None = None) -> None:
    """A finite (B, C, H, W) feature map, errors naming ``layer`` and the caller's ``name``."""
    check_feature_map(x, name, channels, layer)
    check_finite_input(x, name, layer)


def _grouped(x: torch.Tensor, name: str, groups: int, layer: str, min_positions: int = 1):
    """(B, C, H, W) -> (B, G, C/G, H*W), checking that G divides C and H*W >= min_positions."""
    B, C, H, W = x.shape
    if C % groups:
        raise ValueError(
            f"{layer}: groups must divide the number of channels of {name} (C = {C}), "
            f"got groups={groups}"
        )
    if H * W < min_positions:
        raise ValueError(
            f"{layer}: {name} needs at least 2 spatial positions (H*W >= 2) to estimate a "
            f"per-sample covariance, got H*W = {H * W} (shape {tuple(x.shape)})"
        )
    return x.reshape(B, groups, C // groups, H * W)


def _sample_covariance(X: torch.Tensor, x: torch.Tensor, name: str, layer: str) -> torch.Tensor:
    P = svdlib.covariance(X, check_finite=False)
    check_covariance_finite(P, x, name, layer, remedy=_WIDER)
    return P


def _check_common(method: str, backward: str) -> None:
    check_method(method)
    check_backward(backward)


def _whiten(x, name, layer, method, backward, eps, groups, options) -> torch.Tensor:
    """Whitening of the checked ``x`` (eq. 30-31); see :func:`whiten`."""
    X = _grouped(x, name, groups, layer, min_positions=2)
    mu = X.mean(dim=-1, keepdim=True)
    # eps * I is added by the spine (``eps`` of svdlib.inv_sqrtm) for both methods.
    S = svdlib.inv_sqrtm(_sample_covariance(X, x, name, layer), method=method,
                         backward=backward, eps=eps, **options)
    return (S @ (X - mu)).reshape(x.shape)


def _color(xw, style, names, layer, method, backward, groups, options) -> torch.Tensor:
    """Colouring of the checked ``xw`` with the checked ``style`` (eq. 32-33); see
    :func:`color`. ``names`` are the caller's names of the two."""
    if style.shape[0] not in (1, xw.shape[0]):
        raise ValueError(
            f"{layer}: {names[1]} must have batch size 1 or that of {names[0]} ({xw.shape[0]}), "
            f"got {style.shape[0]} (shape {tuple(style.shape)})"
        )
    Xw = _grouped(xw, names[0], groups, layer)
    Xs = _grouped(style, names[1], groups, layer, min_positions=2)
    mu_s = Xs.mean(dim=-1, keepdim=True)
    Cs = svdlib.sqrtm(_sample_covariance(Xs, style, names[1], layer), method=method,
                      backward=backward, **options)
    return (Cs.to(xw.dtype) @ Xw + mu_s.to(xw.dtype)).reshape(xw.shape)


def _wct(content, style, names, layer, alpha, method, backward, eps, groups, options):
    """WCT of the checked ``content`` and ``style`` (eq. 30-33); see :func:`wct`."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{layer}: alpha must be a number in [0, 1], got {alpha!r}")
    _check_common(method, backward)
    eps = check_nonnegative(eps, "eps")
    groups = check_positive_int(groups, "groups")
    if alpha == 0.0:
        return content.clone()
    out = _color(_whiten(content, names[0], layer, method, backward, eps, groups, options),
                 style, names, layer, method, backward, groups, options)
    if alpha == 1.0:
        return out
    return alpha * out + (1.0 - alpha) * content


def whiten(
    x: torch.Tensor,
    method: str = "eigh",
    backward: str = DEFAULT_MATFUNC_BACKWARD,
    eps: float = 1e-5,
    groups: int = 1,
    **options,
) -> torch.Tensor:
    r"""ZCA-whiten each sample of a feature map over its H*W positions (eq. 30-31).

    .. math::

        \hat X = (\Sigma_c + \epsilon I)^{-1/2} (X - \mu_c \mathbf 1^T)

    with X (C, HW) one sample, mu_c its channel means and Sigma_c its 1/HW covariance. The
    result has zero channel means and covariance Sigma_c (Sigma_c + eps I)^{-1} (the identity
    for ``eps = 0``): the "style" (second-order statistics) is removed.

    Parameters
    ----------
    x : torch.Tensor
        Feature map (B, C, H, W), H*W >= 2.
    method : {"eigh", "newton_schulz"}, default "eigh"
        Passed to :func:`svdlib.inv_sqrtm`.
    backward : str, default "taylor"
        (``svdlib.remedies.DEFAULT_MATFUNC_BACKWARD``, the papers' SVD-Taylor); pass
        "divided_difference" for the exact, bounded gradient
        Remedy name, a key of :data:`svdlib.BACKWARDS`.
    eps : float, default 1e-5
        Added as ``eps * I`` to each content covariance; keeps the whitening finite when H*W
        <= C or the content is flat (e.g. a one-colour image), at the price of exactness.
    groups : int, default 1
        Whiten C/groups consecutive channels at a time (GD-WCT uses 8 groups of 32).
    **options
        Remedy and solver options for :func:`svdlib.inv_sqrtm`.

    Returns
    -------
    torch.Tensor
        The whitened feature map, shape and dtype of ``x``.
    """
    _check_common(method, backward)
    eps = check_nonnegative(eps, "eps")
    groups = check_positive_int(groups, "groups")
    _checked(x, "x", "whiten")
    return _whiten(x, "x", "whiten", method, backward, eps, groups, options)


def color(
    xw: torch.Tensor,
    style: torch.Tensor,
    method: str = "eigh",
    backward: str = DEFAULT_MATFUNC_BACKWARD,
    groups: int = 1,
    **options,
) -> torch.Tensor:
    r"""Colour whitened features with a style's covariance and mean (eq. 32-33).

    .. math::

        Y = \Sigma_s^{1/2} \hat X + \mu_s \mathbf 1^T

    with mu_s, Sigma_s the channel mean and 1/HW covariance of each style sample. If ``xw`` is
    white (zero mean, identity covariance) Y has exactly the style's mean and covariance.

    Parameters
    ----------
    xw : torch.Tensor
        Whitened features (B, C, H, W), e.g. from :func:`whiten`.
    style : torch.Tensor
        Style features (B, C, Hs, Ws) or (1, C, Hs, Ws) (one style for the whole batch); the
        spatial size may differ from ``xw``'s.
    method, backward, groups, **options
        As in :func:`whiten`; the square root is :func:`svdlib.sqrtm` (no ``eps``: the square
        root is finite on rank-deficient covariances, and the remedy bounds its gradient).

    Returns
    -------
    torch.Tensor
        The coloured features, shape of ``xw``.
    """
    _check_common(method, backward)
    groups = check_positive_int(groups, "groups")
    _checked(xw, "xw", "color")
    _checked(style, "style", "color", xw.shape[1])
    return _color(xw, style, ("xw", "style"), "color", method, backward, groups, options)


def wct(
    content: torch.Tensor,
    style: torch.Tensor,
    alpha: float = 1.0,
    method: str = "eigh",
    backward: str = DEFAULT_MATFUNC_BACKWARD,
    eps: float = 1e-5,
    groups: int = 1,
    **options,
) -> torch.Tensor:
    r"""Whitening and colouring transform: restyle ``content`` with ``style``'s statistics.

    .. math::

        \mathrm{wct}(X_c, X_s) = \alpha\,\big(\Sigma_s^{1/2} (\Sigma_c + \epsilon I)^{-1/2}
        (X_c - \mu_c \mathbf 1^T) + \mu_s \mathbf 1^T\big) + (1 - \alpha) X_c

    (Robust Differentiable SVD sec. 5.3.1, eq. 30-33; the alpha blend of Li et al. 2017).
    With ``alpha = 1`` and ``eps = 0`` each output sample has exactly the channel mean and
    covariance of its style sample.

    Parameters
    ----------
    content : torch.Tensor
        Content features (B, C, H, W).
    style : torch.Tensor
        Style features (B or 1, C, Hs, Ws).
    alpha : float, default 1.0
        Blend weight in [0, 1]: 1 is the full transform, 0 returns ``content``.
    method, backward, eps, groups, **options
        As in :func:`whiten` (``eps`` regularises the content covariance only).

    Returns
    -------
    torch.Tensor
        Stylised features, shape and dtype of ``content``.

    Examples
    --------
    >>> import torch, svdlib
    >>> c, s = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randn(2, 3, 6, 6, dtype=torch.float64)
    >>> out = svdlib.nn.wct(c, s, eps=0.0)
    >>> f = lambda t: svdlib.covariance(t.flatten(2))
    >>> bool(torch.allclose(f(out), f(s), atol=1e-8))
    True
    """
    _checked(content, "content", "wct")
    _checked(style, "style", "wct", content.shape[1])
    return _wct(content, style, ("content", "style"), "wct", alpha, method, backward, eps,
                groups, options)


def color_transfer(
    content_img: torch.Tensor,
    style_img: torch.Tensor,
    alpha: float = 1.0,
    method: str = "eigh",
    backward: str = DEFAULT_MATFUNC_BACKWARD,
    eps: float = 1e-5,
    **options,
) -> torch.Tensor:
    """Transfer the colours of ``style_img`` to ``content_img`` by WCT on raw RGB pixels.

    Robust Differentiable SVD, Fig. 2(d)-(e) and sec. 5.3.1: on pixels (C = 3) the whitening
    and colouring transform moves each content image's RGB mean and 3x3 RGB covariance to the
    style image's, which transfers the colour palette and keeps the content's structure.

    Parameters
    ----------
    content_img, style_img : torch.Tensor
        RGB images with values in [0, 1], shapes (B, 3, H, W) and (B or 1, 3, Hs, Ws).
    alpha, method, backward, eps, **options
        As in :func:`wct`. ``eps`` (default 1e-5, small against the ~1e-2 pixel variances of
        natural images) keeps flat, single-colour content images from blowing up.

    Returns
    -------
    torch.Tensor
        The recoloured images, clamped to [0, 1]. The transform is affine per image, so pixels
        can land outside the RGB cube; they are clamped with :func:`torch.clamp`, whose
        gradient is zero for the clamped pixels. Before clamping the output has exactly the
        style's colour moments (for eps = 0); after clamping only approximately.
    """
    names = ("content_img", "style_img")
    for name, img in zip(names, (content_img, style_img)):
        _checked(img, name, "color_transfer", 3)
        lo, hi = float(img.min()), float(img.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"color_transfer: {name} must hold RGB values in [0, 1], got values in "
                f"[{lo:.4g}, {hi:.4g}]; divide 8-bit images by 255"
            )
    out = _wct(content_img, style_img, names, "color_transfer", alpha, method, backward, eps, 1,
               options)
    return out.clamp(0.0, 1.0)
