"""Layers built on the svdlib spine (docs/architecture.md, "Add a layer").

* :class:`DecorrelatedBatchNorm2d`: group-wise ZCA whitening (Robust Differentiable SVD,
  Alg. 2), with statistics shared across processes under torch.distributed;
* :class:`CovariancePooling`: global covariance pooling, triu(Sigma^{1/2}) (ICCV 2021 GCP);
* :func:`whiten`, :func:`color`, :func:`wct`: the whitening and colouring transform of feature
  maps (sec. 5.3.1), and :func:`color_transfer` for RGB images in [0, 1];
* :func:`onnx_ready`: a copy of a trained model that ``torch.onnx.export`` can export.

Every layer takes ``method`` ("eigh" or "newton_schulz"), ``backward`` (a key of
:data:`svdlib.BACKWARDS`) and remedy options, so the papers' comparisons are one argument
apart.
"""
from .covariance_pooling import CovariancePooling, triu_flat_index, vectorize_symmetric
from .decorrelated_bn import DecorrelatedBatchNorm2d
from .deploy import newton_schulz_sup_error, onnx_ready
from .wct import color, color_transfer, whiten, wct

__all__ = [
    "DecorrelatedBatchNorm2d",
    "CovariancePooling",
    "whiten",
    "color",
    "wct",
    "color_transfer",
    "vectorize_symmetric",
    "triu_flat_index",
    "onnx_ready",
    "newton_schulz_sup_error",
]
