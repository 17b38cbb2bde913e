r"""The backward stage: dL/dA from a remedy, for eigh and for matrix functions, in few kernels.

Every backward of svdlib runs here (docs/architecture.md, "The backward stage"). It reads a
:class:`svdlib._options.BackwardSpec` (the remedy record of :mod:`svdlib.remedies` with its
options resolved) and never validates again.

*Eigen backward* (:func:`eigen_backward`, used by :func:`svdlib.eigh`): for a remedy with a
K~ (eq. 7 symmetrised), with M = U^T dL/dU,

.. math:: \frac{\partial L}{\partial A} = U\Big(\tfrac12\big(\tilde K^T\circ M + \tilde K\circ M^T\big)
          + \mathrm{diag}\,\frac{\partial L}{\partial\lambda}\Big)U^T ,

since sym(U X U^T) = U sym(X) U^T: three batched products and one element-wise pass. Every
K~ is antisymmetric entry by entry (K~_ji = -K~_ij, see :mod:`svdlib.remedies`), so K~^T is
never formed. A remedy's ``kept`` mask zeroes the rows and columns of K~ and the dL/dlam of
the directions it drops. A remedy without a K~ (power iteration) supplies its own gradient.

*Matrix-function backward* (:func:`spectral_stage`, used by :func:`svdlib.powm`): for
Q = U diag(s) U^T, s = f(lam), G = dL/dQ and M = U^T sym(G) U, eq. 5-6 give
dL/dU = 2 sym(G) U diag(s) and dL/dlam = f'(lam) o diag(M), so eq. 7 collapses to one
Hadamard product (:func:`apply_spectral_weights`),

.. math:: \frac{\partial L}{\partial A} = U\,(\tilde F\circ M)\,U^T,\qquad
          \tilde F_{ij} = \tilde K_{ij}\,s_i + \tilde K_{ji}\,s_j = \tilde K_{ij}\,(s_i - s_j)\ (i\ne j),\qquad
          \tilde F_{ii} = f'(\lambda_i),

the last form because K~ is antisymmetric (it is also the better-rounded one: the chain forms
the two large products separately and cancels them). For the exact K this F~ is the
divided-difference matrix (Daleckii-Krein); a remedy in divided-difference form gives F
directly. A remedy whose record says ``foldable=False`` (``exact``: the papers' plain-SVD
reference) is not folded: the matrix function then differentiates its composition through
:func:`eigen_backward`, so the cancellation the papers measure stays visible.

Both are pure functions of (eigenvalues, eigenvectors, incoming gradients), so they can be
differentiated again or given a forward-mode rule. On CUDA the element-wise part is compiled
with ``torch.compile`` (``dynamic=False``, one graph per shape), which fuses the K~
construction, the Hadamard product, the symmetrisation and the diagonal into one kernel around
cuBLAS products; elsewhere (CPU, or inside ``torch.compile`` / ``torch.func`` transforms of the
caller) the same functions run eagerly.
"""
from __future__ import annotations

import types
import warnings
from typing import Callable

import torch

from . import _options, _registry
from ._registry import DEFAULT_BACKWARD
from ._validation import is_traced, rounding_rtol

__all__ = [
    "eigen_backward",
    "remedy_spectrum",
    "spectral_stage",
    "apply_spectral_weights",
    "k_matrix",
    "spectral_weights",
    "remedy_backward",
    "spectral_backward",
    "compile_available",
]


# ----------------------------------------------------------------------------- kernels
# Pure tensor functions (no data-dependent Python branches), so torch.compile captures each
# as one graph: cuBLAS products plus one generated element-wise kernel. Each kernel reads K~
# at (i, j) only, which lets the compiler compute it in registers instead of materialising it.
def remedy_spectrum(lam: torch.Tensor, remedy) -> torch.Tensor:
    """The eigenvalues a remedy's callables see: ``lam``, or for a ``psd_only`` remedy, lam
    shifted up by -lam_min on each matrix whose lam_min is clearly negative (below
    -rounding_rtol max|lam|, :func:`svdlib._validation.rounding_rtol`).

    The shifted spectrum is that of A - lam_min I: A's eigenvectors and A's exact
    K_ij = 1/(lam_i - lam_j) (differences do not change under a shift), but no negative
    eigenvalue for the remedy's floor, ratios or power iterations to get wrong. Rounding-level
    negatives of a positive semi-definite matrix are left as they are (the remedy's floor
    handles them), so nothing changes on such input. The one place this rule is applied.
    """
    if not remedy.psd_only:
        return lam
    lowest = lam.amin(-1, keepdim=True)
    clearly_negative = lowest < -rounding_rtol(lam.shape[-1], lam.dtype) * lam.abs().amax(-1, keepdim=True)
    return lam - torch.where(clearly_negative, lowest, torch.zeros_like(lowest))


def _masked_k(lam, spec):
    lam = remedy_spectrum(lam, spec.remedy)
    K = spec.remedy.k_matrix(lam, **spec.kwargs("k_matrix"))
    if spec.remedy.kept is None:
        return K, None
    keep = spec.remedy.kept(lam, **spec.kwargs("kept"))
    return K * keep.unsqueeze(-1) * keep.unsqueeze(-2), keep


def _eigen_backward_impl(lam, U, grad_lam, grad_U, spec):
    K, keep = _masked_k(lam, spec)
    if keep is not None:
        grad_lam = grad_lam * keep
    Ut = U.transpose(-1, -2)
    M = Ut @ grad_U
    eye = torch.eye(lam.shape[-1], dtype=torch.bool, device=lam.device)
    # 1/2 (K^T o M + K o M^T) with K^T = -K
    inner = 0.5 * K * (M.transpose(-1, -2) - M)
    inner = torch.where(eye, inner + grad_lam.unsqueeze(-1), inner)
    return U @ inner @ Ut


def _spectral_weights_impl(lam, lam_k, p, spec):
    if spec.remedy.f_matrix is not None:
        return spec.remedy.f_matrix(lam, p)
    lam_p = lam.pow(p)
    K, keep = _masked_k(lam_k, spec)
    # K_ij s_i + K_ji s_j = K_ij (s_i - s_j): one product instead of a cancelling sum
    F = K * (lam_p.unsqueeze(-1) - lam_p.unsqueeze(-2))
    eye = torch.eye(lam.shape[-1], dtype=torch.bool, device=lam.device)
    derivative = p * lam.pow(p - 1)
    if keep is not None:
        derivative = derivative * keep
    return torch.where(eye, derivative.unsqueeze(-1).expand_as(F), F)


def apply_spectral_weights(U: torch.Tensor, F: torch.Tensor, grad_Q: torch.Tensor) -> torch.Tensor:
    """dL/dA = U (F o U^T sym(dL/dQ) U) U^T (Daleckii-Krein form); symmetric for symmetric F."""
    Ut = U.transpose(-1, -2)
    M = Ut @ grad_Q @ U
    M = 0.5 * (M + M.transpose(-1, -2))  # = U^T sym(G) U, folded into the element-wise pass
    return U @ (F * M) @ Ut


def _spectral_backward_impl(lam, lam_k, U, grad_Q, p, spec):
    return apply_spectral_weights(U, _spectral_weights_impl(lam, lam_k, p, spec), grad_Q)


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
    if is_traced(tensor):  # the caller is compiling or transforming: stay a plain function
        return False
    if flag == "auto":
        return compile_available(tensor.device)
    return bool(flag) and _compile_broken is None


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
    device, spec); on a compile failure warn once and stay eager from then on."""
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
            "using the eager backward from now on",
            RuntimeWarning,
            stacklevel=3,
        )
        return impl(*args)


def _key(name, spec, *tensors, extra=()):
    return (name, spec, extra, tuple((tuple(t.shape), t.dtype, str(t.device)) for t in tensors))


# ----------------------------------------------------------------------------- the stage
def eigen_backward(lam: torch.Tensor, U: torch.Tensor, grad_lam: torch.Tensor | None,
                   grad_U: torch.Tensor | None, spec, compile: bool | str = "auto") -> torch.Tensor:
    """dL/dA of the eigendecomposition A = U diag(lam) U^T with the remedy of ``spec``.

    ``spec`` is a resolved :class:`svdlib._options.BackwardSpec`; missing incoming gradients
    (None) are zero. Symmetric up to rounding.
    """
    grad_lam = torch.zeros_like(lam) if grad_lam is None else grad_lam
    grad_U = torch.zeros_like(U) if grad_U is None else grad_U
    if spec.remedy.gradient is not None:
        return spec.remedy.gradient(remedy_spectrum(lam, spec.remedy), U, grad_lam, grad_U,
                                    **spec.kwargs("gradient"))
    key = _key("eigen", spec, lam, U)
    return _run(_eigen_backward_impl, key, _use_compile(compile, U), lam, U, grad_lam, grad_U, spec)


def spectral_stage(lam: torch.Tensor, lam_k: torch.Tensor, U: torch.Tensor, grad_Q: torch.Tensor, p: float,
                   spec, compile: bool | str = "auto") -> torch.Tensor:
    """dL/dA of Q = U diag(lam^p) U^T in one Hadamard product (remedies with a folded form).

    ``lam`` are the (floored) eigenvalues f is applied to, ``lam_k`` those K~ is built from
    (the solver's unfloored ones); ``spec`` a resolved spec whose remedy has ``f_matrix`` or a
    foldable ``k_matrix``.
    """
    key = _key("spectral", spec, lam, U, grad_Q, extra=(p,))
    return _run(_spectral_backward_impl, key, _use_compile(compile, U), lam, lam_k, U, grad_Q, float(p), spec)


def folds(spec) -> bool:
    """Whether matrix functions use the folded form for ``spec`` (see the module docstring)."""
    remedy = spec.remedy
    return remedy.f_matrix is not None or (remedy.k_matrix is not None and remedy.foldable)


# ----------------------------------------------------------------------------- by name
def _spec(backward, options, use="matrix_function"):
    return _options.backward_spec(backward, options, use=use)


def _check_compile(flag):
    return _options.MATRIX_FUNCTION_KEYWORDS["compile"](flag, "compile")


def k_matrix(lam: torch.Tensor, backward: str = DEFAULT_BACKWARD, **options) -> torch.Tensor:
    """The K~ (..., n, n) remedy ``backward`` applies (eq. 7 with K replaced), directions it
    drops zeroed."""
    spec = _spec(backward, options)
    if spec.remedy.k_matrix is None:
        raise ValueError(f"backward={spec.name!r} has no K~ matrix; remedies with one: "
                         f"{sorted(n for n, r in _registry.BACKWARDS.items() if r.k_matrix is not None)}")
    return _masked_k(lam, spec)[0]


def remedy_backward(lam: torch.Tensor, U: torch.Tensor, grad_lam: torch.Tensor | None,
                    grad_U: torch.Tensor | None, backward: str = DEFAULT_BACKWARD, *,
                    compile: bool | str = "auto", **options) -> torch.Tensor:
    r"""dL/dA of :func:`svdlib.eigh` with remedy ``backward`` and its ``options``
    (:func:`eigen_backward` by name).

    .. math:: \frac{\partial L}{\partial A} = U\Big(\tfrac12(\tilde K^T\circ M + \tilde K\circ M^T)
              + \mathrm{diag}\frac{\partial L}{\partial\lambda}\Big)U^T,\quad M = U^T\frac{\partial L}{\partial U}
    """
    return eigen_backward(lam, U, grad_lam, grad_U, _spec(backward, options, use="eigh"),
                          _check_compile(compile))


def _foldable_spec(backward, options):
    spec = _spec(backward, options)
    if not folds(spec):
        raise ValueError(f"backward={spec.name!r} has no folded (divided-difference) form; remedies with "
                         f"one: {sorted(n for n, r in _registry.BACKWARDS.items() if folds(_spec(n, {})))}")
    return spec


def spectral_weights(lam: torch.Tensor, p: float, backward: str = DEFAULT_BACKWARD, *,
                     lam_k: torch.Tensor | None = None, **options) -> torch.Tensor:
    r"""The matrix F~ with dL/dA = U (F~ o U^T sym(G) U) U^T for Q = U diag(lam^p) U^T.

    F~_ij = K~_ij (lam_i^p - lam_j^p) off the diagonal, F~_ii = p lam_i^(p-1): the remedy's
    stand-in for the divided difference (lam_i^p - lam_j^p)/(lam_i - lam_j). ``lam_k``
    (default ``lam``) are the eigenvalues K~ is built from. Folding is defined for every
    remedy with a K~ (``exact`` included), whether or not the matrix functions use it.
    """
    spec = _spec(backward, options)
    if spec.remedy.k_matrix is None and spec.remedy.f_matrix is None:
        raise ValueError(f"backward={spec.name!r} has no K~ or F matrix")
    return _spectral_weights_impl(lam, lam if lam_k is None else lam_k, float(p), spec)


def spectral_backward(lam: torch.Tensor, U: torch.Tensor, grad_Q: torch.Tensor, p: float,
                      backward: str = DEFAULT_BACKWARD, *, lam_k: torch.Tensor | None = None,
                      compile: bool | str = "auto", **options) -> torch.Tensor:
    r"""dL/dA of Q = U diag(lam^p) U^T through the eigendecomposition, in one Hadamard product
    (:func:`spectral_stage` by name), for a remedy with a folded form.

    .. math:: \frac{\partial L}{\partial A} = U\,(\tilde F\circ U^T\bar G U)\,U^T,\qquad
              \bar G = \tfrac12(G + G^T)
    """
    spec = _foldable_spec(backward, options)
    return spectral_stage(lam, lam if lam_k is None else lam_k, U, grad_Q, float(p), spec,
                          _check_compile(compile))


_REMOVED = ("powm", "sqrtm", "inv_sqrtm")


def __getattr__(name: str):
    # svdlib.fused.{powm, sqrtm, inv_sqrtm} were second copies of the matrix functions; every
    # matrix function now runs this stage, so they are deprecated aliases of svdlib's.
    if name in _REMOVED:
        warnings.warn(f"svdlib.fused.{name} is deprecated and will be removed; use svdlib.{name} "
                      "(it runs the same fused backward)", DeprecationWarning, stacklevel=2)
        import svdlib

        return getattr(svdlib, name)
    if name == "FUSABLE":
        warnings.warn("svdlib.fused.FUSABLE is deprecated; a remedy's record says whether it folds "
                      "(svdlib.BACKWARDS[name].foldable)", DeprecationWarning, stacklevel=2)
        return tuple(n for n in _registry.BACKWARDS if folds(_spec(n, {})))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
