"""Optimal Learning Rate (OLR), Song et al., ECCV 2022, sec. 5.2 and app. A.2.

The learning rate of the Pre-SVD layer is chosen so that the updated weight ``W - eta G`` is as
close to orthogonal as possible (eq. 18),

    min_eta || (W - eta G)(W - eta G)^T - I ||_F,

which, after vectorising ``w = vec(W)``, ``l = vec(G)`` and neglecting the terms of order
``eta^2`` and ``eta^3`` and the identity's vector ``i``, gives (eq. 20 / eq. 33)

    eta* = (w^T w  l^T w) / (w^T w  l^T l + 2 (l^T w)^2),

used only when ``0 < eta* < lr`` and replaced by ``lr`` otherwise (eq. 21).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._matrix import as_matrix, check_weight

__all__ = ["optimal_learning_rate", "eta_star", "exact_optimal_learning_rate"]


def _check_pair(W: torch.Tensor, G: torch.Tensor) -> None:
    check_weight(W, "W")
    check_weight(G, "G")
    if W.shape != G.shape:
        raise ValueError(
            f"G must have the shape of W, expected {tuple(W.shape)}, got {tuple(G.shape)}"
        )


def _check_lr(lr: float) -> float:
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError(f"lr must be a scalar, got a tensor of shape {tuple(lr.shape)}")
        lr = float(lr)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite positive float, got {lr!r}")
    return float(lr)


def eta_star(W: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    r"""The raw optimal learning rate of eq. 20 (Song et al., ECCV 2022), without the switch.

    .. math::

        \eta^\star = \frac{w^T w \; l^T w}{w^T w \; l^T l + 2 (l^T w)^2},
        \qquad w = \mathrm{vec}(W),\ l = \mathrm{vec}(G).

    Parameters
    ----------
    W, G : torch.Tensor
        The weight and its gradient, same shape (any weight shape; only the vectorisation
        matters here).

    Returns
    -------
    torch.Tensor
        A float64 0-dim tensor on ``W``'s device (no host synchronisation). NaN when the
        denominator is zero (``G = 0``), so that the switch of eq. 21 falls back to ``lr``.
        It may be negative (when ``<G, W> < 0``) or larger than any sensible learning rate:
        eq. 20 is unbounded for arbitrary ``W`` and ``G`` (sec. 5.2).
    """
    _check_pair(W, G)
    return _eta_star(W, G)


def _eta_star(W: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """:func:`eta_star` without validation (for :class:`PreSVD`'s per-step hook)."""
    w = W.detach().reshape(-1).double()
    g = G.detach().reshape(-1).to(device=w.device, dtype=torch.float64)
    wtw, ltw, ltl = w @ w, g @ w, g @ g
    num = wtw * ltw
    den = wtw * ltl + 2.0 * ltw * ltw
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), torch.nan)


def optimal_learning_rate(W: torch.Tensor, G: torch.Tensor, lr: float) -> torch.Tensor:
    r"""OLR: eta* of eq. 20 with the switch of eq. 21 (Song et al., ECCV 2022).

    .. math::

        \eta = \begin{cases} \eta^\star & 0 < \eta^\star < lr \\ lr & \text{otherwise} \end{cases}

    In words: the step size that makes ``W - eta G`` closest to orthogonal (to first order in
    ``eta``), but never larger than the learning rate the layer would otherwise have, and never
    zero or negative (the lower guard is the ECCV code's ``lr > 0`` test; the paper's eq. 21
    only states the upper one).

    Parameters
    ----------
    W : torch.Tensor
        Weight of the Pre-SVD layer (``out x in`` or a convolution weight; vectorised).
    G : torch.Tensor
        Its gradient (after NOG when NOG is used too), same shape as ``W``.
    lr : float
        The learning rate the layer would otherwise have (the scheduled learning rate).

    Returns
    -------
    torch.Tensor
        A float64 0-dim tensor on ``W``'s device. ``lr`` when ``eta*`` is NaN (``G = 0``),
        ``<= 0`` or ``>= lr``.

    Notes
    -----
    The vectorised objective of eq. 19 is a scalar function of ``||W - eta G||_F^2``; eq. 20
    keeps its first-order stationarity condition. :func:`exact_optimal_learning_rate` gives the
    exact minimiser of the matrix objective eq. 18 for comparison (notebook 04 measures the
    gap). Proposition 1: when ``W`` and ``G`` both have orthonormal rows and
    ``1 <= <G, W>_F``, ``1/(N^2+2) <= eta* <= N^2/(N^2+2)`` with ``N`` the row dimension.

    Examples
    --------
    >>> import torch
    >>> from svdlib.ortho import optimal_learning_rate
    >>> W = torch.eye(4, dtype=torch.float64); G = torch.eye(4, dtype=torch.float64)
    >>> float(optimal_learning_rate(W, G, lr=0.25))   # eta* = 4*4 / (4*4 + 2*4*4) = 1/3 >= lr
    0.25
    >>> round(float(optimal_learning_rate(W, 10 * G, lr=0.25)), 6)   # eta* = 1/30 < lr
    0.033333
    """
    lr = _check_lr(lr)
    star = eta_star(W, G)
    use = (star > 0) & (star < lr)
    return torch.where(use, star, torch.full_like(star, lr))


def exact_optimal_learning_rate(W: torch.Tensor, G: torch.Tensor, *, nonnegative: bool = True) -> float:
    r"""The exact minimiser of eq. 18, ``min_eta ||(W - eta G)(W - eta G)^T - I||_F``.

    With ``A = W W^T - I``, ``B = G W^T + W G^T`` and ``D = G G^T`` (the smaller Gram side is
    used for a tall matrix, as in :func:`svdlib.ortho.orthogonal_loss`), the squared objective is
    the quartic ``||A - eta B + eta^2 D||_F^2``; its stationary points are the real roots of a
    cubic, and the global minimiser is the best of them (and of ``eta = 0`` when
    ``nonnegative``). This is the reference against which the first-order formula eq. 20 is
    measured; it is not used in training.

    Parameters
    ----------
    W, G : torch.Tensor
        Weight and gradient of the same shape (convolution weights as ``out x in*k*k``).
    nonnegative : bool, default True
        Restrict to ``eta >= 0`` (a learning rate).

    Returns
    -------
    float
        The minimising ``eta`` (computed in float64 on the host).
    """
    _check_pair(W, G)
    M = as_matrix(W.detach()).double().cpu()
    L = as_matrix(G.detach()).double().cpu()
    if M.shape[0] > M.shape[1]:
        M, L = M.mT, L.mT
    eye = torch.eye(M.shape[0], dtype=torch.float64)
    A = M @ M.mT - eye
    B = L @ M.mT + M @ L.mT
    D = L @ L.mT

    def dot(X: torch.Tensor, Y: torch.Tensor) -> float:
        return float((X * Y).sum())

    # f(eta) = c0 + c1 eta + c2 eta^2 + c3 eta^3 + c4 eta^4
    c = [dot(A, A), -2 * dot(A, B), dot(B, B) + 2 * dot(A, D), -2 * dot(B, D), dot(D, D)]
    f = np.polynomial.Polynomial(c)
    if c[4] == 0.0:  # G = 0: every eta is as good; no step is the natural answer
        return 0.0
    candidates = [r.real for r in f.deriv().roots() if abs(r.imag) <= 1e-12 * max(1.0, abs(r.real))]
    if nonnegative:
        candidates = [r for r in candidates if r >= 0] + [0.0]
    return float(min(candidates, key=f))
