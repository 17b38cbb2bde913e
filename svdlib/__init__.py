"""svdlib: differentiable eigendecomposition (SVD) meta-layers with stable gradients.

A covariance goes in, a spectral function of it comes out, and the gradient that comes back
is bounded, accurate and cheap. The spine (docs/architecture.md)::

    X (..., d, N) --covariance--> P --eigh (a solver of svdlib.SOLVERS)--> (lam, U) --f--> U f(Lambda) U^T
    backward: one stage (svdlib.fused) runs the remedy of svdlib.BACKWARDS (eq. 5-7)

Submodules: :mod:`svdlib.nn` (layers), :mod:`svdlib.ortho` (Pre-SVD treatments),
:mod:`svdlib.experiments` (harness; imported on demand).
"""
from __future__ import annotations

import importlib

from . import diagnostics
from .eigen import eigh
from .matfuncs import inv_sqrtm, powm, sqrtm
from .newton_schulz import newton_schulz_sqrtm
from .remedies import BACKWARDS
from .solvers import SOLVERS
from .statistics import condition_number, covariance

__version__ = "0.1.0"

__all__ = [
    "eigh",
    "sqrtm",
    "inv_sqrtm",
    "powm",
    "covariance",
    "condition_number",
    "newton_schulz_sqrtm",
    "BACKWARDS",
    "SOLVERS",
    "diagnostics",
    "nn",
    "ortho",
    "experiments",
]


def __getattr__(name: str):
    # nn, ortho and experiments load on first use, so `import svdlib` stays light.
    if name in ("nn", "ortho", "experiments"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'svdlib' has no attribute {name!r}")
