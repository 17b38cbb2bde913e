"""Nearest Orthogonal Gradient (NOG), Song et al., ECCV 2022, sec. 5.1 and app. A.1.

The gradient ``G`` of the Pre-SVD layer is replaced by the orthogonal matrix nearest to it in
the Frobenius norm (eq. 14),

    R = G (G^T G)^{-1/2} = U V^T        (eq. 16-17, with G = U S V^T the thin SVD),

i.e. every singular value of ``G`` is set to 1 while its singular vectors (the descent
directions) are kept.
"""
from __future__ import annotations

import torch

from ._matrix import as_matrix, check_weight, from_matrix

__all__ = ["nearest_orthogonal", "NOG_METHODS"]

#: Names accepted by ``nearest_orthogonal(method=...)``.
NOG_METHODS = ("auto", "svd", "newton_schulz")

_DEFAULT_NS_ITERATIONS = 30


def nearest_orthogonal(
    G: torch.Tensor,
    method: str = "auto",
    *,
    iterations: int = _DEFAULT_NS_ITERATIONS,
    rtol: float | None = None,
) -> torch.Tensor:
    r"""The nearest orthogonal matrix to ``G`` (NOG, eq. 16-17 of Song et al., ECCV 2022).

    .. math::

        R = \arg\min_{R R^T = I} \| G - R \|_F = G (G^T G)^{-1/2} = U V^T,
        \qquad G = U S V^T \ \text{(thin SVD)}.

    In words: the singular values of ``G`` are all set to one and its singular vectors are kept,
    so the step keeps the gradient's descent directions and only equalises the step length along
    them (sec. 5.1, "Keeping Gradient Descent Direction Unchanged").

    Parameters
    ----------
    G : torch.Tensor
        A weight-shaped gradient with at least 2 dimensions. A convolution gradient
        ``(out, in, *kernel)`` is treated as the matrix ``out x (in * prod(kernel))``
        (:func:`svdlib.ortho._matrix.as_matrix`); the result has the shape of ``G``. A wide
        matrix (``out <= in*k``) gets orthonormal rows, a tall one orthonormal columns.
        float16/bfloat16 are computed in float32; the output has ``G``'s dtype.
    method : {"auto", "svd", "newton_schulz"}, default "auto"
        ``"svd"``: ``U V^T`` from ``torch.linalg.svd`` (exact; the reference).
        ``"newton_schulz"``: the cubic Newton-Schulz polar iteration
        ``X <- 1.5 X - 0.5 X X^T X`` started from ``G / ||G^T G||_F^{1/2}`` (only matrix
        products, so cheap on GPU). ``"auto"``: ``"newton_schulz"`` for CUDA tensors,
        ``"svd"`` otherwise.
    iterations : int, default 30
        Newton-Schulz iterations. A singular value ``s`` (relative to ``||G^T G||_F^{1/2}``)
        grows by a factor of about 1.5 per iteration until it is close to 1, then converges
        quadratically, so ``iterations`` must exceed ``log(1/s_min) / log(1.5)`` by about 5 for
        the result to match the SVD path. With the default 30 that means
        ``s_min >~ 1e-4``; smaller singular values end up between 0 and 1.
    rtol : float, optional
        Singular values ``<= rtol * s_max`` count as zero (SVD path). Default
        ``max(m, n) * eps(dtype)``, the convention of ``torch.linalg.matrix_rank``.

    Returns
    -------
    torch.Tensor
        ``R`` with the shape, dtype and device of ``G``.

    Notes
    -----
    **Zero and rank-deficient gradients.** ``G (G^T G)^{-1/2}`` is undefined when ``G`` has
    rank ``r < min(m, n)``, and the nearest orthogonal matrix is then not unique (any
    orthonormal completion of the null directions is as near). svdlib does not invent
    directions the gradient does not contain: it returns the partial isometry
    ``U_r V_r^T = G (G^T G)^{+1/2}`` (Moore-Penrose pseudo-inverse square root), i.e. singular
    values above the tolerance become 1 and (numerically) zero ones stay 0. In particular
    ``nearest_orthogonal(0) == 0`` (a zero gradient stays a zero step), and no NaN is ever
    produced. The Newton-Schulz iteration has the same fixed points (``s = 0`` stays 0), so both
    paths agree on this convention.

    The derivation (app. A.1, eq. 22-26) sets the derivative of the Lagrangian to zero:
    ``G = R (I + Sigma)`` with ``(I + Sigma) = (G^T G)^{1/2}``.

    References
    ----------
    Song, Sebe, Wang, "Improving Covariance Conditioning of the SVD Meta-layer by
    Orthogonality", ECCV 2022, eq. 14-17 and app. A.1. Higham, "Computing the polar
    decomposition - with applications", 1986 (Newton-Schulz polar iteration).

    Examples
    --------
    >>> import torch
    >>> from svdlib.ortho import nearest_orthogonal
    >>> G = torch.randn(8, 3, 3, 3, dtype=torch.float64)
    >>> R = nearest_orthogonal(G).reshape(8, 27)
    >>> torch.allclose(R @ R.T, torch.eye(8, dtype=torch.float64))
    True
    """
    check_weight(G, "G")
    if method not in NOG_METHODS:
        raise ValueError(f"method must be one of {NOG_METHODS}, got {method!r}")
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise ValueError(f"iterations must be a positive int, got {iterations!r}")
    if rtol is not None and not (rtol >= 0.0):
        raise ValueError(f"rtol must be a non-negative float, got {rtol!r}")
    return _nearest_orthogonal(G, method, iterations, rtol)


def _nearest_orthogonal(G: torch.Tensor, method: str, iterations: int, rtol: float | None) -> torch.Tensor:
    """:func:`nearest_orthogonal` without validation (for :class:`PreSVD`'s per-step hook)."""
    if method == "auto":
        method = "newton_schulz" if G.is_cuda else "svd"
    out_dtype = G.dtype
    M = as_matrix(G)
    if M.dtype in (torch.float16, torch.bfloat16):
        M = M.float()
    if method == "svd":
        R = _polar_svd(M, rtol)
    else:
        R = _polar_newton_schulz(M, iterations)
    return from_matrix(R, G.shape).to(out_dtype)


def _polar_svd(M: torch.Tensor, rtol: float | None) -> torch.Tensor:
    """``U_r V_r^T`` from the thin SVD; singular values ``<= rtol * s_max`` are dropped."""
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    if rtol is None:
        rtol = max(M.shape) * torch.finfo(M.dtype).eps
    # S is sorted descending, so S[0] is s_max; a zero matrix keeps no direction at all.
    keep = (S > rtol * S[0]).to(M.dtype)
    return (U * keep) @ Vh


def _polar_newton_schulz(M: torch.Tensor, iterations: int) -> torch.Tensor:
    """Cubic Newton-Schulz polar iteration on the smaller Gram side.

    ``X <- (3 I - X X^T) X / 2`` converges to the polar factor for singular values in
    ``(0, sqrt(3))``; the start ``M / ||M^T M||_F^{1/2}`` puts them in ``(0, 1]`` because
    ``s_max^2 <= ||M^T M||_F``, which is a tighter normaliser than ``||M||_F``.
    """
    wide = M.shape[0] <= M.shape[1]
    X = M if wide else M.mT
    scale = torch.linalg.matrix_norm(X @ X.mT).sqrt()
    # A zero matrix stays zero (its only fixed point under the iteration), never 0/0.
    X = X / torch.where(scale > 0, scale, torch.ones_like(scale))
    eye = torch.eye(X.shape[0], dtype=X.dtype, device=X.device)
    for _ in range(iterations):
        X = (1.5 * eye - 0.5 * (X @ X.mT)) @ X
    return X if wide else X.mT
