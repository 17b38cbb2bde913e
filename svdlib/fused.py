r"""Fused remedy backwards: the same gradients as :mod:`svdlib.remedies`, in fewer kernels.

The reference backward of ``svdlib.sqrtm(A, backward="taylor")`` is a chain of autograd nodes:
the composition Q = U f(Lambda) U^T gives dL/dU and dL/dlam (eq. 5-6 of the orthogonality
paper, two batched products), then the remedy builds K~ in about fifteen element-wise kernels
and applies eq. 7 (three batched products, a diagonal, a transpose-add). This module computes
the same numbers with the algebra folded:

*Eigen backward* (any K~, eq. 7 symmetrised): with M = U^T dL/dU,

.. math:: \frac{\partial L}{\partial A} = U\Big(\tfrac12\big(\tilde K^T\circ M + \tilde K\circ M^T\big)
          + \mathrm{diag}\,\frac{\partial L}{\partial\lambda}\Big)U^T ,

since sym(U X U^T) = U sym(X) U^T: three batched products and one element-wise pass.

*Matrix-function backward* (Q = U diag(s) U^T, s = f(lam)): with G = dL/dQ and
M = U^T sym(G) U, eq. 5-6 give dL/dU = 2 sym(G) U diag(s) and dL/dlam = f'(lam) o diag(M), so
eq. 7 collapses to one Hadamard product,

.. math:: \frac{\partial L}{\partial A} = U\,(\tilde F\circ M)\,U^T,\qquad
          \tilde F_{ij} = \tilde K_{ij}\,s_i + \tilde K_{ji}\,s_j = \tilde K_{ij}\,(s_i - s_j)\ (i\ne j),\qquad
          \tilde F_{ii} = f'(\lambda_i),

the last form because every remedy's K~ is antisymmetric (it is also the better-rounded one:
the reference chain forms the two large products separately and cancels them).

For the exact K (K_ij = 1/(lam_i - lam_j)) this F~ is the divided-difference matrix of
:mod:`svdlib.divided_difference` (Daleckii-Krein), for Taylor / Padé / clip it is the remedy's
approximation of it; ``backward="divided_difference"`` uses the closed forms of
:func:`svdlib.divided_difference.divided_difference_matrix` directly. Four batched products
and one element-wise pass, whatever the remedy.

The K~ and F matrices come from the reference builders (:func:`svdlib.remedies.k_taylor`, ...),
so both paths share one definition; only Padé has a graph-friendly copy whose coefficients are
computed outside the graph (:func:`_k_pade_graph`, tested equal to ``k_pade``). On CUDA the element-wise part is compiled with
``torch.compile`` (``dynamic=False``, one graph per shape), which fuses the K~ construction,
the Hadamard product, the symmetrisation and the diagonal into one kernel around cuBLAS
products; elsewhere (CPU, or inside ``torch.compile`` / ``torch.func`` transforms of the
caller) the same function runs eagerly.
"""
from __future__ import annotations

import types
import warnings
from typing import Callable

import torch

from . import remedies, solvers
from ._validation import is_traced
from .divided_difference import divided_difference_matrix

# svdlib.eigen and svdlib.matfuncs are imported inside the functions that need them, so either
# of them can import this module at its top (the hook described in benchmarks/README.md).

__all__ = [
    "FUSABLE",
    "k_matrix",
    "spectral_weights",
    "remedy_backward",
    "spectral_backward",
    "compile_available",
    "powm",
    "sqrtm",
    "inv_sqrtm",
]

#: Remedies with a fused backward. "power_iteration" (autograd through power iterations) and
#: "truncate" (masks the eigenvalue gradient too) keep their reference implementations.
FUSABLE = ("exact", "clip", "taylor", "pade", "divided_difference")


def _k_pade_graph(lam: torch.Tensor, coefficients, eps: float) -> torch.Tensor:
    """:func:`svdlib.remedies.k_pade` with its [p/q] coefficients given as constants.

    The reference builder computes (and caches) the coefficients with numpy inside the
    function, which torch.compile cannot capture in one graph; here they are computed once
    outside the graph (:func:`_resolve_options`) and the same float64 evaluation, overflow
    patch and cast follow (tests/test_fused.py checks equality with ``k_pade``).
    """
    a, b = coefficients
    lam64 = lam.to(torch.float64).clamp_min(eps)
    li, lj = lam64[..., :, None], lam64[..., None, :]
    big, small = torch.maximum(li, lj), torch.minimum(li, lj)
    x = small / big
    denominator = remedies._horner(b, x)
    sign = remedies._pair_sign(lam64)
    K = remedies._zero_diag(sign * remedies._horner(a, x) / (denominator * big))
    finite = torch.isfinite(K) & (denominator > 0)
    extreme = torch.where(finite, K.abs(), torch.zeros_like(K)).amax()
    return torch.where(finite, K, sign * extreme).to(lam.dtype)


_K_BUILDERS: dict[str, Callable[..., torch.Tensor]] = {
    "exact": lambda lam: remedies.k_exact(lam),
    "clip": lambda lam, threshold=100.0: remedies.k_clip(lam, threshold),
    "taylor": lambda lam, degree=9, eps=1e-10: remedies.k_taylor(lam, degree, eps),
    "pade": lambda lam, coefficients, eps=remedies.FLOAT64_EPS: _k_pade_graph(lam, coefficients, eps),
}


def _resolve_options(backward: str, options: dict) -> dict:
    """Validate the user's remedy options and turn them into graph constants.

    For "pade", ``order=(p, q)`` becomes the tuple of its coefficients (computed in float64 by
    :func:`svdlib.remedies.pade_coefficients`, cached by the remedies module).
    """
    if backward == "divided_difference":
        if options:
            raise ValueError(f"backward='divided_difference' takes no options, got {sorted(options)}")
        return {}
    remedies.validate_options(backward, options)
    if backward != "pade":
        return dict(options)
    resolved = {k: v for k, v in options.items() if k != "order"}
    order = options.get("order", (50, 50))
    if len(tuple(order)) != 2 or int(order[0]) < 0 or int(order[1]) < 0:
        raise ValueError(f"order must be two non-negative integers (p, q), got {order}")
    resolved["coefficients"] = remedies._geometric_pade(int(order[0]), int(order[1]))
    return resolved


def _check_backward(backward: str, allowed: tuple[str, ...]) -> None:
    if backward not in allowed:
        raise ValueError(f"backward must be one of {allowed} for the fused path, got {backward!r}")


def k_matrix(lam: torch.Tensor, backward: str = "taylor", **options) -> torch.Tensor:
    """The remedy's K~ (..., n, n) built by :mod:`svdlib.remedies` (eq. 7 with K replaced)."""
    _check_backward(backward, tuple(_K_BUILDERS))
    return _K_BUILDERS[backward](lam, **_resolve_options(backward, options))


# ----------------------------------------------------------------------------- kernels
# Pure tensor functions (no data-dependent Python branches), so torch.compile captures each
# as one graph: cuBLAS products plus one generated element-wise kernel.
# Every K~ of _K_BUILDERS is antisymmetric entry by entry (K~_ji = -K~_ij exactly, see the
# svdlib.remedies docstring), so K~^T is never formed: each kernel reads K~ at (i, j) only,
# which lets the compiler compute it in registers instead of materialising it.
def _eigen_backward_impl(lam, U, grad_lam, grad_U, backward, options):
    K = _K_BUILDERS[backward](lam, **options)
    Ut = U.transpose(-1, -2)
    M = Ut @ grad_U
    n = lam.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=lam.device)
    # 1/2 (K^T o M + K o M^T) with K^T = -K
    inner = 0.5 * K * (M.transpose(-1, -2) - M)
    inner = torch.where(eye, inner + grad_lam.unsqueeze(-1), inner)
    return U @ inner @ Ut


def _spectral_weights_impl(lam, lam_k, p, backward, options):
    if backward == "divided_difference":
        return divided_difference_matrix(lam, p)
    lam_p = lam.pow(p)
    K = _K_BUILDERS[backward](lam_k, **options)
    # K_ij s_i + K_ji s_j = K_ij (s_i - s_j): one product instead of a cancelling sum
    F = K * (lam_p.unsqueeze(-1) - lam_p.unsqueeze(-2))
    n = lam.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=lam.device)
    derivative = (p * lam.pow(p - 1)).unsqueeze(-1)
    return torch.where(eye, derivative.expand_as(F), F)


def _spectral_backward_impl(lam, lam_k, U, grad_Q, p, backward, options):
    F = _spectral_weights_impl(lam, lam_k, p, backward, options)
    Ut = U.transpose(-1, -2)
    M = Ut @ grad_Q @ U
    M = 0.5 * (M + M.transpose(-1, -2))  # = U^T sym(G) U, folded into the element-wise pass
    return U @ (F * M) @ Ut


# ----------------------------------------------------------------------------- compilation
_compiled: dict[tuple, Callable] = {}
_compile_broken: str | None = None


def compile_available(device: torch.device | str) -> bool:
    """True when the compiled path would be used for tensors on ``device`` by default.

    That is CUDA with a working Triton (torch.compile's GPU code generator). CPU uses the
    eager path by default: inductor needs a C++ compiler there and the first call per shape
    compiles for seconds (the compiled backward was ~2x faster on CPU in
    benchmarks/README.md); pass ``compile=True`` to opt in.
    """
    device = torch.device(device)
    if device.type != "cuda" or _compile_broken is not None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _use_compile(flag: bool | str, tensor: torch.Tensor) -> bool:
    if not (flag == "auto" or isinstance(flag, bool)):
        raise ValueError(f"compile must be True, False or 'auto', got {flag!r}")
    if is_traced(tensor):  # the caller is compiling or transforming: stay a plain function
        return False
    if flag == "auto":
        return compile_available(tensor.device)
    return flag and _compile_broken is None


def _fresh_code(impl: Callable, tag: int) -> Callable:
    """A copy of ``impl`` with its own code object.

    Dynamo keeps compiled graphs per code object and stops recompiling one after a small
    limit (8 by default), falling back to eager; a network with many layer sizes, or the
    benchmark's 8 cases x 3 remedies, would exceed it. One code object per key keeps every
    shape compiled once (``dynamic=False``).
    """
    code = impl.__code__.replace(co_name=f"{impl.__name__}_{tag}")
    return types.FunctionType(code, impl.__globals__, code.co_name, impl.__defaults__, impl.__closure__)


def _run(impl, key: tuple, use_compile: bool, *args):
    """Run ``impl`` eagerly or through a torch.compile'd copy cached per ``key`` (shape, dtype,
    device, remedy, options); on a compile failure warn once and stay eager from then on."""
    global _compile_broken
    if not use_compile:
        return impl(*args)
    fn = _compiled.get(key)
    if fn is None:
        fn = torch.compile(_fresh_code(impl, len(_compiled)), dynamic=False, fullgraph=True)
        _compiled[key] = fn
    try:
        return fn(*args)
    except Exception as exc:  # a missing compiler or Triton: correctness first, then speed
        _compile_broken = f"{type(exc).__name__}: {exc}"
        warnings.warn(
            f"svdlib.fused: torch.compile failed ({_compile_broken.splitlines()[0][:200]}); "
            "using the eager fused backward from now on",
            RuntimeWarning,
            stacklevel=3,
        )
        return impl(*args)


def _key(name, backward, options, *tensors, extra=()):
    meta = tuple((tuple(t.shape), t.dtype, str(t.device)) for t in tensors)
    return (name, backward, tuple(sorted((k, repr(v)) for k, v in options.items())), extra, meta)


# ----------------------------------------------------------------------------- public
def remedy_backward(
    lam: torch.Tensor,
    U: torch.Tensor,
    grad_lam: torch.Tensor | None,
    grad_U: torch.Tensor | None,
    backward: str = "taylor",
    *,
    compile: bool | str = "auto",
    **options,
) -> torch.Tensor:
    r"""dL/dA of :func:`svdlib.eigh` with remedy ``backward``: the fused form of
    ``svdlib.BACKWARDS[backward](lam, U, grad_lam, grad_U, **options)``.

    .. math:: \frac{\partial L}{\partial A} = U\Big(\tfrac12(\tilde K^T\circ M + \tilde K\circ M^T)
              + \mathrm{diag}\frac{\partial L}{\partial\lambda}\Big)U^T,\quad M = U^T\frac{\partial L}{\partial U}

    (orthogonality paper eq. 7, symmetrised before the outer products instead of after them).

    Parameters
    ----------
    lam, U : Tensor (..., n), (..., n, n)
        Ascending eigenvalues and eigenvectors (columns), as saved by the forward.
    grad_lam, grad_U : Tensor or None
        Incoming gradients; None means zero.
    backward : {"exact", "clip", "taylor", "pade"}
        The remedy; its keyword options as in :data:`svdlib.BACKWARDS` (e.g. ``degree=9``).
    compile : bool or "auto"
        Run the torch.compile'd kernel ("auto": on CUDA when Triton works).

    Returns
    -------
    Tensor (..., n, n), equal to the reference remedy up to rounding (symmetric up to rounding).
    """
    _check_backward(backward, tuple(_K_BUILDERS))
    resolved = _resolve_options(backward, options)
    grad_lam = torch.zeros_like(lam) if grad_lam is None else grad_lam
    grad_U = torch.zeros_like(U) if grad_U is None else grad_U
    key = _key("eigen", backward, options, lam, U)
    return _run(_eigen_backward_impl, key, _use_compile(compile, U), lam, U, grad_lam, grad_U,
                backward, resolved)


def spectral_weights(lam: torch.Tensor, p: float, backward: str = "taylor", *,
                     lam_k: torch.Tensor | None = None, **options) -> torch.Tensor:
    r"""The matrix F~ with dL/dA = U (F~ o U^T sym(G) U) U^T for Q = U diag(lam^p) U^T.

    F~_ij = K~_ij lam_i^p + K~_ji lam_j^p = K~_ij (lam_i^p - lam_j^p) off the diagonal (K~ is
    antisymmetric), F~_ii = p lam_i^(p-1): the remedy's
    stand-in for the divided difference (lam_i^p - lam_j^p)/(lam_i - lam_j). ``lam`` are the
    (floored) eigenvalues f is applied to; ``lam_k`` (default ``lam``) those K~ is built from,
    which in :func:`svdlib.sqrtm` are the solver's unfloored eigenvalues.
    """
    _check_backward(backward, FUSABLE)
    resolved = _resolve_options(backward, options)
    return _spectral_weights_impl(lam, lam if lam_k is None else lam_k, float(p), backward, resolved)


def spectral_backward(
    lam: torch.Tensor,
    U: torch.Tensor,
    grad_Q: torch.Tensor,
    p: float,
    backward: str = "taylor",
    *,
    lam_k: torch.Tensor | None = None,
    compile: bool | str = "auto",
    **options,
) -> torch.Tensor:
    r"""dL/dA of Q = U diag(lam^p) U^T through the eigendecomposition, in one Hadamard product.

    .. math:: \frac{\partial L}{\partial A} = U\,(\tilde F\circ U^T\bar G U)\,U^T,\qquad
              \bar G = \tfrac12(G + G^T)

    with F~ of :func:`spectral_weights`. Equals, up to rounding, the autograd chain of
    ``svdlib.powm(A, p, backward=backward)`` (eq. 5-7 with the remedy's K~) and, for
    ``backward="divided_difference"``, :func:`svdlib.divided_difference.spectral_backward`.

    Parameters
    ----------
    lam : Tensor (..., n)
        Eigenvalues f is applied to (after the eigenvalue floor; must be > 0 for p < 1 non-integer).
    U : Tensor (..., n, n)
        Eigenvectors in columns.
    grad_Q : Tensor (..., n, n)
        dL/dQ.
    p : float
        The power.
    backward : {"exact", "clip", "taylor", "pade", "divided_difference"}
    lam_k : Tensor (..., n), optional
        Eigenvalues K~ is built from (the solver's unfloored ones); default ``lam``.
    compile : bool or "auto"
        As in :func:`remedy_backward`.
    """
    _check_backward(backward, FUSABLE)
    resolved = _resolve_options(backward, options)
    lam_k = lam if lam_k is None else lam_k
    p = float(p)
    key = _key("spectral", backward, options, lam, U, grad_Q, extra=(p,))
    return _run(_spectral_backward_impl, key, _use_compile(compile, U), lam, lam_k, U, grad_Q, p,
                backward, resolved)


class _FusedPower(torch.autograd.Function):
    """Q = U diag(max(lam, floor)^p) U^T; backward by :func:`spectral_backward`."""

    generate_vmap_rule = True

    @staticmethod
    def forward(A, p, solver, min_eigenvalue, backward, options, compile):
        from .matfuncs import default_floor

        lam_k, U = solvers.solve(A, solver, traced=is_traced(A))
        floor = default_floor(lam_k, p) if min_eigenvalue is None else min_eigenvalue
        lam = lam_k
        if floor is not None:
            lam = torch.maximum(lam_k, torch.as_tensor(floor, dtype=lam_k.dtype, device=lam_k.device))
        Q = (U * lam.pow(p).unsqueeze(-2)) @ U.transpose(-1, -2)
        return Q, lam, lam_k, U

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, p, _, _, backward, options, compile = inputs
        _, lam, lam_k, U = output
        ctx.mark_non_differentiable(lam, lam_k, U)
        ctx.save_for_backward(lam, lam_k, U)
        ctx.p, ctx.backward_name, ctx.options, ctx.compile = p, backward, options, compile

    @staticmethod
    def backward(ctx, grad_Q, *_):
        lam, lam_k, U = ctx.saved_tensors
        grad_A = spectral_backward(lam, U, grad_Q, ctx.p, ctx.backward_name, lam_k=lam_k,
                                   compile=ctx.compile, **dict(ctx.options))
        return grad_A, None, None, None, None, None, None


def powm(
    A: torch.Tensor,
    p: float,
    backward: str = remedies.DEFAULT_MATFUNC_BACKWARD,
    *,
    eps: float = 0.0,
    min_eigenvalue: float | None = None,
    solver: str = "auto",
    compute_dtype: torch.dtype | None = None,
    compile: bool | str = "auto",
    **options,
) -> torch.Tensor:
    """:func:`svdlib.powm` with ``method="eigh"`` and the fused backward.

    Same forward (solver, eigenvalue floor :func:`svdlib.matfuncs.default_floor`, straight-
    through gradient of the floor, ``eps`` added to the diagonal and, when > 0, used as the
    floor of the remedies that clamp) and, up to rounding, the same gradient as
    ``svdlib.powm(A, p, backward=backward, ...)`` for every remedy in :data:`FUSABLE`; the
    backward is :func:`spectral_backward` (four batched products and one element-wise pass).
    """
    _check_backward(backward, FUSABLE)
    _resolve_options(backward, options)
    if eps and "eps" not in options and remedies.takes_option(backward, "eps"):
        # As in svdlib.eigh: one eps, added to the diagonal and used as the remedy's floor.
        options = {**options, "eps": eps}
    if solver == "power_iteration":
        raise ValueError("solver='power_iteration' is differentiated by autograd; use svdlib.powm")
    from .eigen import prepare

    out_dtype = A.dtype if isinstance(A, torch.Tensor) else None
    Ac = prepare(A, compute_dtype, eps)
    name = solvers.resolve_solver(solver, Ac.device)
    Q, _, _, _ = _FusedPower.apply(Ac, float(p), name, min_eigenvalue, backward,
                                   tuple(sorted(options.items())), compile)
    return Q.to(out_dtype)


def sqrtm(A: torch.Tensor, backward: str = remedies.DEFAULT_MATFUNC_BACKWARD, **kwargs) -> torch.Tensor:
    """Matrix square root with the fused backward; see :func:`powm`."""
    return powm(A, 0.5, backward, **kwargs)


def inv_sqrtm(A: torch.Tensor, backward: str = remedies.DEFAULT_MATFUNC_BACKWARD, **kwargs) -> torch.Tensor:
    """Inverse matrix square root with the fused backward; see :func:`powm`."""
    return powm(A, -0.5, backward, **kwargs)
