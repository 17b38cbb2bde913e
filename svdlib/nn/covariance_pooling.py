"""Global covariance pooling (GCP): matrix square root of the spatial covariance.

Why Approximate Matrix Square Root Outperforms Accurate SVD in Global Covariance Pooling?
(ICCV 2021); Improving Covariance Conditioning with the Orthogonality (ECCV 2022),
appendix B.2, eq. 44; iSQRT-COV (Li et al., CVPR 2018) for the Newton-Schulz path.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

import svdlib
from svdlib._options import check_matrix_function_options
from svdlib.remedies import DEFAULT_MATFUNC_BACKWARD

from svdlib._validation import is_traced

from .._autocast import autocast_dtype, autocast_off, compute_dtype_under_autocast
from ._capture import exporting, onnx_exporting
from ._checks import (
    check_backward,
    check_covariance_finite,
    check_feature_map,
    check_finite_input,
    check_method,
    check_positive_int,
)

__all__ = ["CovariancePooling", "vectorize_symmetric", "triu_flat_index"]

_VECTORIZE = ("triu", "full")


def triu_flat_index(d: int, device=None) -> torch.Tensor:
    """Positions i*d + j (i <= j, row by row: the order of ``torch.triu_indices``) of the upper
    triangle in a flattened d x d matrix."""
    rows, cols = torch.triu_indices(d, d, device=device)
    return rows * d + cols


def vectorize_symmetric(Q: torch.Tensor, mode: str = "triu", index: torch.Tensor | None = None) -> torch.Tensor:
    """Flatten a batch of symmetric (..., d, d) matrices.

    ``"triu"`` keeps the d(d+1)/2 entries on and above the diagonal, row by row (the order of
    ``torch.triu_indices``), as the ICCV 2021 GCP code does; ``"full"`` keeps all d*d entries.
    ``index`` is :func:`triu_flat_index` computed beforehand (a layer keeps it as a buffer, so
    exported graphs gather with a constant instead of calling ``triu_indices``, which ONNX
    lacks).
    """
    if mode not in _VECTORIZE:
        raise ValueError(f"vectorize must be one of {_VECTORIZE}, got {mode!r}")
    d = Q.shape[-1]
    flat = Q.reshape(*Q.shape[:-2], d * d)
    if mode == "full":
        return flat
    return flat[..., triu_flat_index(d, Q.device) if index is None else index]


class CovariancePooling(nn.Module):
    r"""Global covariance pooling: ``vec(Sigma^{1/2})`` of the H*W feature positions.

    .. math::

        Z = \mathrm{ReLU}(\mathrm{BN}(W_{1\times1} * X)),\qquad
        \Sigma = \tfrac1{HW} Z_c Z_c^T,\qquad
        y = \mathrm{triu}(\Sigma^{1/2})

    where Z_c is Z (d, HW) with its per-channel mean removed (eq. 2 of the orthogonality
    paper), one covariance per image. In plain words: each image's final feature map is
    summarised by the square root of its channel covariance instead of the channel means, and
    the upper triangle is handed to the classifier (eq. 44; d = 256 gives 32,896 features as in
    the ICCV 2021 code).

    Parameters
    ----------
    in_channels : int
        Channels of the (B, C, H, W) input.
    reduced_dim : int or None, default 256
        Channels d after the 1x1 convolution + BatchNorm2d + ReLU reduction (ICCV 2021 code:
        2048 -> 256). None skips the reduction (d = in_channels).
    method : {"eigh", "newton_schulz"}, default "eigh"
        Matrix square root by eigendecomposition (MPN-COV) or by the coupled Newton-Schulz
        iteration (iSQRT-COV). The trace pre-normalisation Sigma / tr(Sigma) and the
        post-compensation by sqrt(tr(Sigma)) of iSQRT-COV are done by
        :func:`svdlib.sqrtm` itself (and only there), so the two methods return the same
        quantity, Sigma^{1/2}, up to the iteration's accuracy.
    backward : str, default "taylor"
        (``svdlib.remedies.DEFAULT_MATFUNC_BACKWARD``, the papers' SVD-Taylor); pass
        "divided_difference" for the exact, bounded gradient
        Backward remedy name, a key of :data:`svdlib.BACKWARDS` (used by ``method="eigh"``).
    vectorize : {"triu", "full"}, default "triu"
        Upper-triangular vector of length d(d+1)/2 or the full d*d matrix, flattened.
    track_condition_number : bool, default False
        Store ``last_condition_number`` (B,), the condition number of each image's covariance,
        at every forward (one extra eigenvalue solve; off by default because d is large).
    covariance_dtype : torch.dtype or None, default None
        Real floating dtype in which the covariance *and* its square root are formed: the
        reduced features are cast to it after the 1x1 reduction, autocast is switched off for
        the covariance and the square root, and the output is cast back to the input's dtype
        (to the autocast dtype under ``torch.autocast``).
        ``torch.float64`` reproduces the ICCV 2021 code, which casts the reduced features to
        double before forming the covariance (``compute_dtype`` alone only widens the square
        root, not the covariance it is given). None (default): everything in the features'
        dtype, except under ``torch.autocast``, where the covariance and its root are formed in
        float32 with autocast off (the reduction stays under autocast) and the output has the
        autocast dtype.
    **options
        Passed to :func:`svdlib.sqrtm` (e.g. ``iterations=5``, ``degree=100``,
        ``compute_dtype=torch.float64``: the ICCV 2021 code eigendecomposes in float64).

    Attributes
    ----------
    output_dim : int
        Length of the output vector: d(d+1)/2 for "triu", d*d for "full".
    dim : int
        d, the size of the covariance matrices.
    reduce : torch.nn.Sequential or None
        The 1x1 conv + BN + ReLU reduction.
    triu_index : torch.Tensor or None
        :func:`triu_flat_index` of d (for ``vectorize="triu"``), a buffer not saved in the
        state dict.

    Notes
    -----
    Deployment: ``torch.export`` and ``torch.compile(fullgraph=True)`` capture both methods.
    ONNX has no eigendecomposition, so ``torch.onnx.export`` of ``method="eigh"`` raises; export
    with ``method="newton_schulz"`` (:func:`svdlib.nn.onnx_ready` switches a trained model's
    layers over with 15 iterations, README "Deploying a trained model" gives the measured
    accuracy). ``last_condition_number`` is not updated while the layer is exported.

    Examples
    --------
    >>> import torch, svdlib
    >>> pool = svdlib.nn.CovariancePooling(16, reduced_dim=8)
    >>> pool(torch.randn(2, 16, 5, 5)).shape == (2, pool.output_dim) == (2, 36)
    True
    """

    def __init__(
        self,
        in_channels: int,
        reduced_dim: int | None = 256,
        method: str = "eigh",
        backward: str = DEFAULT_MATFUNC_BACKWARD,
        vectorize: str = "triu",
        track_condition_number: bool = False,
        covariance_dtype: torch.dtype | None = None,
        **options,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        if covariance_dtype is not None and not (
                isinstance(covariance_dtype, torch.dtype) and covariance_dtype.is_floating_point):
            raise ValueError(
                "covariance_dtype must be None or a real floating torch.dtype (e.g. "
                f"torch.float64), got {covariance_dtype!r}"
            )
        self.covariance_dtype = covariance_dtype
        if reduced_dim is None:
            self.reduce = None
            self.dim = self.in_channels
        else:
            self.dim = check_positive_int(reduced_dim, "reduced_dim")
            self.reduce = nn.Sequential(
                nn.Conv2d(self.in_channels, self.dim, kernel_size=1, bias=False),
                nn.BatchNorm2d(self.dim),
                nn.ReLU(inplace=True),
            )
        if vectorize not in _VECTORIZE:
            raise ValueError(f"vectorize must be one of {_VECTORIZE}, got {vectorize!r}")
        self.vectorize = vectorize
        self.method = check_method(method)
        self.backward = check_backward(backward)
        self.track_condition_number = bool(track_condition_number)
        self.options = dict(options)
        check_matrix_function_options(self.method, self.backward, self.options)
        d = self.dim
        self.output_dim = d * (d + 1) // 2 if vectorize == "triu" else d * d
        self.last_condition_number: torch.Tensor | None = None
        # a function of d alone: not saved in the state dict
        index = triu_flat_index(d) if vectorize == "triu" else None
        self.register_buffer("triu_index", index, persistent=False)

    def extra_repr(self) -> str:
        s = (f"in_channels={self.in_channels}, dim={self.dim}, method={self.method!r}, "
             f"backward={self.backward!r}, vectorize={self.vectorize!r}, "
             f"output_dim={self.output_dim}")
        if self.covariance_dtype is not None:
            s += f", covariance_dtype={self.covariance_dtype}"
        if self.options:
            s += ", " + ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return s

    def _reduced(self, x: torch.Tensor) -> torch.Tensor:
        """Validate ``x`` and apply the 1x1 reduction (in the network's dtype)."""
        check_feature_map(x, "input", self.in_channels, "CovariancePooling")
        check_finite_input(x, "input", "CovariancePooling")
        H, W = x.shape[-2:]
        if H * W < 2:
            raise ValueError(
                "CovariancePooling needs at least 2 spatial positions (H*W >= 2) to estimate a "
                f"covariance, got H*W = {H * W} (input shape {tuple(x.shape)})"
            )
        if self.reduce is None:
            return x
        z = self.reduce(x)
        self._check_reduction(x, z)
        return z

    def _check_reduction(self, x: torch.Tensor, z: torch.Tensor) -> None:
        """The reduction of the finite ``x`` must leave finite features and statistics: the
        BatchNorm's batch variance overflows for inputs near sqrt(float max) (1e19 in float32),
        and then normalises everything to ~0 silently."""
        if is_traced(z):
            return
        state = [t for t in self.reduce.buffers() if t.is_floating_point()]
        if bool(torch.stack([torch.isfinite(t).all() for t in (z, *state)]).all()):
            return
        if not all(bool(torch.isfinite(p).all()) for p in self.reduce.parameters()):
            raise ValueError(
                "CovariancePooling: the weights of the 1x1 reduction (conv + BatchNorm) contain "
                "NaN/Inf (a diverged optimiser step?); the input was finite"
            )
        dtype = str(z.dtype).removeprefix("torch.")
        raise ValueError(
            f"CovariancePooling: the 1x1 reduction (conv + BatchNorm) of input (shape "
            f"{tuple(x.shape)}, largest |entry| {float(x.detach().abs().amax()):.3g}) overflowed "
            f"{dtype} in its BatchNorm variance; scale the input"
        )

    @contextlib.contextmanager
    def _statistics_kept_on_error(self):
        """Undo the BatchNorm running-statistics update of a training call that raises, so a
        failed call leaves the layer as it was (the input check runs before the update; this
        covers what only shows after it: overflow in the reduction, a failing square root)."""
        if self.reduce is None or not self.training:
            yield
            return
        saved = [(buf, buf.clone()) for buf in self.reduce.buffers()]
        try:
            yield
        except BaseException:
            with torch.no_grad():
                for buf, value in saved:
                    buf.copy_(value)
            raise

    def _wide_dtype(self, z: torch.Tensor) -> torch.dtype | None:
        """The dtype the covariance and its root are formed in, when not ``z``'s own."""
        if self.covariance_dtype is not None:
            return self.covariance_dtype
        if autocast_dtype(z) is not None:
            return compute_dtype_under_autocast(z)
        return None

    def _covariance_of(self, z: torch.Tensor, x: torch.Tensor, wide: torch.dtype | None) -> torch.Tensor:
        B, d, H, W = z.shape
        if wide is not None:
            z = z.to(wide)
        P = svdlib.covariance(z.reshape(B, d, H * W), check_finite=False)
        name = "input" if self.reduce is None else "the reduced input"
        check_covariance_finite(P, z if self.reduce is not None else x, name, "CovariancePooling",
                                remedy="use covariance_dtype=torch.float64")
        return P

    def covariance(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, d, d) covariance of the (reduced) features over the H*W positions, in
        ``covariance_dtype`` when that is set (float32 under autocast)."""
        with self._statistics_kept_on_error():
            z = self._reduced(x)
            wide = self._wide_dtype(z)
            with autocast_off(z, wide is not None):
                return self._covariance_of(z, x, wide)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``x`` (B, C, H, W) into (B, output_dim), in ``x``'s dtype (the autocast dtype
        under ``torch.autocast``)."""
        if self.method == "eigh" and onnx_exporting():
            raise RuntimeError(
                "CovariancePooling(method='eigh') cannot be exported to ONNX: ONNX has no "
                "eigendecomposition operator. Export with method='newton_schulz' (only matrix "
                "products): svdlib.nn.onnx_ready(model) returns a copy whose covariance pooling "
                "uses 15 Newton-Schulz iterations (accuracy: README, 'Deploying a trained model')"
            )
        with self._statistics_kept_on_error():
            z = self._reduced(x)
            wide = self._wide_dtype(z)
            with autocast_off(z, wide is not None):
                P = self._covariance_of(z, x, wide)
                if self.track_condition_number and not exporting():
                    with torch.no_grad():
                        self.last_condition_number = svdlib.condition_number(P.detach())
                Q = svdlib.sqrtm(P, method=self.method, backward=self.backward, **self.options)
                y = vectorize_symmetric(Q, self.vectorize, self.triu_index)
        out_dtype = autocast_dtype(x) or (x.dtype if wide is not None else y.dtype)
        return y.to(out_dtype)
