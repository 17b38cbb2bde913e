"""cuSOLVER's batched symmetric eigensolver (``cusolverDnXsyevBatched``) for torch tensors.

Called through the low-level binding of the optional ``nvmath-python`` package
(``pip install "svdlib[cuda]"``); it replaces
``torch.linalg.eigh``, which loops over the batch on CUDA for n > 32 (benchmarks/README.md). The input is copied (the
solver overwrites it with the eigenvectors), workspaces come from torch's caching
allocator and handles are cached per (device, stream).
"""
from __future__ import annotations

import functools

import torch

__all__ = ["is_available", "syev_batched"]

_CUDA_DTYPE = {torch.float32: 0, torch.float64: 1}  # cudaDataType: CUDA_R_32F, CUDA_R_64F
_handles: dict[tuple[int, int], tuple[int, int]] = {}


@functools.lru_cache(maxsize=1)
def _binding():
    try:
        from nvmath.bindings import cusolverDn  # type: ignore[import-not-found]
    except Exception as exc:  # ImportError, or a broken CUDA install
        raise ImportError(
            "solver='cusolver_batched' needs nvmath-python: pip install 'svdlib[cuda]' "
            f"(or pip install nvmath-python); import failed with: {exc}"
        ) from exc
    if not hasattr(cusolverDn, "xsyev_batched"):
        raise ImportError("this nvmath-python has no cusolverDn.xsyev_batched (needs cuSOLVER >= 11.7.1)")
    return cusolverDn


def is_available() -> bool:
    """True when CUDA is present and nvmath-python exposes XsyevBatched."""
    if not torch.cuda.is_available():
        return False
    try:
        _binding()
    except ImportError:
        return False
    return True


def _handle(device: torch.device) -> tuple[int, int]:
    stream = torch.cuda.current_stream(device)
    key = (device.index or 0, stream.cuda_stream)
    if key not in _handles:
        cusolver = _binding()
        with torch.cuda.device(device):
            handle = cusolver.create()
            params = cusolver.create_params()
        cusolver.set_stream(handle, stream.cuda_stream)
        _handles[key] = (handle, params)
    return _handles[key]


def syev_batched(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eigen-decompose a batch ``A`` (..., n, n) of symmetric CUDA matrices.

    Returns ``(lam, U, info)``: ascending eigenvalues (..., n), eigenvectors in columns
    (..., n, n) and one int32 status per matrix (0 = success), without synchronising.
    """
    if A.device.type != "cuda":
        raise ValueError(f"solver='cusolver_batched' needs a CUDA tensor, got device {A.device}")
    if A.dtype not in _CUDA_DTYPE:
        raise ValueError(f"solver='cusolver_batched' supports float32/float64, got {A.dtype}")
    cusolver = _binding()
    n = A.shape[-1]
    batch_shape = A.shape[:-2]
    batch = 1
    for s in batch_shape:
        batch *= int(s)
    # Column-major n x n of a symmetric matrix is the matrix itself; clone because the
    # solver overwrites its input with the eigenvectors (stored column-major).
    work = A.reshape(batch, n, n).contiguous().clone()
    lam = torch.empty(batch, n, dtype=A.dtype, device=A.device)
    info = torch.zeros(batch, dtype=torch.int32, device=A.device)
    if batch == 0:
        return lam.reshape(*batch_shape, n), work.reshape(A.shape), info.reshape(batch_shape)
    dt = _CUDA_DTYPE[A.dtype]
    handle, params = _handle(A.device)
    jobz, uplo = 1, 0  # CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER
    dbytes, hbytes = cusolver.xsyev_batched_buffer_size(
        handle, params, jobz, uplo, n, dt, work.data_ptr(), n, dt, lam.data_ptr(), dt, batch
    )
    dbuf = torch.empty(max(int(dbytes), 1), dtype=torch.uint8, device=A.device)
    hbuf = torch.empty(max(int(hbytes), 1), dtype=torch.uint8)
    cusolver.xsyev_batched(
        handle, params, jobz, uplo, n, dt, work.data_ptr(), n, dt, lam.data_ptr(), dt,
        dbuf.data_ptr(), int(dbytes), hbuf.data_ptr(), int(hbytes), info.data_ptr(), batch,
    )
    # Output is column-major: eigenvector k is the k-th row of the row-major view.
    U = work.transpose(-1, -2)
    return lam.reshape(*batch_shape, n), U.reshape(A.shape), info.reshape(batch_shape)
