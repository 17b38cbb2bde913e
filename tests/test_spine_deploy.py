"""The spine under deployment tools (issue 16): ``eigh``, ``sqrtm`` and ``inv_sqrtm`` traced by
``torch.export`` and ``torch.compile(fullgraph=True)``, with gradients and under
``torch.inference_mode()``, and under ``torch.autocast``.

A host-synchronising check (``bool(tensor)``, ``.item()``) cannot be traced: torch.export
raises on the data-dependent branch and ``fullgraph=True`` refuses the graph break, so a
successful trace is the proof that those checks are skipped while tracing. Compiled graphs use
the ``aot_eager`` backend (dynamo capture and AOTAutograd, as inductor sees them, without the
seconds of C++ code generation per graph on a 2-core CPU).
"""
from __future__ import annotations

import pytest
import torch

import svdlib

from _spine_helpers import DEVICES, matrix_with_spectrum

F64 = torch.float64


class _Spine(torch.nn.Module):
    """All three entry points in one graph; the eigenvalues and two matrix functions."""

    def forward(self, A):
        lam, _ = svdlib.eigh(A)
        return lam, svdlib.sqrtm(A), svdlib.inv_sqrtm(A, eps=1e-3)


def _matrices(dtype=F64, requires_grad=False):
    lam = torch.tensor([[0.5, 1.0, 2.0, 4.0, 8.0], [1e-3, 0.3, 0.31, 2.0, 5.0]], dtype=F64)
    return matrix_with_spectrum(lam, seed=3).to(dtype).requires_grad_(requires_grad)


def _close(got, expected, rel):
    """Every output within ``rel`` of the largest entry of its expected value."""
    return all((g - e).abs().max() <= rel * e.abs().max() for g, e in zip(got, expected))


@pytest.mark.parametrize("inference", [False, True])
def test_spine_exports_and_the_program_computes_the_same(inference):
    A = _matrices()
    expected = _Spine()(A)
    context = torch.inference_mode() if inference else torch.enable_grad()
    with context:
        program = torch.export.export(_Spine(), (A,))
        got = program.module()(A)
    # the same kernels; a solver perturbation (tests/_perturb.py) acts on eager calls only
    assert _close(got, expected, rel=1e-10)            # measured 0 (1.1e-13 perturbed)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any("eigh" in t for t in targets)


def test_spine_compiles_fullgraph_with_the_remedied_gradient():
    """Forward and backward in one compiled graph: the gradient is svdlib's (Taylor remedy,
    eigenvalue floor), equal to the eager one, not torch's own eigh backward."""
    A = _matrices(requires_grad=True)
    weights = [torch.randn(s, generator=torch.Generator().manual_seed(i), dtype=F64)
               for i, s in enumerate([(2, 5), (2, 5, 5), (2, 5, 5)])]

    def loss(A):
        return sum((w * out).sum() for w, out in zip(weights, _Spine()(A)))

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    (g_compiled,) = torch.autograd.grad(compiled(A), A)
    (g_eager,) = torch.autograd.grad(loss(A), A)
    assert _close([g_compiled], [g_eager], rel=1e-10)  # measured 0 (3.3e-13 perturbed)
    # torch's exact eigh backward differs here (the cluster 0.3, 0.31 meets Taylor's K~)
    A2 = A.detach().clone().requires_grad_(True)
    lam, U = torch.linalg.eigh(A2)
    exact = (weights[0] * lam).sum() + (weights[1] * ((U * lam.sqrt().unsqueeze(-2)) @ U.mT)).sum()
    exact = exact + (weights[2] * ((U * (lam + 1e-3).rsqrt().unsqueeze(-2)) @ U.mT)).sum()
    (g_exact,) = torch.autograd.grad(exact, A2)
    assert (g_eager - g_exact).abs().max() > 1e-6


def test_spine_compiles_fullgraph_under_inference_mode():
    A = _matrices()
    expected = _Spine()(A)
    with torch.inference_mode():
        got = torch.compile(_Spine(), fullgraph=True, backend="aot_eager")(A)
    assert _close(got, expected, rel=1e-10)            # measured 0 (1.1e-13 perturbed)


# ----------------------------------------------------------------------------- autocast

FUNCTIONS = {
    "sqrtm": lambda A, **kw: svdlib.sqrtm(A, **kw),
    "inv_sqrtm": lambda A, **kw: svdlib.inv_sqrtm(A, **kw),
    "sqrtm_newton_schulz": lambda A, **kw: svdlib.sqrtm(A, method="newton_schulz", iterations=12, **kw),
    "powm_0.3": lambda A, **kw: svdlib.powm(A, 0.3, **kw),
    "eigvals": lambda A, **kw: svdlib.eigh(A, **kw)[0],
}


def _covariances(device="cpu"):
    lam = torch.tensor([[0.05, 0.2, 0.9, 1.5, 3.0, 7.0]], dtype=F64).expand(3, 6) * torch.tensor(
        [[1.0], [0.5], [2.0]], dtype=F64)
    return matrix_with_spectrum(lam, seed=5).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_spine_under_autocast_computes_in_float32_and_returns_the_autocast_dtype(name, dtype, device):
    """A float32 input under autocast: the result is the float32 computation rounded once to
    the autocast dtype (|err| <= u |exact| + 1e-5 max|exact|, u its unit roundoff), not a
    computation whose matrix products autocast narrowed (several u off: 7e-3 in bfloat16
    where u = 3.9e-3 for entries near 1, measured before the change)."""
    fn = FUNCTIONS[name]
    A = _covariances(device)
    exact = fn(A)                                      # float64
    with torch.autocast(device, dtype=dtype):
        got = fn(A.float())
    assert got.dtype == dtype
    u = torch.finfo(dtype).eps / 2
    err = (got.double() - exact).abs()
    # float32 error of the computation: measured <= 2.5e-6 max|exact| (Newton-Schulz with 12
    # iterations has converged on this spectrum: 4e-15 off in float64)
    assert (err <= u * exact.abs() * 1.001 + 1e-5 * exact.abs().max()).all()


def test_spine_under_autocast_honours_compute_dtype():
    A = _covariances()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = svdlib.sqrtm(A.float(), compute_dtype=torch.float64)
    assert got.dtype == torch.bfloat16
    exact = svdlib.sqrtm(A)
    u = torch.finfo(torch.bfloat16).eps / 2
    assert ((got.double() - exact).abs() <= u * exact.abs() * 1.001 + 1e-12).all()


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_spine_float64_is_left_alone_by_autocast(name):
    """autocast never touches float64 tensors: neither may the spine."""
    fn = FUNCTIONS[name]
    A = _covariances()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(A)
    assert got.dtype == F64 and torch.allclose(got, fn(A), atol=1e-13, rtol=0)
