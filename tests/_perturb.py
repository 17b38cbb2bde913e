"""Numerical perturbations that check the suite is portable across machines.

A test or a checked notebook output must not depend on which eigenbasis the solver picks inside
an eigenvalue cluster, nor on the last bits of rounding: both change from one machine to the
next (Intel or AMD, MKL or OpenBLAS, the SIMD kernels chosen at run time, 1 or many threads).
This module lets one machine imitate another by perturbing svdlib's forward eigensolvers; it is
switched on by the environment, so the same tests and notebooks run unchanged
(``make test-perturbed``, see the README's "Numerical environments"):

``SVDLIB_PERTURB=similarity[:SEED]``
    Every solver call decomposes Q^T A Q for a fixed random orthogonal Q (one per size and
    seed) and returns Q V: mathematically the same eigenpairs, but the rounding differs at the
    level of the dtype's epsilon and, inside a cluster of (near-)equal eigenvalues, the basis is
    a different, arbitrary one -- which is what another LAPACK build does. Diagonal matrices are
    not rotated (see :func:`similarity_solver`).
``SVDLIB_PERTURB=numpy``
    The ``"torch"`` solver is replaced by ``numpy.linalg.eigh`` (numpy's own LAPACK, OpenBLAS
    in the PyPI wheels) instead of torch's (MKL in the x86-64 wheels).

Several modes combine with commas (``similarity:3,numpy``). Traced calls (torch.compile,
torch.func transforms) and non-CPU tensors are left alone. The other knobs need no code:
``OMP_NUM_THREADS=2`` (tests/conftest.py applies it to torch), ``ATEN_CPU_CAPABILITY=default``
or ``avx2`` (torch's own kernels) and ``MKL_ENABLE_INSTRUCTIONS=SSE4_2`` or ``AVX2`` (MKL's).
"""
from __future__ import annotations

import functools
import os

import numpy as np
import torch

__all__ = ["install_from_env", "similarity_solver", "numpy_solver", "ENV"]

ENV = "SVDLIB_PERTURB"


@functools.lru_cache(maxsize=64)
def _orthogonal(n: int, seed: int) -> np.ndarray:
    """A fixed random orthogonal n x n matrix (QR of a Gaussian, signs fixed), in float64."""
    rng = np.random.default_rng(1000 + 7919 * seed + n)
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _traced(A: torch.Tensor) -> bool:
    from svdlib._validation import is_traced

    return is_traced(A)


def _shuffle_exact_ties(lam: torch.Tensor, U: torch.Tensor, seed: int) -> torch.Tensor:
    """Permute and flip the signs of the eigenvectors inside every group of exactly equal
    eigenvalues (a signed permutation: the freedom a solver really has on a diagonal matrix)."""
    n = lam.shape[-1]
    flat_lam, flat_U = lam.reshape(-1, n), U.reshape(-1, n, n).clone()
    for b in range(flat_lam.shape[0]):
        start = 0
        while start < n:
            stop = start + 1
            while stop < n and flat_lam[b, stop] == flat_lam[b, start]:
                stop += 1
            if stop - start > 1:
                rng = np.random.default_rng(seed + 31 * start + stop)
                k = stop - start
                R = np.eye(k)[rng.permutation(k)] * rng.choice([-1.0, 1.0], size=k)
                R = torch.from_numpy(R).to(U.dtype)
                flat_U[b, :, start:stop] = flat_U[b, :, start:stop] @ R
            start = stop
    return flat_U.reshape(U.shape)


def similarity_solver(solver, seed: int = 0):
    """Wrap ``solver`` (A -> (lam, U, ok)) so it decomposes Q^T A Q and returns (lam, Q V, ok).

    Diagonal matrices are left unrotated: every LAPACK returns their eigenvalues exactly and
    their eigenvectors as signed coordinate axes, so a test may rely on exact ties there; only
    the order and signs inside their tied eigenvalues are shuffled. A solver that reads only
    the lower triangle (``Solver.lower_triangle``) keeps doing so: the rotated matrix is built
    from A's lower triangle, and the wrapper keeps the record's attributes.
    """
    lower_triangle = bool(getattr(solver, "lower_triangle", False))

    @functools.wraps(solver)
    def perturbed(A: torch.Tensor, *args, **kwargs):
        if _traced(A) or A.shape[-1] < 2:
            return solver(A, *args, **kwargs)
        n = A.shape[-1]
        eye = torch.eye(n, dtype=A.dtype, device=A.device)
        diagonal = ((A * (1 - eye)) == 0).all(-1).all(-1)[..., None, None]
        Q = torch.from_numpy(_orthogonal(n, seed)).to(dtype=A.dtype, device=A.device)
        Q = torch.where(diagonal, eye, Q)
        if lower_triangle:  # the matrix such a solver decomposes: A's lower triangle mirrored
            A = A.tril() + A.tril(-1).transpose(-1, -2)
        B = Q.transpose(-1, -2) @ A @ Q
        lam, V, *rest = solver(0.5 * (B + B.transpose(-1, -2)), *args, **kwargs)
        U = Q @ V
        if bool(diagonal.any()):
            U = torch.where(diagonal, _shuffle_exact_ties(lam, U, seed), U)
        return (lam, U, *rest)

    return perturbed


_TORCH_EIGH = torch.linalg.eigh


def numpy_solver(fallback):
    """A ``"torch"`` solver replacement that calls numpy.linalg.eigh on CPU tensors.

    Tests that monkeypatch torch.linalg.eigh (to inject solver failures) keep their patch: the
    replacement steps aside while torch.linalg.eigh is not torch's own function.
    """

    @functools.wraps(fallback)
    def numpy_eigh(A: torch.Tensor, *args, **kwargs):
        if _traced(A) or A.device.type != "cpu" or torch.linalg.eigh is not _TORCH_EIGH:
            return fallback(A, *args, **kwargs)
        lam, U = np.linalg.eigh(A.detach().numpy())
        lam = torch.from_numpy(np.ascontiguousarray(lam)).to(A.dtype)
        U = torch.from_numpy(np.ascontiguousarray(U)).to(A.dtype)
        return lam, U, None

    return numpy_eigh


def install_from_env() -> list[str]:
    """Apply the modes named in ``$SVDLIB_PERTURB`` to ``svdlib.solvers.SOLVERS``; return them."""
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return []
    from svdlib import solvers

    modes = [m.strip() for m in spec.split(",") if m.strip()]
    for mode in modes:
        name, _, arg = mode.partition(":")
        if name == "numpy":
            solvers.SOLVERS["torch"] = numpy_solver(solvers.SOLVERS["torch"])
        elif name == "similarity":
            seed = int(arg) if arg else 0
            for key, fn in list(solvers.SOLVERS.items()):
                solvers.SOLVERS[key] = similarity_solver(fn, seed)
        else:
            raise ValueError(f"{ENV}: unknown mode {mode!r}; expected 'similarity[:SEED]' or 'numpy'")
    return modes
