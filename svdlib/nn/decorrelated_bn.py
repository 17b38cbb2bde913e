"""Decorrelated batch normalisation: group-wise ZCA whitening of feature maps.

Robust Differentiable SVD (TPAMI), Alg. 2 and sec. 5.1; Improving Covariance Conditioning
with the Orthogonality (ECCV 2022), appendix B.1, eq. 43.
"""
from __future__ import annotations

import torch
from torch import nn

import svdlib
from svdlib._options import check_matrix_function_options
from svdlib.remedies import DEFAULT_MATFUNC_BACKWARD

from .._autocast import autocast_dtype, autocast_off, compute_dtype_under_autocast
from ._capture import capturing, exporting, onnx_exporting
from ._checks import (
    check_backward,
    check_covariance_finite,
    check_feature_map,
    check_finite_input,
    check_method,
    check_nonnegative,
    check_positive_int,
)
from ._sync import global_moments, world_size

__all__ = ["DecorrelatedBatchNorm2d"]

_RUNNING = ("covariance", "whitening_matrix")
_LAYER = "DecorrelatedBatchNorm2d"
_EVAL_PREFIX = "eval_whitening"
# compute_dtype only widens the eigendecomposition; the covariance is formed in the input's dtype
_WIDER = "run the layer in float64 (module.double() and a float64 input)"


def _refresh_after_load(module: "DecorrelatedBatchNorm2d", incompatible_keys) -> None:
    """load_state_dict post-hook: loading copies new running statistics in place."""
    module._statistics_changed()


def _block_layout(num_features: int, group_size: int) -> list[tuple[int, int, int]]:
    """Channel blocks as (first channel, number of groups, group size): the full groups in one
    block, then (if ``group_size`` does not divide ``num_features``) the smaller last group."""
    full, rest = divmod(num_features, group_size)
    layout = [(0, full, group_size)]
    if rest:
        layout.append((full * group_size, 1, rest))
    return layout


class DecorrelatedBatchNorm2d(nn.Module):
    r"""ZCA whitening of groups of channels, a decorrelated replacement for BatchNorm2d.

    For each group of ``g`` channels, with the feature map reshaped to X (g, N), N = B*H*W,

    .. math::

        \mu = \tfrac1N X\mathbf 1, \qquad
        \Sigma = \tfrac1N (X - \mu\mathbf 1^T)(X - \mu\mathbf 1^T)^T, \qquad
        \hat X = (\Sigma + \epsilon I)^{-1/2} (X - \mu\mathbf 1^T), \qquad
        Y = \gamma \odot \hat X + \beta

    (Robust Differentiable SVD, Alg. 2; orthogonality paper eq. 43). In plain words: every
    group of channels is centred and rotated-and-rescaled so that, on the training batch, its
    covariance becomes (nearly, by ``eps``) the identity while keeping the original axes (ZCA,
    not PCA). The inverse square root is one batched call of :func:`svdlib.inv_sqrtm`, so the
    forward method and the backward remedy are one argument apart.

    Parameters
    ----------
    num_features : int
        Number of channels C of the (B, C, H, W) input.
    group_size : int, optional
        Channels per whitening group (default: ``num_features``, one group). Groups are
        consecutive channels. When ``group_size`` does not divide ``num_features`` the last
        group is smaller (``num_features % group_size`` channels); it is whitened by a second
        batched call, so no padding can change the result.
    eps : float, default 1e-2
        ``eps * I`` is added to every batch covariance before the inverse square root. The
        default is the ECCV 2022 code's value; it bounds the whitening gain at
        ``eps**-0.5`` on rank-deficient batches. With ``eps > 0`` the whitened covariance is
        Sigma (Sigma + eps I)^{-1}, not exactly I; pass ``eps=0`` for exact whitening.
    momentum : float or None, default 0.1
        torch's convention: ``running = (1 - momentum) * running + momentum * batch``;
        ``None`` gives the cumulative average over all batches seen.
    affine : bool, default True
        Learn a per-channel scale gamma (initialised to 1) and shift beta (initialised to 0),
        as torch.nn.BatchNorm2d does (the ECCV code draws gamma from U[0, 1)).
    running : {"covariance", "whitening_matrix"}, default "covariance"
        What the running average keeps. "covariance" (TPAMI Alg. 2, following Huang et al.
        2020: covariance sequences are less noisy than whitening-matrix sequences) computes the
        eval whitening matrix (Sigma_run + eps I)^{-1/2} from the running covariance and keeps
        it in the buffer ``eval_whitening`` (see "Eval mode" below); "whitening_matrix" (ECCV
        code) averages the batch whitening matrices themselves.
    method : {"eigh", "newton_schulz"}, default "eigh"
        How the inverse square root is computed (see :func:`svdlib.inv_sqrtm`).
    backward : str, default "taylor"
        (``svdlib.remedies.DEFAULT_MATFUNC_BACKWARD``, the papers' SVD-Taylor); pass
        "divided_difference" for the exact, bounded gradient
        Backward remedy name, a key of :data:`svdlib.BACKWARDS`.
    process_group : optional
        torch.distributed group the batch statistics are shared over (default: the world).
    sync : bool or None, default None
        Share batch statistics across processes (see :mod:`svdlib.nn._sync`). None: share
        when torch.distributed is initialised with more than one process; True: always
        (requires an initialised process group); False: never.
    track_condition_number : bool, default True
        In training mode store ``last_condition_number`` (one float per group, detached), the
        condition number lambda_max / lambda_min of each batch covariance *before* ``eps`` is
        added (the quantity plotted in Fig. 1 of the orthogonality paper). Costs one extra
        eigenvalue solve per step; set False to skip it.
    device, dtype : optional
        Factory arguments for parameters and buffers, as in torch.nn modules.
    **remedy_options
        Passed unchanged to :func:`svdlib.inv_sqrtm` (e.g. ``degree=9``, ``order=(p, q)``,
        ``iterations=5``, ``compute_dtype=torch.float64``).

    Attributes
    ----------
    running_mean : torch.Tensor
        (C,) running channel mean.
    running_covariance, running_covariance_tail : torch.Tensor
        (G, g, g) running covariances of the full groups and (1, r, r) of the smaller last
        group (only when it exists); with ``running="whitening_matrix"`` the buffers are
        ``running_whitening`` and ``running_whitening_tail`` instead.
    eval_whitening, eval_whitening_tail : torch.Tensor
        Only with ``running="covariance"``: (Sigma_run + eps I)^{-1/2} of the running
        covariances, (G, g, g) and (1, r, r), the matrices eval mode applies. Not saved in the
        state dict (they are a function of it).
    num_batches_tracked : torch.Tensor
        Number of training batches seen.
    last_condition_number : torch.Tensor or None
        Condition numbers of the last training batch's group covariances (see above); not
        updated while the layer is exported (torch.export, ONNX).

    Notes
    -----
    Eval mode is one fixed linear map per group, y = diag(gamma) S (x - mu_run) + beta with
    S = (Sigma_run + eps I)^{-1/2}, computed as one batched matrix product whose weight and
    bias are formed from the buffers ``eval_whitening``, ``running_mean`` and the affine
    parameters. No eigendecomposition runs in an eval forward, so ``torch.export``,
    ``torch.compile`` and the ONNX exporters record a product with those buffers as inputs.
    S is recomputed whenever the running statistics change: on the switch to eval mode after
    training steps (``train(False)``/``eval()``), after ``load_state_dict``,
    ``reset_running_stats``, ``.to()``/``.double()``/``.cuda()`` (from the converted
    statistics, not by converting S), and, in an eager eval forward, after any other in-place
    change of the running buffers. A traced eval forward raises instead of recording a stale
    S when the layer knows it is out of date (``training`` set to False by hand after
    training steps, or running statistics that are not finite); an in-place edit of the
    running buffers behind the layer's back is seen only by the next eager call or
    ``eval()``. Training mode exports and compiles too, but ONNX has no eigendecomposition:
    export for ONNX in eval mode.

    Under ``torch.autocast`` the layer computes in float32 with autocast off (the inverse
    square root in ``compute_dtype`` when given) and returns the autocast dtype.

    Distributed training: with ``sync`` on, each rank reduces (count, sum, sum of outer
    products) in float64 with a differentiable all-reduce, so all ranks whiten with the
    statistics of the global batch and input gradients equal those of a single process on the
    concatenated batch (for the summed loss). Every rank must run forward and backward.

    Examples
    --------
    >>> import torch, svdlib
    >>> bn = svdlib.nn.DecorrelatedBatchNorm2d(8, group_size=4, eps=0.0).double()
    >>> y = bn(torch.randn(16, 8, 4, 4, dtype=torch.float64))
    >>> z = y.transpose(0, 1).reshape(8, -1)[:4]
    >>> bool(torch.allclose(svdlib.covariance(z), torch.eye(4, dtype=torch.float64), atol=1e-8))
    True
    """

    def __init__(
        self,
        num_features: int,
        group_size: int | None = None,
        eps: float = 1e-2,
        momentum: float | None = 0.1,
        affine: bool = True,
        running: str = "covariance",
        method: str = "eigh",
        backward: str = DEFAULT_MATFUNC_BACKWARD,
        process_group=None,
        sync: bool | None = None,
        track_condition_number: bool = True,
        device=None,
        dtype=None,
        **remedy_options,
    ) -> None:
        super().__init__()
        num_features = check_positive_int(num_features, "num_features")
        group_size = num_features if group_size is None else check_positive_int(group_size, "group_size")
        if group_size > num_features:
            raise ValueError(
                f"group_size must be <= num_features = {num_features}, got {group_size}"
            )
        if momentum is not None and not (isinstance(momentum, (int, float))
                                         and not isinstance(momentum, bool) and 0 <= momentum <= 1):
            raise ValueError(f"momentum must be None or a number in [0, 1], got {momentum!r}")
        if running not in _RUNNING:
            raise ValueError(f"running must be one of {_RUNNING}, got {running!r}")
        if sync not in (None, True, False):
            raise ValueError(f"sync must be None, True or False, got {sync!r}")
        self.num_features = num_features
        self.group_size = group_size
        self.eps = check_nonnegative(eps, "eps")
        self.momentum = momentum
        self.affine = bool(affine)
        self.running = running
        self.method = check_method(method)
        self.backward = check_backward(backward)
        self.process_group = process_group
        self.sync = sync
        self.track_condition_number = bool(track_condition_number)
        self.remedy_options = dict(remedy_options)
        # fail here, not at the first forward: the checks svdlib.inv_sqrtm will make
        check_matrix_function_options(self.method, self.backward, self.remedy_options, extra={"eps": self.eps})
        self._layout = _block_layout(num_features, group_size)
        self.last_condition_number: torch.Tensor | None = None
        # identity of the statistics eval_whitening was computed from (see _signature)
        self._eval_signature: tuple | None = None
        self._eval_stale = True

        factory = {"device": device, "dtype": dtype}
        if self.affine:
            self.weight = nn.Parameter(torch.ones(num_features, **factory))
            self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        for name, (_, n, g) in zip(self._running_names(), self._layout):
            eye = torch.eye(g, **factory).expand(n, g, g).clone()
            self.register_buffer(name, eye)
        self.register_buffer(
            "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
        )
        if self.running == "covariance":
            for name, (_, n, g) in zip(self._eval_names(), self._layout):
                self.register_buffer(name, torch.zeros(n, g, g, **factory), persistent=False)
        self.register_load_state_dict_post_hook(_refresh_after_load)
        self._statistics_changed()

    # ------------------------------------------------------------------ helpers
    def _running_names(self) -> list[str]:
        base = "running_covariance" if self.running == "covariance" else "running_whitening"
        return [base, base + "_tail"][: len(self._layout)]

    def _eval_names(self) -> list[str]:
        """Buffers holding the eval whitening matrices: computed from the running
        covariances, or the running whitening matrices themselves."""
        if self.running == "whitening_matrix":
            return self._running_names()
        return [_EVAL_PREFIX, _EVAL_PREFIX + "_tail"][: len(self._layout)]

    @property
    def num_groups(self) -> int:
        """Number of whitening groups (the smaller last group included)."""
        return sum(n for _, n, _ in self._layout)

    def reset_running_stats(self) -> None:
        """Running mean to 0, running covariance / whitening matrix to I, counter to 0."""
        with torch.no_grad():
            self.running_mean.zero_()
            for name in self._running_names():
                buf = getattr(self, name)
                buf.copy_(torch.eye(buf.shape[-1], dtype=buf.dtype, device=buf.device).expand_as(buf))
            self.num_batches_tracked.zero_()
        self._statistics_changed()

    def reset_parameters(self) -> None:
        """Reset running statistics and the affine parameters (gamma = 1, beta = 0)."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        s = (f"{self.num_features}, group_size={self.group_size}, eps={self.eps}, "
             f"momentum={self.momentum}, affine={self.affine}, running={self.running!r}, "
             f"method={self.method!r}, backward={self.backward!r}")
        if self.remedy_options:
            s += ", " + ", ".join(f"{k}={v!r}" for k, v in self.remedy_options.items())
        return s

    def _inv_sqrtm(self, cov: torch.Tensor) -> torch.Tensor:
        # The spine adds eps * I before either method (svdlib.matfuncs.powm, ``eps``).
        return svdlib.inv_sqrtm(cov, method=self.method, backward=self.backward, eps=self.eps,
                                **self.remedy_options)

    def _use_sync(self) -> bool:
        if self.sync is False:
            return False
        initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
        if self.sync is True:
            if not initialised:
                raise RuntimeError(
                    "DecorrelatedBatchNorm2d(sync=True) needs an initialised torch.distributed "
                    "process group; call torch.distributed.init_process_group first or pass sync=None"
                )
            return True
        return initialised and world_size(self.process_group) > 1

    def _batch_moments(self, blocks: list[torch.Tensor], x: torch.Tensor):
        """Per-block means (n, g) and covariances (n, g, g) of the (possibly global) batch."""
        n_local = blocks[0].shape[-1]
        if self._use_sync():
            # Checked after the collective: a rank that raised before it would leave the
            # others waiting; non-finite shared statistics make every rank raise.
            count, means, covs64 = global_moments(blocks, self.process_group)
            n_total = int(count.item())
            means = [m.to(x.dtype) for m in means]
            covs = [c.to(x.dtype) for c in covs64]
            if not all(bool(torch.isfinite(c).all()) for c in covs64):
                check_finite_input(x, "input", _LAYER)
                raise ValueError(
                    f"{_LAYER}: the covariance of input (shape {tuple(x.shape)}) shared over the "
                    "process group is not finite although this process's input is finite: "
                    "another process had NaN/Inf input"
                )
        else:
            n_total = n_local
            means = [b.mean(dim=-1) for b in blocks] if n_local else []
            covs = [svdlib.covariance(b, check_finite=False) for b in blocks] if n_local >= 2 else []
        for c in covs:
            check_covariance_finite(c, x, "input", _LAYER, remedy=_WIDER)
        if n_total < 2:
            raise ValueError(
                "DecorrelatedBatchNorm2d needs at least 2 values per channel to estimate a "
                f"covariance in training mode (B*H*W >= 2 over the whole batch), got "
                f"B*H*W = {n_total} (input shape {tuple(x.shape)}); use a larger batch or "
                "call .eval() to whiten with the running statistics"
            )
        return means, covs

    @torch.no_grad()
    def _update_running(self, means, covs, whitening) -> None:
        self.num_batches_tracked.add_(1)
        mean = torch.cat([m.reshape(-1) for m in means])
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), self._factor(self.running_mean))
        stats = covs if self.running == "covariance" else whitening
        for name, stat in zip(self._running_names(), stats):
            buf = getattr(self, name)
            buf.lerp_(stat.detach().to(buf.dtype), self._factor(buf))
        self._eval_stale = True

    def _factor(self, buf: torch.Tensor):
        """lerp_ weight: momentum, or 1 / (batches seen) for the cumulative average, as a
        tensor in ``buf``'s dtype (compiled and exported graphs keep the count a tensor)."""
        if self.momentum is None:
            return self.num_batches_tracked.to(buf.dtype).reciprocal()
        return self.momentum

    # ------------------------------------------------------------- eval whitening
    def _signature(self) -> tuple:
        """What eval_whitening depends on: the running buffers (object and in-place version)
        and the options of the inverse square root."""
        bufs = tuple(
            (id(b), None if b.is_inference() else b._version, b.dtype, b.device)
            for b in (getattr(self, name) for name in self._running_names())
        )
        return bufs, self.eps, self.method, self.backward, repr(self.remedy_options)

    def _statistics_changed(self) -> None:
        """The running statistics were replaced: recompute eval_whitening now if the layer is
        in eval mode, else on the switch to eval mode (training steps would only redo it)."""
        self._eval_stale = True
        if not self.training:
            self._try_refresh()

    def _try_refresh(self) -> None:
        """Bring eval_whitening up to date where the statistics change (mode switch,
        conversion, loading); an error there (statistics the spine refuses, uninitialised
        memory after ``to_empty``) is left for the next eval forward to report, with the
        layer's name, instead of breaking ``.to()`` or ``eval()``."""
        if capturing():
            return
        try:
            self._refresh_eval_whitening()
        except (ValueError, RuntimeError):
            self._eval_stale = True

    def _refresh_eval_whitening(self) -> bool:
        """Recompute eval_whitening = (Sigma_run + eps I)^{-1/2} in place if it is out of date.

        Returns False (and leaves it marked out of date) when it cannot be computed now: meta
        tensors, or running covariances that are not finite (the next eval forward says so).
        Never called while a tracer records (it would record the eigendecomposition).
        """
        if self.running != "covariance":
            return True
        if not self._eval_stale and self._signature() == self._eval_signature:
            return True
        bufs = [getattr(self, name) for name in self._running_names()]
        if any(b.is_meta for b in bufs) or not all(bool(torch.isfinite(b).all()) for b in bufs):
            self._eval_stale = True
            return False
        with torch.no_grad(), autocast_off(bufs[0]):
            for name, cov in zip(self._eval_names(), bufs):
                getattr(self, name).copy_(self._inv_sqrtm(cov))
        self._eval_stale = False
        self._eval_signature = self._signature()
        return True

    def _eval_matrices(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The whitening matrices of eval mode, up to date; tracers see buffers."""
        if capturing():
            if self.running == "covariance" and self._eval_stale:
                raise RuntimeError(
                    f"{_LAYER}: the eval whitening matrix is out of date with the running "
                    "statistics (they changed after the last switch to eval mode, or they are "
                    "not finite) and a tracer cannot recompute it. Call model.eval() before "
                    "torch.export, torch.compile or torch.onnx.export (an eager call in eval "
                    "mode names any problem with the statistics)"
                )
        elif not self._refresh_eval_whitening():
            bad = [name for name in self._running_names() if not bool(torch.isfinite(getattr(self, name)).all())]
            raise ValueError(
                f"{_LAYER}: the running statistics {', '.join(bad)} contain NaN/Inf (a diverged "
                "training run or a damaged checkpoint?), so eval mode cannot whiten input "
                f"(shape {tuple(x.shape)}); call reset_running_stats() or load good statistics"
            )
        return [getattr(self, name) for name in self._eval_names()]

    def train(self, mode: bool = True):
        """Switch mode; switching to eval mode brings eval_whitening up to date."""
        super().train(mode)
        if not mode:
            self._try_refresh()
        return self

    def _apply(self, fn, recurse=True):
        """.to(), .double(), .cuda(), ...: convert, then recompute eval_whitening from the
        converted running statistics (converting S itself would keep its old rounding)."""
        super()._apply(fn, recurse)
        self._statistics_changed()
        return self

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten ``x`` of shape (B, C, H, W); returns the same shape and dtype (the autocast
        dtype under ``torch.autocast``)."""
        check_feature_map(x, "input", self.num_features, _LAYER)
        if not (self.training and self._use_sync()):     # synced: checked after the collective
            check_finite_input(x, "input", _LAYER)
        if self.training and onnx_exporting():
            raise RuntimeError(
                f"{_LAYER} in training mode cannot be exported to ONNX: its batch statistics "
                "need an eigendecomposition (or an in-place running-statistics update), which "
                "ONNX lacks. Call model.eval() before torch.onnx.export: eval mode is one "
                "linear map from the running statistics"
            )
        low = autocast_dtype(x)
        if low is not None:
            with autocast_off(x):
                return self._whiten(x.to(compute_dtype_under_autocast(x))).to(low)
        return self._whiten(x).to(x.dtype)

    def _whiten(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._eval_forward(x)
        B, C, H, W = x.shape
        X = x.transpose(0, 1).reshape(C, B * H * W)
        blocks = [X[s:s + n * g].reshape(n, g, -1) for s, n, g in self._layout]
        means, covs = self._batch_moments(blocks, x)
        whitening = [self._inv_sqrtm(c) for c in covs]
        self._update_running(means, covs, whitening)
        if self.track_condition_number and not exporting():
            with torch.no_grad():
                self.last_condition_number = torch.cat(
                    [svdlib.condition_number(c.detach()).reshape(-1) for c in covs]
                )
        out = [
            (S.to(x.dtype) @ (b - m.to(x.dtype).unsqueeze(-1))).reshape(b.shape[0] * b.shape[1], -1)
            for S, b, m in zip(whitening, blocks, means)
        ]
        Y = out[0] if len(out) == 1 else torch.cat(out, dim=0)
        y = Y.reshape(C, B, H, W).transpose(0, 1)
        if self.affine:
            y = y * self.weight.view(1, C, 1, 1) + self.bias.view(1, C, 1, 1)
        return y.contiguous()

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = diag(gamma) S (x - mu) + beta per group, as one batched product of the folded
        weight diag(gamma) S (n, g, g) with the input viewed as (B, n, g, H*W) (no transposes;
        on CPU a grouped 1x1 convolution was 10-30x slower), plus the folded bias
        beta - diag(gamma) S mu."""
        B, C, H, W = x.shape
        pieces = []
        for (s, n, g), S in zip(self._layout, self._eval_matrices(x)):
            mean = self.running_mean[s:s + n * g].reshape(n, g, 1).to(S.dtype)
            weight = S
            if self.affine:
                weight = self.weight[s:s + n * g].reshape(n, g, 1).to(S.dtype) * S
            bias = -(weight @ mean)
            if self.affine:
                bias = bias + self.bias[s:s + n * g].reshape(n, g, 1).to(S.dtype)
            xs = x if len(self._layout) == 1 else x[:, s:s + n * g]
            # in place: a fresh output for the sum cost 6x the product itself on CPU
            y = torch.matmul(weight.to(x.dtype), xs.reshape(B, n, g, H * W)).add_(bias.to(x.dtype))
            pieces.append(y.reshape(B, n * g, H * W))
        out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
        return out.reshape(B, C, H, W)

