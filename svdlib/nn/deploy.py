"""Preparing a trained model for ONNX.

ONNX has no eigendecomposition operator. :class:`~svdlib.nn.DecorrelatedBatchNorm2d` needs
none in eval mode (it applies a whitening matrix kept as a buffer), but
:class:`~svdlib.nn.CovariancePooling` takes the square root of every input's covariance, so
with ``method="eigh"`` it cannot be exported; the coupled Newton-Schulz iteration (iSQRT-COV)
computes the same root with matrix products only.

Accuracy of the switch. For symmetric A the iteration acts on each eigenvalue separately: with
a = lam / tr(A), the scalar iterate y_K(a) approaches sqrt(a) from below, and the relative
Frobenius error of the root is sqrt(sum_i (sqrt(a_i) - y_K(a_i))^2) <= sqrt(d) E_K with
E_K = sup_a |sqrt(a) - y_K(a)| (:func:`newton_schulz_sup_error`: 6.2e-4 for K = 15, 8.2e-5
for K = 20, shrinking by 2/3 per iteration). That bound is for exact arithmetic. In float32 a
singular covariance (fewer positions than channels, dead ReLU channels) has eigenvalues of
about -1e-7 lam_max from rounding, which the iteration multiplies by 9/4 per step: the error
grows again after 15-20 iterations and overflows by 30, which the iteration reports as
divergence (a ValueError); measured on a 32-channel covariance of 16 positions: 1.5e-5 after
15 iterations, 1.1e-4 after 20, 0.24 after 25.
Hence 15 iterations, measured within 1.1e-5 of the float64 root (relative Frobenius) on
float32 covariances of d = 16-64 channels from N = 9-1024 positions, singular or not, where
float32 ``eigh`` itself was 5e-4 to 7e-4 off on the singular ones (its eigenvalue floor)
(tests/test_nn_deploy.py).
"""
from __future__ import annotations

import copy

import numpy as np
from torch import nn

from ..analysis import newton_schulz_scalar_response

from ._checks import check_positive_int
from .covariance_pooling import CovariancePooling

__all__ = ["onnx_ready", "newton_schulz_sup_error", "ONNX_NEWTON_SCHULZ_ITERATIONS"]

#: Newton-Schulz iterations :func:`onnx_ready` gives covariance pooling (see the module notes).
ONNX_NEWTON_SCHULZ_ITERATIONS = 15


def onnx_ready(model: nn.Module, iterations: int = ONNX_NEWTON_SCHULZ_ITERATIONS) -> nn.Module:
    """A copy of ``model`` in eval mode that ``torch.onnx.export`` can export.

    Every :class:`~svdlib.nn.CovariancePooling` with ``method="eigh"`` computes its square root
    by ``iterations`` coupled Newton-Schulz steps instead (its other options, e.g. ``eps`` and
    ``covariance_dtype``, are kept); layers already on Newton-Schulz keep their own iteration
    count, which is the one they were trained with. ``model`` itself is not changed.
    """
    iterations = check_positive_int(iterations, "iterations")
    ready = copy.deepcopy(model).eval()
    for layer in ready.modules():
        if isinstance(layer, CovariancePooling) and layer.method == "eigh":
            layer.method = "newton_schulz"
            layer.options = {**layer.options, "iterations": iterations}
    return ready


def newton_schulz_sup_error(iterations: int, grid: int = 20001) -> float:
    """E_K = max over a in [1e-14, 1] (log-spaced ``grid``) of |sqrt(a) - y_K(a)|, the scalar
    coupled Newton-Schulz iterate from y_0 = a, z_0 = 1 (Li et al. 2018), in float64
    (:func:`svdlib.analysis.newton_schulz_scalar_response` gives y_K(a)/sqrt(a))."""
    iterations = check_positive_int(iterations, "iterations")
    a = np.logspace(-14, 0, grid)
    return float(np.max(np.sqrt(a) * np.abs(1.0 - newton_schulz_scalar_response(a, iterations))))
