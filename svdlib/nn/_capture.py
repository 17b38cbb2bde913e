"""Is a tracer recording this call? The layers ask before anything that only makes sense
when they run eagerly: host-synchronising checks, recomputing the eval whitening matrix,
storing diagnostics as Python attributes.

* ``torch.compile`` and ``torch.export`` (either mode), and the dynamo-based ONNX exporter
  built on it, set :func:`torch.compiler.is_compiling`;
* the TorchScript-based ONNX exporter runs the module under :func:`torch.jit.trace`, with real
  tensors, recording every operation on them.
"""
from __future__ import annotations

import torch

__all__ = ["capturing", "exporting", "onnx_exporting"]


def capturing() -> bool:
    """True while torch.compile, torch.export or torch.jit.trace records a graph."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def exporting() -> bool:
    """True while a graph is recorded for deployment (torch.export, ONNX, TorchScript): the
    Python side effects of a call (attributes set on the module) would hold tracer values."""
    return _is_exporting() or torch.jit.is_tracing() or onnx_exporting()


# torch.compiler.is_exporting is newer than torch 2.4 (the oldest torch svdlib supports)
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


@torch.compiler.assume_constant_result
def onnx_exporting() -> bool:
    """True inside ``torch.onnx.export`` (both exporters).

    Dynamo replaces ``torch.onnx.is_in_onnx_export()`` by the constant False, so the dynamo
    exporter's strict ``torch.export`` pass would not see it; ``assume_constant_result`` makes
    dynamo call this function and use its value instead.
    """
    return torch.onnx.is_in_onnx_export()
