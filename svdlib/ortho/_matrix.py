"""One reshaping convention for the whole of :mod:`svdlib.ortho`.

A weight of shape ``(out, in)`` is already a matrix. A convolution weight of shape
``(out_channels, in_channels, *kernel)`` is the matrix ``out_channels x (in_channels * prod(kernel))``
(one row per output filter), as in section 4 of Song et al., ECCV 2022 ("Improving Covariance
Conditioning of the SVD Meta-layer by Orthogonality") and in the ECCV code
(``weight_grad.view(B, C*H*W)``). Every function of this package that treats a weight or a
gradient as a matrix goes through :func:`as_matrix`, so spectral norm, orthogonal loss,
orthogonal weight, NOG and OLR all agree on what "orthogonal" means for a convolution.

torch's own ``parametrizations.orthogonal`` orthogonalises each trailing ``kh x kw`` slice of a
4-D weight instead; that is a different constraint and is not used here.
"""
from __future__ import annotations

import math

import torch

__all__ = ["as_matrix", "from_matrix", "check_weight", "gram_identity_error"]


def check_weight(W: object, name: str = "W") -> torch.Tensor:
    """Validate a weight-like tensor: a real floating tensor with at least 2 dimensions,
    no empty dimension and only finite entries. Returns ``W`` unchanged.

    Raises ``TypeError``/``ValueError`` naming ``name``, the expectation and the received value.
    """
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(W).__name__}")
    if W.dim() < 2:
        raise ValueError(
            f"{name} must have at least 2 dimensions (out, in, *kernel), got shape {tuple(W.shape)}"
        )
    if W.is_complex() or not W.is_floating_point():
        raise ValueError(f"{name} must have a real floating dtype, got {W.dtype}")
    if W.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(W.shape)}")
    if not bool(torch.isfinite(W).all()):
        bad = int((~torch.isfinite(W)).sum())
        raise ValueError(f"{name} contains {bad} NaN/Inf entries (shape {tuple(W.shape)})")
    return W


def as_matrix(W: torch.Tensor) -> torch.Tensor:
    """View a weight (or its gradient) as the matrix ``W.shape[0] x prod(W.shape[1:])``.

    A view when ``W`` is contiguous (so in-place edits of the result edit ``W``), a copy otherwise.
    """
    return W.reshape(W.shape[0], math.prod(W.shape[1:]))


def from_matrix(M: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`as_matrix`: reshape the matrix ``M`` back to the weight ``shape``."""
    return M.reshape(shape)


def gram_identity_error(M: torch.Tensor) -> torch.Tensor:
    """``|| M M^T - I ||_F`` for a wide (or square) matrix, ``|| M^T M - I ||_F`` for a tall one.

    The smaller Gram matrix is used because a tall ``m x n`` matrix (``m > n``) has rank at most
    ``n`` and can only have orthonormal *columns*: ``M M^T - I`` is then at least
    ``sqrt(m - n)`` away from zero, whatever ``M`` is.
    """
    m, n = M.shape
    gram = M @ M.mT if m <= n else M.mT @ M
    eye = torch.eye(gram.shape[0], dtype=M.dtype, device=M.device)
    return torch.linalg.matrix_norm(gram - eye)
