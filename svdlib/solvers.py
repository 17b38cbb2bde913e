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
import functools
import math
import warnings
from typing import Callable

import torch

from . import _cusolver, diagnostics
from ._validation import batch_index, is_traced, raise_non_finite

__all__ = ["SOLVERS", "Solver", "register_solver", "resolve_solver", "solver_for", "canonical_name",
           "is_differentiable", "reads_lower_triangle", "Expect", "untrusted", "verify",
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
    ``lower_triangle``: ``fn`` reads only the lower triangle of its input (LAPACK's syevd does),
    so without a derivative to record the symmetric part need not be formed first
    (:func:`svdlib.eigen.symmetric_part_needed`). False (the safe default) when ``fn`` reads
    the whole matrix or another triangle.
    """

    fn: Callable[..., SolverResult]
    differentiable: bool = False
    needs_cuda: bool = False
    lower_triangle: bool = False

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
                    needs_cuda: bool = False, lower_triangle: bool = False) -> Solver:
    """Register ``fn(A) -> (lam, U, ok | None)`` as solver ``name`` and return its record."""
    record = fn if isinstance(fn, Solver) else Solver(fn, differentiable, needs_cuda, lower_triangle)
    SOLVERS[name] = record
    return record


register_solver("torch", _torch_solver, lower_triangle=True)
# XsyevBatched is told "lower" of a row-major buffer, i.e. it reads A's upper triangle: it keeps
# the symmetric part (the default lower_triangle=False).
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


def reads_lower_triangle(name: str) -> bool:
    """Whether solver ``name`` reads only its input's lower triangle (``Solver.lower_triangle``)."""
    return bool(getattr(SOLVERS.get(name), "lower_triangle", False))


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


@dataclasses.dataclass(frozen=True)
class Expect:
    """What a caller needs of the spectrum, checked together with the solver's failure check
    (:func:`solve`), so it costs no host synchronisation of its own.

    name
        The argument's name in error messages.
    psd_rtol
        When set, a matrix with an eigenvalue below ``-psd_rtol * max|lam|`` raises ValueError:
        it is not positive semi-definite beyond rounding (:func:`svdlib._validation.rounding_rtol`).
    needs_scale
        A matrix without scale (every |eigenvalue| below the dtype's smallest normal number:
        the zero matrix) raises ValueError.
    purpose
        What needs it, for the message (e.g. "inv_sqrtm (p = -0.5)").
    remedy
        What the caller can do instead, for the message.
    """

    name: str = "A"
    psd_rtol: float | None = None
    needs_scale: bool = False
    purpose: str = ""
    remedy: str = ""

    def violations(self, lam: torch.Tensor) -> torch.Tensor | None:
        """Per-matrix mask (...,) of the matrices that break the expectation (on the device)."""
        bad = None
        if self.psd_rtol is not None or self.needs_scale:
            scale = lam.abs().amax(-1)
        if self.psd_rtol is not None:
            bad = lam.amin(-1) < -self.psd_rtol * scale
        if self.needs_scale:
            no_scale = scale < torch.finfo(lam.dtype).tiny
            bad = no_scale if bad is None else bad | no_scale
        return bad

    def error(self, lam: torch.Tensor, index: str) -> ValueError:
        """The message for one matrix (eigenvalues ``lam``) that breaks the expectation."""
        scale = float(lam.abs().amax())
        lowest = float(lam.amin())
        what = f"{self.name}{index}"
        needs = f" for {self.purpose}" if self.purpose else ""
        tail = f"; {self.remedy}" if self.remedy else ""
        if self.needs_scale and not scale >= torch.finfo(lam.dtype).tiny:
            dtype = str(lam.dtype).removeprefix("torch.")
            return ValueError(f"{what} is the zero matrix (every |eigenvalue| is below the smallest normal "
                              f"{dtype} number), where {self.purpose or 'a negative power'} is undefined{tail}")
        return ValueError(
            f"{what} must be positive semi-definite{needs}: it has the eigenvalue {lowest:.4g}, below "
            f"-{self.psd_rtol:.2g} x its largest |eigenvalue| {scale:.4g} (the rounding of a positive "
            f"semi-definite matrix stays above that){tail}")


#: A solver's eigenpairs are trusted (with :func:`svdlib.diagnostics.check_eigenvectors` on)
#: when max |U^T U - I| and max |A U - U diag(lam)| / max(|lam|, |A|) are at most
#: TRUST_FACTOR * n * eps of the dtype. LAPACK's measured up to 1.7 n eps (n = 3; random,
#: clustered, 1e-12..1e6 and covariance spectra, float32 and float64, n = 2..256, torch's and
#: numpy's LAPACK, with and without a random similarity first): a 38x margin; garbage is O(1).
TRUST_FACTOR = 64


def untrusted(A: torch.Tensor, lam: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """Per-matrix mask (...,) of eigenpairs that are not an eigendecomposition of ``A`` up to
    rounding: non-finite, not orthonormal, or A U != U diag(lam) (:data:`TRUST_FACTOR`).
    Two batched products; :func:`solve` runs it with ``check_eigenvectors(True)``."""
    n = A.shape[-1]
    tol = TRUST_FACTOR * n * torch.finfo(A.dtype).eps
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    orthogonality = (U.transpose(-1, -2) @ U - eye).abs().amax((-1, -2))
    scale = torch.maximum(lam.abs().amax(-1), A.abs().amax((-1, -2))).clamp_min(torch.finfo(A.dtype).tiny)
    residual = (A @ U - U * lam.unsqueeze(-2)).abs().amax((-1, -2)) / scale
    return ~((orthogonality <= tol) & (residual <= tol))  # NaN compares False: untrusted


def _repair_one(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Eigen-decompose one matrix that failed: float64, then growing diagonal jitter.

    The jitter is a diagonal of distinct tiny values (relative 1e-10, x100 per retry); it
    changes eigenvalues by at most its size. Last resort: the diagonal and the identity (not an
    eigendecomposition; :func:`solve` warns when it is used).
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
    return lam.to(A.dtype), U.to(A.dtype), FALLBACK


#: How :func:`_repair_one` names its last resort.
FALLBACK = "diagonal fallback"


def _run_solver(fn, A: torch.Tensor, solver: str, traced: bool):
    """Call a solver; an exception from it (not from bad input) marks every matrix as failed."""
    if traced:
        return (*fn(A), None)
    try:
        lam, U, ok = fn(A)
    except Exception as exc:  # a custom solver that raises: repair the batch, say why
        nan = torch.full(A.shape[:-1], math.nan, dtype=A.dtype, device=A.device)
        failed = torch.zeros(A.shape[:-2], dtype=torch.bool, device=A.device)
        return nan, torch.full_like(A, math.nan), failed, f"{type(exc).__name__}: {exc}"
    return lam, U, ok, None


@functools.lru_cache(maxsize=64)
def _plain_expect(name: str) -> Expect:
    """The Expect of a plain argument name (nothing asked of the spectrum), built once per name:
    :func:`solve` runs on every call, and a frozen record is cheaper to look up than to build."""
    return Expect(name)


def solve(A: torch.Tensor, solver: str = "torch", traced: bool = False, name: str | Expect = "A",
          source: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run solver ``solver`` on ``A`` (..., n, n); detect and repair failed matrices.

    The check costs one host synchronisation and no pass over U: the sum of the eigenvalues
    is NaN or Inf as soon as one of them is, and a solver's failure mask and the caller's
    :class:`Expect` (``name``: a plain name, or an Expect that also says what the spectrum
    must satisfy) are folded in. With :func:`svdlib.diagnostics.check_eigenvectors` on, the
    eigenpairs themselves are verified too (:func:`untrusted`: finite, orthonormal, A U = U
    diag(lam) up to rounding), so a solver that reports success with garbage is repaired.

    Only when the check fails are the matrices examined one by one: a non-finite input
    (``source``, default ``A``) raises ValueError naming it (NaN/Inf input gives non-finite
    eigenvalues or a solver error, so it needs no scan of its own; a solver that reads only
    the lower triangle does not see, and does not refuse, NaN/Inf in the upper one); failed
    matrices are recomputed (:func:`_repair_one`) and counted in :mod:`svdlib.diagnostics`, so the batch never
    crashes because one matrix failed; a solver that raises is treated as failing on every
    matrix (RuntimeWarning with its message); a matrix that no repair could decompose is
    replaced by its diagonal and the identity with a RuntimeWarning naming it; a matrix that
    breaks the Expect raises ValueError naming it. When ``traced`` (torch.compile / vmap) the
    data-dependent check is skipped.
    """
    expect = name if isinstance(name, Expect) else _plain_expect(name)
    entry = SOLVERS[solver]
    lam, U, ok, raised = _run_solver(entry.fn if type(entry) is Solver else entry, A, solver, traced)
    if traced:
        return lam, U
    if diagnostics._check_eigenvectors:
        ok = ~untrusted(A, lam, U) if ok is None else ok & ~untrusted(A, lam, U)
    if _all_good(lam, expect, ok):
        return lam, U
    return _examine(A, lam, U, ok, raised, solver, expect, A if source is None else source)


def verify(lam: torch.Tensor, U: torch.Tensor, expect: "Expect | str", source: torch.Tensor) -> None:
    """The check of :func:`solve` for an approximate, differentiable solver's eigenpairs, which
    cannot be repaired: one host synchronisation; NaN/Inf ``source`` and a broken
    :class:`Expect` raise ValueError. The Expect reads :func:`_sign_witness`, not ``lam``.
    Skipped when traced."""
    expect = expect if isinstance(expect, Expect) else Expect(expect)
    if is_traced(lam):
        return
    witness = _sign_witness(source, lam, U)
    if _all_good(witness, expect):
        return
    if not bool(torch.isfinite(source).all()):
        raise_non_finite(source, expect.name)
    _enforce(witness, expect, source.shape)


def _sign_witness(A: torch.Tensor, lam: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """What :func:`verify` checks for an approximate (differentiable) solver: the Rayleigh
    quotients u_i^T A u_i of the input on the computed vectors, where ``lam`` is finite.

    Power iteration with deflation (``solver="power_iteration_forward"``) returns eigenvalues
    of the deflated matrices, which can be clearly negative for a positive semi-definite A when
    earlier directions have not converged (measured: -0.011 against a largest 14.6 in a ZCA
    training run). A Rayleigh quotient of a positive semi-definite A is never negative beyond
    rounding, however inaccurate u_i is, so a positive semi-definite input is never refused,
    while an input whose negative part the vectors see (e.g. -A) still is. Non-finite ``lam``
    is passed through so the failure check still sees it; a vector that vanished (power
    iteration on an exactly null deflated matrix) carries no sign, so its |lam| stands in.
    """
    with torch.no_grad():
        norms = (U * U).sum(-2)
        quotients = (U * (A @ U)).sum(-2) / norms.clamp_min(torch.finfo(U.dtype).tiny)
        witness = torch.where(norms > 0.5, quotients, lam.detach().abs())
    return torch.where(torch.isfinite(lam), witness, lam.detach())


def _all_good(lam: torch.Tensor, expect: Expect, ok: torch.Tensor | None = None) -> bool:
    """The one host synchronisation of :func:`solve` and :func:`verify`: True when every
    eigenvalue is finite (their sum is NaN/Inf as soon as one is), the solver's mask ``ok`` (if
    any) is all true and no matrix breaks ``expect``."""
    total = lam.sum()
    bad = None if ok is None else ~ok.all()
    broken = expect.violations(lam)
    if broken is not None:
        bad = broken.any() if bad is None else bad | broken.any()
    if bad is not None:
        total = torch.where(bad, torch.full_like(total, math.nan), total)
    return math.isfinite(total.item())


def _enforce(lam, expect, shape):
    broken = expect.violations(lam)
    if broken is not None and bool(broken.any()):
        n = shape[-1]
        b = int(broken.reshape(-1).nonzero()[0])
        raise expect.error(lam.detach().reshape(-1, n)[b], batch_index(b, shape[:-2]))


def _examine(A, lam, U, ok, raised, solver, expect, source):
    """The slow path of :func:`solve`: name bad input, repair failures, enforce the Expect."""
    finite = torch.isfinite(lam).all(-1) & torch.isfinite(U).all(-1).all(-1)
    ok = finite if ok is None else (ok & finite)
    if not bool(ok.all()):
        if not bool(torch.isfinite(source).all()):
            raise_non_finite(source, expect.name)
        lam, U = _repair(A, lam, U, ok, raised, solver, expect.name)
    _enforce(lam, expect, A.shape)
    return lam, U


def _repair(A, lam, U, ok, raised, solver, name):
    """Recompute the matrices that failed (``ok`` False), count them, warn where it matters."""
    n = A.shape[-1]
    bad = (~ok).reshape(-1).nonzero().flatten().tolist()
    lam_f, U_f, A_f = lam.reshape(-1, n).clone(), U.reshape(-1, n, n).clone(), A.reshape(-1, n, n)
    how = []
    for b in bad:
        lam_f[b], U_f[b], h = _repair_one(A_f[b])
        how.append(h)
    diagnostics.record_failures(len(bad), solver=solver, indices=bad, repaired_by=how,
                                **({"error": raised} if raised else {}))
    if raised:
        warnings.warn(f"svdlib: solver {solver!r} raised {raised}; the {len(bad)} matrices of {name} were "
                      "decomposed by the float64 repair instead (counted in svdlib.diagnostics)",
                      RuntimeWarning, stacklevel=4)
    given_up = [b for b, h in zip(bad, how) if h == FALLBACK]
    if given_up:
        where = ", ".join(f"{name}{batch_index(b, A.shape[:-2]) or ''}" for b in given_up[:5])
        more = f" and {len(given_up) - 5} more" if len(given_up) > 5 else ""
        warnings.warn(f"svdlib: the eigensolver and every repair failed on {where}{more}; returning its "
                      "diagonal as eigenvalues and the identity as eigenvectors, which is NOT an "
                      "eigendecomposition (counted in svdlib.diagnostics)", RuntimeWarning, stacklevel=4)
    return lam_f.reshape(lam.shape), U_f.reshape(U.shape)


def power_iteration_eigh(A: torch.Tensor, iterations: int = 19) -> tuple[torch.Tensor, torch.Tensor]:
    """All eigenpairs by power iteration with deflation, differentiable by autograd.

    The "PI" baseline of Robust Differentiable SVD (sec. 3.4, Alg. 1 forward; Tables
    III-IV), solver ``"power_iteration_forward"``: for each eigenvector from the largest down, ``iterations`` steps of
    v <- M v / ||M v|| from a fixed start, Rayleigh quotient lambda = v^T M v, deflation
    M <- M - lambda v v^T. Round-off accumulates along the deflation, and convergence is
    slow when eigenvalue ratios approach one: this is the baseline that fails, kept as is.
    Each step is scaled by its largest entry before the norm is taken (the same direction;
    the norm of a float32 vector with entries near 1e20 overflows, which turned every vector
    into 0 in a diverging ZCA run).
    Returns ascending eigenvalues and eigenvectors in columns, like torch.
    """
    n = A.shape[-1]
    M = A
    tiny = torch.finfo(A.dtype).tiny
    # A fixed, deterministic start that is not orthogonal to generic eigenvectors.
    start = torch.linspace(1.0, 2.0, n, dtype=A.dtype, device=A.device)
    start = (start / start.norm()).expand(*A.shape[:-2], n)
    lams, vecs = [], []
    for _ in range(n):
        v = start
        for _ in range(iterations):
            w = (M @ v.unsqueeze(-1)).squeeze(-1)
            w = w / w.abs().amax(-1, keepdim=True).clamp_min(tiny)
            v = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        lam = (v * (M @ v.unsqueeze(-1)).squeeze(-1)).sum(-1)
        lams.append(lam)
        vecs.append(v)
        M = M - lam[..., None, None] * v.unsqueeze(-1) * v.unsqueeze(-2)
    lam = torch.stack(lams[::-1], dim=-1)
    U = torch.stack(vecs[::-1], dim=-1)
    return lam, U
