"""Small computations behind the teaching notebooks 01-02 (derivation, Taylor vs power iteration).

Each function computes one quantity a notebook plots or tabulates, from svdlib's own remedies
(:mod:`svdlib.remedies`) or from an independent reference (``torch.linalg.eigh``'s analytic
backward, plain autograd through power iterations), so that notebook cells stay a few lines
long and the numbers they show are tested here (``tests/test_teaching.py``):

* :func:`matrix_with_spectrum`: a symmetric matrix with a chosen spectrum;
* :func:`eigenvector_gradients`: dL_i/dA for L_i = u_i^T W u_i, every eigen-index at once,
  through any remedy of :data:`svdlib.BACKWARDS`, the "PI" forward baseline or the reference;
* :func:`power_iteration_gradient`, :func:`proposition_errors`: the Proposition of Robust
  Differentiable SVD sec. 3.3 (degree-K Taylor gradient == gradient of K+1 power iterations);
* :func:`min_relative_eigengaps`: Monte Carlo behind Robust Differentiable SVD Fig. 1(a);
* :func:`k_column_angles`: direction of the smallest eigenvalue's column of K, exact vs
  Taylor vs clipped (Robust Differentiable SVD sec. 3.5, app. 7.1-7.2);
* :func:`taylor_discarded_fraction`: the Fig. 4 surface, share of 1/(1-x) that the degree-K
  Taylor polynomial discards;
* :func:`format_table`, :func:`save_figure`, :func:`save_json`: the "What we showed" table and
  atomic writes into a notebook's ``results_dir``.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Iterable, Sequence

import torch

from . import remedies
from ._validation import renamed_keywords
from .eigen import eigh

__all__ = [
    "matrix_with_spectrum",
    "eigenvector_gradients",
    "power_iteration_gradient",
    "proposition_errors",
    "min_relative_eigengaps",
    "k_column_angles",
    "taylor_discarded_fraction",
    "format_table",
    "save_figure",
    "save_json",
]

PI_FORWARD = "pi_forward"
REFERENCE = "reference"


def matrix_with_spectrum(lam, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """R diag(lam) R^T with a random orthogonal R (QR of a seeded Gaussian matrix).

    Parameters
    ----------
    lam : sequence or Tensor (..., n)
        The eigenvalues; leading dimensions batch (one rotation per matrix).
    seed : int
        Seed of the rotation.
    dtype : torch.dtype
        Output dtype (the rotation is drawn in float64 first, so the matrix is the same up to
        rounding for every dtype).

    Returns
    -------
    Tensor (..., n, n), exactly symmetric.
    """
    lam = torch.as_tensor(lam, dtype=torch.float64)
    if lam.dim() < 1 or lam.shape[-1] < 1:
        raise ValueError(f"lam must have shape (..., n) with n >= 1, got {tuple(lam.shape)}")
    g = torch.Generator().manual_seed(int(seed))
    n = lam.shape[-1]
    R, _ = torch.linalg.qr(torch.randn(*lam.shape[:-1], n, n, generator=g, dtype=torch.float64))
    A = (R * lam.unsqueeze(-2)) @ R.transpose(-1, -2)
    return (0.5 * (A + A.transpose(-1, -2))).to(dtype)


def _symmetrise(G: torch.Tensor) -> torch.Tensor:
    return 0.5 * (G + G.transpose(-1, -2))


def eigenvector_gradients(A: torch.Tensor, W: torch.Tensor, method: str = REFERENCE, **options) -> torch.Tensor:
    r"""Gradients dL_i/dA of L_i = u_i^T W u_i for every eigenvector u_i of A, in one backward.

    L_i does not depend on the sign of u_i, so every method is compared on the same function.
    Its exact gradient involves K_ij = 1/(lam_i - lam_j) (orthogonality paper eq. 7):
    dL_i/dA = sum_{j != i} 2 (u_j^T W u_i) / (lam_i - lam_j) * sym(u_j u_i^T).

    Parameters
    ----------
    A : Tensor (n, n)
        Symmetric matrix.
    W : Tensor (n, n)
        Symmetric weight of the loss.
    method : str
        ``"reference"``: torch.linalg.eigh's own analytic backward (independent of svdlib);
        ``"pi_forward"``: the "PI" baseline, ``svdlib.eigh(solver="power_iteration_forward")``
        (forward and backward through power iteration with deflation; ``iterations`` option,
        default 19); any other name: that remedy of :data:`svdlib.BACKWARDS` with the
        torch solver and remedy ``options`` (e.g. ``degree=9``).

    Returns
    -------
    Tensor (n, n, n): entry i is the symmetrised dL_i/dA, eigen-index i in ascending order of
    eigenvalues (torch's order). A NaN/Inf entry means the method broke down.
    """
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be one square matrix (n, n), got shape {tuple(A.shape)}")
    if W.shape != A.shape:
        raise ValueError(f"W must have the shape of A {tuple(A.shape)}, got {tuple(W.shape)}")
    n = A.shape[-1]
    # One copy of A per eigen-index: the batch lets one backward give all n gradients.
    batch = A.detach().expand(n, n, n).clone().requires_grad_(True)
    if method == REFERENCE:
        if options:
            raise ValueError(f"method='reference' takes no options, got {sorted(options)}")
        _, U = torch.linalg.eigh(batch)
    elif method == PI_FORWARD:
        _, U = eigh(batch, solver="power_iteration_forward", **options)
    else:
        _, U = eigh(batch, backward=method, solver="torch", **options)
    idx = torch.arange(n)
    u = U[idx, :, idx]  # u[i] = eigenvector i of copy i
    loss = torch.einsum("bi,ij,bj->", u, W.to(u.dtype), u)
    (grad,) = torch.autograd.grad(loss, batch)
    return _symmetrise(grad)


def power_iteration_gradient(A: torch.Tensor, v0: torch.Tensor, g: torch.Tensor, steps: int) -> torch.Tensor:
    r"""dL/dA of L = g^T v_steps, v_{k+1} = A v_k / ||A v_k||, by autograd through the iterations.

    With v0 the dominant eigenvector computed by an SVD (held fixed: "PI is not involved in the
    forward pass"), this is Robust Differentiable SVD eq. 17-19; the Proposition of sec. 3.3
    says it equals the degree-(steps-1) Taylor gradient. Returned symmetrised (A symmetric).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    M = A.detach().clone().requires_grad_(True)
    v = v0.detach()
    for _ in range(steps):
        w = M @ v
        v = w / w.norm()
    (grad,) = torch.autograd.grad(g @ v, M)
    return _symmetrise(grad)


def proposition_errors(A: torch.Tensor, g: torch.Tensor, degrees: Iterable[int]) -> list[dict]:
    r"""The Proposition of Robust Differentiable SVD sec. 3.3, measured for each degree K.

    For L = g^T u_1 (u_1 the dominant eigenvector of the symmetric PSD matrix A) compares

    * ``taylor``: svdlib.eigh with backward="taylor", degree K (floor 1e-300: no clamping);
    * ``power_iteration``: :func:`power_iteration_gradient` with K + 1 steps from u_1;
    * ``exact``: torch.linalg.eigh's analytic backward.

    Returns one dict per K with ``taylor_vs_pi`` (max |difference|: the Proposition, zero up to
    rounding), ``taylor_vs_exact`` (Frobenius norm of the difference) and ``remainder`` (the
    Frobenius norm eq. 10 predicts for it). The latter two are equal up to rounding: with
    x_j = lam_j/lam_1 the Taylor gradient misses exactly
    sum_j (u_j^T g) x_j^(K+1)/((1 - x_j) lam_1) sym(u_j u_1^T), whose terms are orthogonal with
    squared norm 1/2 each.
    """
    A = A.detach()
    lam, U = torch.linalg.eigh(A)
    u1 = U[:, -1]
    # An eigenvector's sign is arbitrary and solvers differ in the one they return: each
    # gradient is taken for the eigenvector oriented like u_1, so the comparison is portable.
    def oriented(v):
        return torch.sign(v.detach() @ u1) * v

    A_ref = A.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad(g @ oriented(torch.linalg.eigh(A_ref)[1][:, -1]), A_ref)
    exact = _symmetrise(exact)
    x = lam[:-1] / lam[-1]
    coeff = U[:, :-1].T @ g
    rows = []
    for K in degrees:
        K = int(K)
        A_t = A.clone().requires_grad_(True)
        # floor=1e-300: no eigenvalue floor, so the comparison is with the pure Taylor series.
        _, U_t = eigh(A_t, backward="taylor", degree=K, floor=1e-300)
        (taylor,) = torch.autograd.grad(g @ oriented(U_t[:, -1]), A_t)
        pi = power_iteration_gradient(A, u1, g, K + 1)
        missed = coeff * x.pow(K + 1) / (1 - x) / lam[-1]
        rows.append({
            "degree": K,
            "taylor_vs_pi": (taylor - pi).abs().max().item(),
            "taylor_vs_exact": torch.linalg.matrix_norm(taylor - exact).item(),
            "remainder": (0.5 * missed.pow(2).sum()).sqrt().item(),
        })
    return rows


def min_relative_eigengaps(dims: Sequence[int], trials: int = 200, samples_per_dim: float = 2.0,
                           seed: int = 0) -> dict[int, torch.Tensor]:
    r"""Smallest gap between consecutive eigenvalues of random covariances, relative to the trace.

    Robust Differentiable SVD Fig. 1(a): "as the dimension of the matrix grows, so does the
    probability that at least two eigenvalues will be close to each other". For each d,
    ``trials`` covariances P = X X^T / N of Gaussian features X (d x N, N = ceil(samples_per_dim
    * d)) are drawn, eigenvalues computed in float64 and divided by trace(P) (so they sum to 1,
    the "energy"), and min_i (lam_{i+1} - lam_i) is returned. The paper's generator is not
    stated; this one is a plain Wishart ensemble. With N < d, P is singular and the gap between
    its zero eigenvalues is rounding noise (~1e-17).

    Returns a dict d -> float64 Tensor (trials,).
    """
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if samples_per_dim <= 0:
        raise ValueError(f"samples_per_dim must be > 0, got {samples_per_dim}")
    g = torch.Generator().manual_seed(int(seed))
    out = {}
    for d in dims:
        d = int(d)
        if d < 2:
            raise ValueError(f"every dimension must be >= 2 to have a gap, got {d}")
        N = max(1, math.ceil(samples_per_dim * d))
        X = torch.randn(trials, d, N, generator=g, dtype=torch.float64)
        X = X - X.mean(-1, keepdim=True)
        lam = torch.linalg.eigvalsh(X @ X.transpose(-1, -2) / N)
        lam = lam / lam.sum(-1, keepdim=True)
        out[d] = lam.diff(dim=-1).min(-1).values
    return out


@renamed_keywords(threshold="k_max", eps="floor")
def k_column_angles(lam: torch.Tensor, degree: int = 9, k_max: float = 100.0,
                    floor: float = 1e-12) -> dict[str, torch.Tensor]:
    r"""Angle (degrees) of the smallest eigenvalue's column of K, exact vs Taylor vs clip.

    Robust Differentiable SVD app. 7.1-7.2 (eq. 34-59): for a 3 x 3 covariance with
    lam_1 >= lam_2 >= lam_3 the column of K belonging to lam_3 is the 2D vector
    k = (1/(lam_1 - lam_3), 1/(lam_2 - lam_3)) (its third entry is 0); its angle to the lam_1
    axis is theta = atan2(k_2, k_1), in [45, 90] degrees. The remedies replace k by
    k~ (:func:`svdlib.remedies.k_taylor`, degree ``degree``, eigenvalue floor ``floor``) or k^
    (:func:`svdlib.remedies.k_clip`, |K| bound ``k_max``), and the direction error is
    theta~ - theta. At lam_2 == lam_3 the exact k_2 is infinite and theta = 90 degrees.

    Parameters
    ----------
    lam : Tensor (..., 3)
        Eigenvalues in descending order (the paper's), lam_1 >= lam_2 >= lam_3 >= 0.

    Returns
    -------
    dict with "exact", "taylor", "clip": Tensors (...) of angles in degrees.
    """
    lam = torch.as_tensor(lam, dtype=torch.float64)
    if lam.shape[-1] != 3:
        raise ValueError(f"lam must have shape (..., 3), got {tuple(lam.shape)}")
    if bool((lam.diff(dim=-1) > 0).any()):
        raise ValueError("lam must be in descending order lam_1 >= lam_2 >= lam_3 (the paper's order)")
    asc = lam.flip(-1)  # svdlib's ascending order: index 0 is lam_3
    out = {}
    for name, K in (
        ("exact", remedies.k_exact(asc)),
        ("taylor", remedies.k_taylor(asc, degree=degree, floor=floor)),
        ("clip", remedies.k_clip(asc, k_max=k_max)),
    ):
        k1, k2 = K[..., 2, 0], K[..., 1, 0]  # 1/(lam_1 - lam_3), 1/(lam_2 - lam_3)
        out[name] = torch.rad2deg(torch.atan2(k2, k1))
    return out


def taylor_discarded_fraction(ratios, degrees) -> torch.Tensor:
    r"""Share of 1/(1-x) that the degree-K Taylor polynomial discards (Fig. 4 surface).

    Robust Differentiable SVD sec. 4.1 and eq. 9-10: with x = lam_j/lam_i the exact K entry is
    (1/lam_i)/(1-x), the Taylor one (1/lam_i)(1 + x + ... + x^K), and the discarded share
    1 - K~/K equals x^(K+1). Computed here from :func:`svdlib.remedies.k_taylor` (not from the
    closed form) so the notebook can check the two against each other.

    Returns a float64 Tensor (len(degrees), len(ratios)).
    """
    x = torch.as_tensor(ratios, dtype=torch.float64).reshape(-1)
    if bool(((x < 0) | (x >= 1)).any()):
        raise ValueError("ratios must lie in [0, 1)")
    lam = torch.stack([x, torch.ones_like(x)], dim=-1)  # ascending pairs (x, 1)
    exact = 1.0 / (1.0 - x)
    rows = []
    for K in degrees:
        taylor = remedies.k_taylor(lam, degree=int(K), floor=1e-300)[..., 1, 0]
        rows.append(1.0 - taylor / exact)
    return torch.stack(rows)


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str] = ("claim", "paper value", "our value")) -> str:
    """Plain-text table with aligned columns (the notebooks' "What we showed")."""
    rows = [tuple(str(c) for c in r) for r in rows]
    if any(len(r) != len(header) for r in rows):
        raise ValueError(f"every row needs {len(header)} cells")
    width = [max(len(str(h)), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [" | ".join(str(h).ljust(w) for h, w in zip(header, width)), "-+-".join("-" * w for w in width)]
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, width)) for r in rows]
    return "\n".join(lines)


def _atomic_write(path: str, write) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_figure(fig, results_dir: str, name: str, dpi: int = 120) -> str | None:
    """Save ``fig`` as ``results_dir/name`` (PNG) atomically; do nothing when results_dir is ""."""
    if not results_dir:
        return None
    path = os.path.join(results_dir, name)
    _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    return path


def save_json(obj, results_dir: str, name: str) -> str | None:
    """Write ``obj`` as JSON to ``results_dir/name`` atomically; do nothing when results_dir is ""."""
    if not results_dir:
        return None
    path = os.path.join(results_dir, name)

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1)

    _atomic_write(path, write)
    return path
