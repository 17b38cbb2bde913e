"""Forward eigensolvers, chosen by name, with per-matrix failure detection and repair.

A solver maps a batch of symmetric matrices (..., n, n) to ascending eigenvalues
(..., n), eigenvectors in columns (..., n, n) and, optionally, a per-matrix success mask.
Registry (:data:`SOLVERS`, one :class:`Solver` record per name):

- ``"torch"``: :func:`torch.linalg.eigh`, any device.
- ``"cusolver_batched"``: cuSOLVER's ``XsyevBatched`` via nvmath-python, CUDA only: one
  batched call, where torch.linalg.eigh loops over the batch on CUDA for n > 32.
- ``"power_iteration_forward"``: the "PI" baseline of Robust Differentiable SVD (Tables
  III-IV), power iteration with deflation (:func:`power_iteration_eigh`). It is
  *differentiable*: autograd goes through its iterations and no remedy is used. (Its old name
  ``"power_iteration"`` is accepted with a warning; that name is the backward remedy's.)

``"auto"`` picks ``"cusolver_batched"`` for CUDA tensors when nvmath-python is importable
and ``"torch"`` otherwise (silently on CPU, with a one-time warning on CUDA). Adding a solver
is one function and one :func:`register_solver` line (docs/architecture.md).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable

import torch

from . import _cusolver, diagnostics
from ._validation import raise_non_finite

__all__ = ["SOLVERS", "Solver", "register_solver", "resolve_solver", "solver_for", "canonical_name",
           "is_differentiable",
           "solve", "power_iteration_eigh"]

SolverResult = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]

#: Old solver names, accepted with a FutureWarning: old -> current.
RENAMED = {"power_iteration": "power_iteration_forward"}


@dataclasses.dataclass(frozen=True)
class Solver:
    """One forward eigensolver.

    ``fn(A, **kw) -> (lam, U, ok)`` with ``ok`` a per-matrix success mask or None.
    ``differentiable``: autograd differentiates through ``fn`` itself (no remedy, no failure
    check); ``fn`` then takes ``iterations=`` (default: its own signature's).
    ``needs_cuda``: refuses tensors on other devices.
    """

    fn: Callable[..., SolverResult]
    differentiable: bool = False
    needs_cuda: bool = False

    def __call__(self, A: torch.Tensor, **kw) -> SolverResult:
        return self.fn(A, **kw)


def _torch_solver(A: torch.Tensor) -> SolverResult:
    try:
        lam, U = torch.linalg.eigh(A)
        return lam, U, None
    except torch.linalg.LinAlgError:
        # torch raises for the whole batch; find the culprits one by one (rare path).
        n = A.shape[-1]
        flat = A.reshape(-1, n, n)
        lam = torch.full(flat.shape[:-1], float("nan"), dtype=A.dtype, device=A.device)
        U = torch.full_like(flat, float("nan"))
        ok = torch.ones(flat.shape[0], dtype=torch.bool, device=A.device)
        for b in range(flat.shape[0]):
            try:
                lam[b], U[b] = torch.linalg.eigh(flat[b])
            except torch.linalg.LinAlgError:
                ok[b] = False
        return lam.reshape(A.shape[:-1]), U.reshape(A.shape), ok.reshape(A.shape[:-2])


def _cusolver_solver(A: torch.Tensor) -> SolverResult:
    lam, U, info = _cusolver.syev_batched(A)
    return lam, U, info == 0


def _power_iteration_solver(A: torch.Tensor, iterations: int | None = None) -> SolverResult:
    lam, U = power_iteration_eigh(A) if iterations is None else power_iteration_eigh(A, iterations)
    return lam, U, None


SOLVERS: dict[str, Solver] = {}

_warned_cuda_fallback = False


def register_solver(name: str, fn: Callable[..., SolverResult], *, differentiable: bool = False,
                    needs_cuda: bool = False) -> Solver:
    """Register ``fn(A) -> (lam, U, ok | None)`` as solver ``name`` and return its record."""
    record = fn if isinstance(fn, Solver) else Solver(fn, differentiable, needs_cuda)
    SOLVERS[name] = record
    return record


register_solver("torch", _torch_solver)
register_solver("cusolver_batched", _cusolver_solver, needs_cuda=True)
register_solver("power_iteration_forward", _power_iteration_solver, differentiable=True)


def canonical_name(name: str) -> str:
    """``name`` with a renamed solver mapped to its current name (warns)."""
    if name in RENAMED:
        warnings.warn(f"solver={name!r} is deprecated; use solver={RENAMED[name]!r} "
                      "(the name 'power_iteration' is the backward remedy's; see CHANGELOG.md)",
                      FutureWarning, stacklevel=4)
        return RENAMED[name]
    return name


def is_differentiable(name: str) -> bool:
    """Whether solver ``name`` is differentiated by autograd (no remedy)."""
    return bool(getattr(SOLVERS.get(RENAMED.get(name, name)), "differentiable", False))


def resolve_solver(name: str, device: torch.device) -> str:
    """Map ``"auto"`` to a concrete solver for ``device``; validate explicit names."""
    global _warned_cuda_fallback
    if name == "auto":
        if device.type == "cuda":
            if _cusolver.is_available():
                return "cusolver_batched"
            if not _warned_cuda_fallback:
                _warned_cuda_fallback = True
                warnings.warn(
                    "svdlib: nvmath-python is not importable, so solver='auto' falls back to "
                    "torch.linalg.eigh on CUDA, which loops over the batch for n > 32 (much "
                    "slower). Install the batched solver with: pip install 'svdlib[cuda]'",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return "torch"
    name = canonical_name(name)
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; expected 'auto' or one of {sorted(SOLVERS)}")
    if getattr(SOLVERS[name], "needs_cuda", False) and device.type != "cuda":
        raise ValueError(f"solver={name!r} needs a CUDA tensor, got device {device}")
    return name


def solver_for(name: str, A: torch.Tensor) -> str:
    """:func:`resolve_solver` for the device of ``A`` ("auto" off CUDA is "torch" at once)."""
    if name == "auto" and not A.is_cuda:
        return "torch"
    return resolve_solver(name, A.device)


def _repair_one(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Eigen-decompose one matrix that failed: float64, then growing diagonal jitter.

    The jitter is a diagonal of distinct tiny values (relative 1e-10, x100 per retry); it
    changes eigenvalues by at most its size. Last resort: the diagonal and the identity.
    """
    A64 = A.to(torch.float64)
    scale = float(A64.abs().max().clamp_min(1e-30)) if torch.isfinite(A64).all() else 1.0
    ramp = torch.linspace(1.0, 2.0, A.shape[-1], dtype=torch.float64, device=A.device)
    for attempt, rel in enumerate((0.0, 1e-10, 1e-8, 1e-6)):
        try:
            lam, U = torch.linalg.eigh(A64 + torch.diag(rel * scale * ramp))
        except torch.linalg.LinAlgError:
            continue
        if torch.isfinite(lam).all() and torch.isfinite(U).all():
            how = "float64" if attempt == 0 else f"float64 + diagonal jitter {rel:g}"
            return lam.to(A.dtype), U.to(A.dtype), how
    diag = torch.nan_to_num(torch.diagonal(A64), nan=0.0, posinf=0.0, neginf=0.0)
    lam, order = torch.sort(diag)
    U = torch.eye(A.shape[-1], dtype=torch.float64, device=A.device)[:, order]
    return lam.to(A.dtype), U.to(A.dtype), "diagonal fallback"


def solve(A: torch.Tensor, solver: str = "torch", traced: bool = False, name: str = "A",
          source: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run solver ``solver`` on ``A`` (..., n, n); detect and repair failed matrices.

    The check costs one host synchronisation and no pass over U: the sum of the eigenvalues
    is NaN or Inf as soon as one of them is, and a solver's failure mask is folded in (with
    :func:`svdlib.diagnostics.check_eigenvectors` on, the eigenvectors' sum too). Only when
    it is not finite are the matrices examined one by one: a non-finite input (``source``,
    default ``A``) raises ValueError naming ``name`` (NaN/Inf input gives non-finite
    eigenvalues or a solver error, so it needs no scan of its own); otherwise only the failed
    matrices are recomputed (:func:`_repair_one`), each is counted in
    :mod:`svdlib.diagnostics`, and the batch never crashes because one matrix failed. When
    ``traced`` (torch.compile / vmap) the data-dependent check is skipped.
    """
    entry = SOLVERS[solver]
    lam, U, ok = (entry.fn if type(entry) is Solver else entry)(A)
    if traced:
        return lam, U
    total = lam.sum()
    if diagnostics._check_eigenvectors:
        total = total + U.sum()
    if ok is not None:
        total = torch.where(ok.all(), total, torch.full_like(total, math.nan))
    if math.isfinite(total.item()):
        return lam, U
    finite = torch.isfinite(lam).all(-1) & torch.isfinite(U).all(-1).all(-1)
    ok = finite if ok is None else (ok & finite)
    if bool(ok.all()):  # the sum overflowed on finite values: nothing failed
        return lam, U
    source = A if source is None else source
    if not bool(torch.isfinite(source).all()):
        raise_non_finite(source, name)
    n = A.shape[-1]
    bad = (~ok).reshape(-1).nonzero().flatten().tolist()
    lam_f, U_f, A_f = lam.reshape(-1, n).clone(), U.reshape(-1, n, n).clone(), A.reshape(-1, n, n)
    how = []
    for b in bad:
        lam_f[b], U_f[b], h = _repair_one(A_f[b])
        how.append(h)
    diagnostics.record_failures(len(bad), solver=solver, indices=bad, repaired_by=how)
    return lam_f.reshape(lam.shape), U_f.reshape(U.shape)


def power_iteration_eigh(A: torch.Tensor, iterations: int = 19) -> tuple[torch.Tensor, torch.Tensor]:
    """All eigenpairs by power iteration with deflation, differentiable by autograd.

    The "PI" baseline of Robust Differentiable SVD (sec. 3.4, Alg. 1 forward; Tables
    III-IV), solver ``"power_iteration_forward"``: for each eigenvector from the largest down, ``iterations`` steps of
    v <- M v / ||M v|| from a fixed start, Rayleigh quotient lambda = v^T M v, deflation
    M <- M - lambda v v^T. Round-off accumulates along the deflation, and convergence is
    slow when eigenvalue ratios approach one: this is the baseline that fails, kept as is.
    Returns ascending eigenvalues and eigenvectors in columns, like torch.
    """
    n = A.shape[-1]
    M = A
    # A fixed, deterministic start that is not orthogonal to generic eigenvectors.
    start = torch.linspace(1.0, 2.0, n, dtype=A.dtype, device=A.device)
    start = (start / start.norm()).expand(*A.shape[:-2], n)
    lams, vecs = [], []
    for _ in range(n):
        v = start
        for _ in range(iterations):
            w = (M @ v.unsqueeze(-1)).squeeze(-1)
            v = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        lam = (v * (M @ v.unsqueeze(-1)).squeeze(-1)).sum(-1)
        lams.append(lam)
        vecs.append(v)
        M = M - lam[..., None, None] * v.unsqueeze(-1) * v.unsqueeze(-2)
    lam = torch.stack(lams[::-1], dim=-1)
    U = torch.stack(vecs[::-1], dim=-1)
    return lam, U
