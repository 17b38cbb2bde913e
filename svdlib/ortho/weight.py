"""Weight treatments of the Pre-SVD layer, Song et al., ECCV 2022, sec. 4.2.

* :func:`spectral_norm` - ``W / sigma_max(W)`` (eq. 11), torch's power-iteration parametrization.
* :func:`orthogonal_loss` - soft orthogonality ``||W W^T - I||_F`` (eq. 12) and
  :func:`add_orthogonal_loss` to add it, with a coefficient, to a training loss.
* :func:`orthogonal_weight` - hard orthogonality by the matrix exponential of a skew-symmetric
  matrix, ``exp(W - W^T)`` (eq. 13), as a parametrization.

Convolution weights are the matrix ``out x (in * kh * kw)`` throughout (:mod:`._matrix`).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._matrix import as_matrix, from_matrix, gram_identity_error

__all__ = ["spectral_norm", "orthogonal_loss", "add_orthogonal_loss", "orthogonal_weight"]


def _check_module_weight(module: object, name: str, func: str) -> torch.Tensor:
    if not isinstance(module, nn.Module):
        raise TypeError(f"{func}: module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(name, str) or not hasattr(module, name):
        raise ValueError(f"{func}: module {type(module).__name__} has no attribute name={name!r}")
    W = getattr(module, name)
    if not isinstance(W, torch.Tensor) or W.dim() < 2:
        shape = tuple(W.shape) if isinstance(W, torch.Tensor) else type(W).__name__
        raise ValueError(
            f"{func}: module.{name} must be a tensor with at least 2 dimensions (out, in, *kernel), "
            f"got {shape}"
        )
    if not W.is_floating_point():
        raise ValueError(f"{func}: module.{name} must be floating point, got {W.dtype}")
    return W


# --------------------------------------------------------------------------- spectral norm
def spectral_norm(
    module: nn.Module,
    name: str = "weight",
    n_power_iterations: int = 1,
    eps: float = 1e-12,
) -> nn.Module:
    r"""Spectral normalisation of the Pre-SVD layer: ``W / sigma_max(W)`` (eq. 11).

    .. math::

        W_{SN} = W / \sigma_{max}(W), \qquad \sigma_{max}(W_{SN}) = 1,

    so ``sigma_max(W_SN Y) <= sigma_max(Y)`` for the features ``Y`` passed in (sec. 4.2).

    This is ``torch.nn.utils.parametrizations.spectral_norm`` with ``dim=0`` forced, so a
    convolution weight is the matrix ``out x (in * kh * kw)`` as everywhere in
    :mod:`svdlib.ortho` (torch would pick ``dim=1`` for transposed convolutions).
    ``sigma_max`` is estimated by power iteration: ``n_power_iterations`` steps per forward
    call in training mode, continuing from the previous estimate, so after a few dozen training
    forwards the estimate has converged (geometrically with ratio ``(sigma_2/sigma_1)^2``); in
    eval mode the last estimate is reused.

    Parameters
    ----------
    module : torch.nn.Module
        Layer with a weight of at least 2 dimensions.
    name : str, default "weight"
    n_power_iterations : int, default 1
    eps : float, default 1e-12
        Numerical floor of the power iteration's normalisations (torch's default).

    Returns
    -------
    torch.nn.Module
        ``module``, parametrized in place; its unnormalised weight lives in
        ``module.parametrizations.weight.original`` (what an optimiser and :class:`PreSVD` see).

    Examples
    --------
    >>> import torch
    >>> from svdlib.ortho import spectral_norm
    >>> layer = spectral_norm(torch.nn.Linear(5, 4))
    >>> hasattr(layer.parametrizations, "weight")
    True
    """
    _check_module_weight(module, name, "spectral_norm")
    if not isinstance(n_power_iterations, int) or n_power_iterations < 1:
        raise ValueError(f"n_power_iterations must be a positive int, got {n_power_iterations!r}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    return nn.utils.parametrizations.spectral_norm(
        module, name=name, n_power_iterations=n_power_iterations, eps=eps, dim=0
    )


# --------------------------------------------------------------------------- orthogonal loss
def orthogonal_loss(W: torch.Tensor) -> torch.Tensor:
    r"""Soft orthogonality penalty ``||W W^T - I||_F`` (eq. 12), differentiable.

    .. math::

        \ell_{OL}(W) = \| W W^T - I \|_F \quad (m \le n), \qquad
        \| W^T W - I \|_F \quad (m > n).

    ``W`` is a weight (``out x in``) or a convolution weight seen as ``out x (in*kh*kw)``. For a
    tall matrix (``m > n``) the smaller Gram ``W^T W`` is used, because ``W W^T`` has rank at most
    ``n`` and ``||W W^T - I||_F >= sqrt(m - n)`` whatever ``W`` is; with this choice the loss is
    zero exactly when the rows (wide) or the columns (tall) are orthonormal.

    Parameters
    ----------
    W : torch.Tensor
        At least 2 dimensions, floating point.

    Returns
    -------
    torch.Tensor
        0-dim tensor with ``W``'s dtype, differentiable w.r.t. ``W``.

    Notes
    -----
    The Frobenius norm (not its square) is what the paper writes; its gradient is undefined only
    at an exactly orthogonal ``W`` where autograd's norm backward returns 0 (torch's subgradient
    convention), never NaN.
    """
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"W must be a torch.Tensor, got {type(W).__name__}")
    if W.dim() < 2 or not W.is_floating_point():
        raise ValueError(
            f"W must be a floating tensor with at least 2 dimensions, got shape {tuple(W.shape)} "
            f"and dtype {W.dtype}"
        )
    return gram_identity_error(as_matrix(W))


def add_orthogonal_loss(
    loss: torch.Tensor,
    weights: torch.Tensor | nn.Module | Iterable[torch.Tensor | nn.Module],
    coefficient: float,
) -> torch.Tensor:
    r"""``loss + coefficient * sum_W ||W W^T - I||_F`` (eq. 12 added to the training objective).

    Parameters
    ----------
    loss : torch.Tensor
        The task loss (0-dim).
    weights : tensor, module, or an iterable of them
        A module contributes ``module.weight`` (the effective weight, after any
        parametrization).
    coefficient : float
        Non-negative weight of the penalty (no default: the right value depends on the scale of
        the task loss).

    Returns
    -------
    torch.Tensor
        The regularised loss.

    Examples
    --------
    >>> import torch
    >>> from svdlib.ortho import add_orthogonal_loss
    >>> conv = torch.nn.Conv2d(3, 8, 3)
    >>> total = add_orthogonal_loss(torch.tensor(1.0), conv, coefficient=0.1)
    >>> bool(total > 1.0)
    True
    """
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"loss must be a scalar tensor, got {loss!r}")
    if isinstance(coefficient, bool) or not isinstance(coefficient, (int, float)) or not coefficient >= 0:
        raise ValueError(f"coefficient must be a non-negative float, got {coefficient!r}")
    if isinstance(weights, (torch.Tensor, nn.Module)):
        weights = [weights]
    penalty = loss.new_zeros(())
    for i, w in enumerate(weights):
        if isinstance(w, nn.Module):
            w = _check_module_weight(w, "weight", f"add_orthogonal_loss (weights[{i}])")
        penalty = penalty + orthogonal_loss(w)
    return loss + coefficient * penalty


# --------------------------------------------------------------------------- orthogonal weight
class _SkewExponential(nn.Module):
    r"""``X -> exp(A - A^T)`` restricted to the weight's shape (the parametrization of eq. 13).

    For ``M = as_matrix(X)`` of shape ``m x n`` and ``k = max(m, n)``, ``A`` is ``M`` padded with
    zeros to ``k x k`` (rows appended when wide, columns when tall); ``Q = exp(A - A^T)`` is a
    ``k x k`` rotation, and its first ``m`` rows (wide) or first ``n`` columns (tall) are the
    weight, which therefore has orthonormal rows (wide) or columns (tall). For a square weight
    this is exactly ``exp(W - W^T)`` of the paper. Every semi-orthogonal matrix (of determinant
    +1 when square) is reached: ``A - A^T`` spans the horizontal space of the Stiefel manifold
    ``SO(k)/SO(k - min(m, n))`` and the exponential of the normal homogeneous metric is onto.
    """

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        M = as_matrix(X)
        m, n = M.shape
        if m <= n:
            A = torch.cat([M, M.new_zeros(n - m, n)], dim=0)
        else:
            A = torch.cat([M, M.new_zeros(m, m - n)], dim=1)
        Q = torch.linalg.matrix_exp(A - A.mT)
        W = Q[:m, :] if m <= n else Q[:, :n]
        return from_matrix(W, X.shape)


def orthogonal_weight(module: nn.Module, name: str = "weight") -> nn.Module:
    r"""Hard orthogonality of the Pre-SVD layer: the weight is ``exp(W - W^T)`` (eq. 13).

    .. math::

        \exp(W - W^T) \exp(W - W^T)^T = I,

    because the exponential of a skew-symmetric matrix is orthogonal. The unconstrained ``W`` is
    the trainable parameter; the layer computes with the orthogonal matrix.

    A convolution weight is the matrix ``out x (in*kh*kw)``: when ``out <= in*kh*kw`` the
    flattened weight has orthonormal rows (the filters are orthonormal), otherwise orthonormal
    columns; see :class:`_SkewExponential` for how a rectangular shape is handled. This is the
    paper's matrix form; the ECCV code's skew-symmetric *convolution* exponential is a different
    operator and is not what this function builds. torch's ``parametrizations.orthogonal`` is not
    used because it orthogonalises each ``kh x kw`` slice of a 4-D weight.

    Parameters
    ----------
    module : torch.nn.Module
        Layer with a weight of at least 2 dimensions (Linear, Conv1d/2d/3d, ...).
    name : str, default "weight"

    Returns
    -------
    torch.nn.Module
        ``module``, parametrized in place. The trainable parameter is
        ``module.parametrizations.weight.original`` (same shape as the weight, initialised with the
        current weight, so the first orthogonal weight is ``exp(W0 - W0^T)``); this is the tensor an
        optimiser updates and on which :class:`svdlib.ortho.PreSVD` applies NOG and OLR.
        Assigning ``module.weight = X`` sets the *parameter* to ``X`` (no inverse map is defined).

    Examples
    --------
    >>> import torch
    >>> from svdlib.ortho import orthogonal_weight
    >>> conv = orthogonal_weight(torch.nn.Conv2d(3, 8, 3).double())
    >>> M = conv.weight.reshape(8, 27)
    >>> torch.allclose(M @ M.T, torch.eye(8, dtype=torch.float64))
    True
    """
    _check_module_weight(module, name, "orthogonal_weight")
    if parametrize.is_parametrized(module, name) and any(
        isinstance(p, _SkewExponential) for p in module.parametrizations[name]
    ):
        raise ValueError(f"orthogonal_weight: module.{name} is already an orthogonal weight")
    parametrize.register_parametrization(module, name, _SkewExponential())
    return module
