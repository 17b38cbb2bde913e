r"""Forward mode and second derivatives of the spine (docs/architecture.md, "Higher derivatives").

The backward stage (:mod:`svdlib.fused`) turns incoming gradients into dL/dA from saved
eigenpairs. Running the spine in forward mode (``torch.func.jvp``, ``jacfwd``, ``hessian``,
``torch.autograd.forward_ad``) or differentiating a gradient again (``create_graph=True``,
gradient penalties, Hessian-vector products) needs the rules here.

**Tangents that agree with the backward.** For eigh, dlam = keep o diag(E^) and
dU = U (K~^T o E^), E^ = U^T sym(dA) U, with the remedy's K~ and kept mask: the adjoint of
:func:`svdlib.fused.eigen_backward`, so <vjp(g), v> = <g, jvp(v)> for every remedy with a K~.
For a matrix function the backward G -> U (F~ o U^T sym(G) U) U^T is self-adjoint (F~ is
symmetric), so the tangent is the same map applied to dA; for ``divided_difference`` that is
the Fréchet derivative L_f(A)[dA], bounded at ties where plain eigh's is NaN.

**Second derivatives are exact, or refused.** A second derivative differentiates the gradient
map (A, G) -> dL/dA. In G it is linear, and every path differentiates it exactly. In A:

- ``divided_difference``: the gradient map is the Fréchet derivative L_f(A)[sym G]
  (:class:`_Frechet`); its derivative in A is the second Fréchet derivative with the second
  divided differences f[lam_i, lam_k, lam_j] (second-order Daleckii-Krein,
  :class:`_SecondFrechet`, :func:`svdlib.divided_difference.second_order_product`): exact and
  bounded at ties, in every combination of forward and reverse mode.
- ``exact`` (and :func:`svdlib.eigh` with it): the saved eigenpairs are re-attached to A with
  the exact derivative (:class:`_Eigenpairs`, eq. 7 with K_ij = 1/(lam_i - lam_j)), so the
  second derivative is plain eigh's: exact on separated spectra, NaN at ties (like
  torch.linalg.eigh).
- a remedy (taylor, clip, pade, truncate, power_iteration, one you registered): the remedied
  gradient stands in for a first derivative only. Its derivative cannot be formed consistently:
  in a loss l(f(A)) autograd sends the cotangent of the gradient penalty *and* the loss's own
  cotangent through the same remedied node, so the result would be neither the true second
  derivative nor the derivative of the remedied gradient. Differentiating it in A raises
  NotImplementedError naming the remedy and the exact choices (:class:`_Frozen`). Its
  derivative in the incoming gradient (e.g. ``torch.autograd.functional.jvp``'s double-backward
  trick) is linear and stays available.

**Orders and modes.** Forward over forward (``jacfwd(jacfwd(f))``) runs only through
``divided_difference``: torch runs a custom forward rule with forward mode switched off, so an
enclosing forward transform cannot see a rule made of plain operations (pytorch/pytorch issue
197867, reproduced with a one-line Function); the Fréchet rules are made of svdlib Functions,
which torch dispatches to the enclosing levels, and the eigh rules raise there instead of
returning zeros. A third derivative in A of ``divided_difference`` raises (it would need third
divided differences); the ``exact`` chain differentiates itself recursively in reverse mode.

None of this runs in a first-order backward: the stage is called as before, and one check of
grad mode decides (benchmarks/README.md, "Higher derivatives", measures the cost).
"""
from __future__ import annotations

import torch
from torch.autograd import forward_ad

from . import _options, fused
from ._validation import is_traced
from .divided_difference import divided_difference_matrix, second_order_product
from .remedies import exact as _EXACT_REMEDY

__all__ = [
    "records_derivatives",
    "differentiates_again",
    "forward_mode_possible",
    "has_exact_second_derivative",
    "eigen_tangent",
    "eigen_jvp",
    "eigen_backward_twice",
    "spectral_jvp",
    "spectral_twice",
    "frechet",
    "second_frechet",
]


# ----------------------------------------------------------------------------- when
def records_derivatives(A: torch.Tensor) -> bool:
    """Whether a call on ``A`` needs an autograd node: A requires grad in grad mode, a
    transform (torch.func, torch.compile) wraps it, or forward-mode AD is active."""
    return (A.requires_grad and torch.is_grad_enabled()) or is_traced(A) or forward_ad._current_level >= 0


def _transformed(*tensors: torch.Tensor | None) -> bool:
    return any(t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


def forward_mode_possible() -> bool:
    """Whether a jvp rule may run for a Function applied now (forward AD or a torch.func
    transform is active): only then do the Functions save tensors for it."""
    return forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active()


def differentiates_again() -> bool:
    """Inside a backward: whether its result may be differentiated again (grad mode is on in a
    ``create_graph=True`` backward, a torch.func transform is active, or a forward-mode level is
    open). False in an ordinary backward, which then runs the stage unchanged."""
    if torch.is_grad_enabled():
        return True
    if torch.compiler.is_compiling():  # torch.compile traces a first-order backward
        return False
    return forward_mode_possible()


def _forward_depth() -> int:
    """How many forward-mode transforms are running, the one running a jvp rule included
    (plain forward AD counts as one)."""
    if not torch._C._are_functorch_transforms_active():
        return 1
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return sum(i.key() == TransformType.Jvp for i in retrieve_all_functorch_interpreters())


def _requested(A: torch.Tensor) -> bool:
    """Inside a backward: whether the running backward will use a gradient for ``A`` (True
    when that cannot be told)."""
    try:
        return bool(torch._C._will_engine_execute_node(torch.autograd.graph.get_gradient_edge(A).node))
    except Exception:  # no graph edge to ask about (a transform's wrapper, another torch version)
        return True


def has_exact_second_derivative(spec) -> bool:
    """Whether the remedy's gradient is the exact one, so its derivative in A is the true second
    derivative: ``divided_difference`` (the exact F of x^p) and ``exact`` (K, nothing dropped)."""
    remedy = spec.remedy
    return remedy.f_matrix is divided_difference_matrix or (
        remedy.k_matrix is _EXACT_REMEDY.k_matrix and remedy.kept is None and remedy.gradient is None)


def _exact_spec():
    return _options.backward_spec(_EXACT_REMEDY, use="eigh")


# ----------------------------------------------------------------------------- messages
def _no_second_derivative(spec) -> str:
    return (f"backward={spec.name!r} has no second derivative: a remedy replaces the first "
            "derivative only, and differentiating it again gives neither the true second "
            "derivative nor the derivative of the remedied gradient. Use "
            "backward='divided_difference' (matrix functions: exact and bounded at ties) or "
            "backward='exact' (exact on separated spectra, NaN at ties) for gradient penalties, "
            "Hessian-vector products and other second-order methods")


def _no_forward_rule(spec) -> str:
    return (f"backward={spec.name!r} supplies its own gradient function (it differentiates its own "
            "iterations) and has no forward-mode rule; use a remedy with a K~ (taylor, clip, pade, "
            "exact, truncate) or, for matrix functions, backward='divided_difference'")


_NESTED_FORWARD = (
    "forward mode over forward mode (e.g. jacfwd(jacfwd(f))) through svdlib.eigh or a remedied "
    "matrix function is not supported: torch does not differentiate a custom forward rule in "
    "forward mode again (pytorch/pytorch issue 197867), so the result would be silently wrong. "
    "Use torch.func.hessian (forward over reverse), jacrev(jacrev(f)) or jacrev(jacfwd(f)); for "
    "matrix functions backward='divided_difference' is exact to second order in any combination "
    "of modes")

_THIRD_ORDER = ("a third derivative of backward='divided_difference' with respect to A is not "
                "implemented (it needs third divided differences); first and second derivatives, "
                "forward and reverse, are exact")


# ----------------------------------------------------------------------------- helpers
def _sym(X: torch.Tensor) -> torch.Tensor:
    return 0.5 * (X + X.transpose(-1, -2))


class _Sum(torch.autograd.Function):
    """x + y as a Function: in a jvp rule that an enclosing forward transform differentiates, a
    plain addition would drop the enclosing tangents (forward mode is off there), while a
    Function is dispatched to the enclosing levels."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, y):
        return x + y

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return grad, grad

    @staticmethod
    def jvp(ctx, dx, dy):
        terms = [t for t in (dx, dy) if t is not None]
        return _add(terms) if terms else None


def _add(terms: list[torch.Tensor]) -> torch.Tensor:
    out = terms[0]
    for term in terms[1:]:
        out = _Sum.apply(out, term) if _forward_depth() >= 2 else out + term
    return out


# ----------------------------------------------------------------------------- eigenpairs
class _Eigenpairs(torch.autograd.Function):
    """(lam, U) of A, already computed, attached to A with the exact derivative (eq. 7 with
    K_ij = 1/(lam_i - lam_j)): what the second derivative of an exact backward differentiates.
    Its own backward is again differentiable (recursively)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(A, lam, U):
        return lam.clone(), U.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        A, lam, U = inputs
        ctx.save_for_backward(A, lam, U)
        ctx.save_for_forward(A, lam, U)

    @staticmethod
    def backward(ctx, grad_lam, grad_U):
        A, lam, U = ctx.saved_tensors
        if differentiates_again():
            return eigen_backward_twice(A, lam, U, grad_lam, grad_U, _exact_spec()), None, None
        return fused.eigen_backward(lam, U, grad_lam, grad_U, _exact_spec(), compile=False), None, None

    @staticmethod
    def jvp(ctx, dA, *_):
        A, lam, U = ctx.saved_tensors
        return eigen_jvp(A, lam, U, dA, _exact_spec())


class _Frozen(torch.autograd.Function):
    """(lam, U) of A for a remedied gradient: differentiating them in A raises ``message``;
    everything else about the gradient map (its incoming gradients) stays differentiable."""

    generate_vmap_rule = True

    @staticmethod
    def forward(A, lam, U, message):
        return lam.clone(), U.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        # the same tensors for both: torch.func's generated vmap rule keeps one set of batch dims
        ctx.save_for_backward(inputs[0], *output)
        ctx.save_for_forward(inputs[0], *output)
        ctx.message = inputs[3]

    @staticmethod
    def backward(ctx, grad_lam, grad_U):
        if ctx.needs_input_grad[0] and _requested(ctx.saved_tensors[0]):
            raise NotImplementedError(ctx.message)
        return None, None, None, None

    @staticmethod
    def jvp(ctx, dA, *_):
        if dA is not None:
            raise NotImplementedError(ctx.message)
        _, lam, U = ctx.saved_tensors
        return torch.zeros_like(lam), torch.zeros_like(U)


def eigenpairs_in(A: torch.Tensor, lam: torch.Tensor, U: torch.Tensor, spec) -> tuple[torch.Tensor, torch.Tensor]:
    """The eigenpairs (lam, U) of A as a function of A, for a gradient formula that will be
    differentiated again: with the exact derivative when the remedy's gradient is exact
    (:class:`_Eigenpairs`), refusing it otherwise (:class:`_Frozen`)."""
    if has_exact_second_derivative(spec):
        return _Eigenpairs.apply(A, lam.detach(), U.detach())
    return _Frozen.apply(A, lam.detach(), U.detach(), _no_second_derivative(spec))


class _NoSecondDerivative(torch.autograd.Function):
    """Passes a gradient through (a remedy with its own gradient function, computed on detached
    tensors); raises if anything differentiates it, forward or reverse."""

    @staticmethod
    def forward(value, A, grad_lam, grad_U, message):
        return value.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.message = inputs[4]

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError(ctx.message)

    @staticmethod
    def jvp(ctx, *tangents):
        raise NotImplementedError(ctx.message)


# ----------------------------------------------------------------------------- eigh
def eigen_tangent(lam: torch.Tensor, U: torch.Tensor, dA: torch.Tensor, spec) -> tuple[torch.Tensor, torch.Tensor]:
    """(dlam, dU) for dA with the remedy of ``spec``: dlam = keep o diag(E^), dU = U (K~^T o E^),
    E^ = U^T sym(dA) U; the adjoint of :func:`svdlib.fused.eigen_backward` (K~^T = -K~)."""
    if spec.remedy.gradient is not None:
        raise NotImplementedError(_no_forward_rule(spec))
    K, keep = fused._masked_k(lam, spec)
    E = U.transpose(-1, -2) @ _sym(dA) @ U
    dlam = torch.diagonal(E, dim1=-2, dim2=-1)
    if keep is not None:
        dlam = dlam * keep
    return dlam, U @ (-K * E)


def eigen_jvp(A, lam, U, dA, spec) -> tuple[torch.Tensor, torch.Tensor]:
    """The jvp rule of eigh (and of :class:`_Eigenpairs`): :func:`eigen_tangent`, on
    :func:`eigenpairs_in` when an enclosing reverse transform differentiates the tangent again;
    under an enclosing forward transform it raises (see the module docstring)."""
    if _forward_depth() >= 2:
        raise NotImplementedError(_NESTED_FORWARD)
    if _transformed(A, lam, U, dA):
        lam, U = eigenpairs_in(A, lam, U, spec)
    return eigen_tangent(lam, U, dA, spec)


def eigen_backward_twice(A, lam, U, grad_lam, grad_U, spec) -> torch.Tensor:
    """dL/dA of eigh as a differentiable function of A and the incoming gradients: the stage's
    formula on :func:`eigenpairs_in`. Exact in every argument for ``exact``; for a remedy exact
    in the incoming gradients and refused in A."""
    grad_lam = torch.zeros_like(lam) if grad_lam is None else grad_lam
    grad_U = torch.zeros_like(U) if grad_U is None else grad_U
    if spec.remedy.gradient is not None:
        value = fused.eigen_backward(lam, U, grad_lam, grad_U, spec, compile=False)
        return _NoSecondDerivative.apply(value, A, grad_lam, grad_U, _no_second_derivative(spec))
    lam_e, U_e = eigenpairs_in(A, lam, U, spec)
    return fused._eigen_backward_impl(lam_e, U_e, grad_lam, grad_U, spec)


# ----------------------------------------------------------------------------- matrix powers
def frechet(lam: torch.Tensor, U: torch.Tensor, G: torch.Tensor, p: float) -> torch.Tensor:
    """L_f(A)[sym G] = U (F o U^T sym(G) U) U^T, f = x^p, F the first divided differences."""
    return fused.apply_spectral_weights(U, divided_difference_matrix(lam, p), G)


def second_frechet(lam: torch.Tensor, U: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, p: float) -> torch.Tensor:
    """D^2 f(A)[sym X, sym Y] = U Z U^T, Z_ij = sum_k f[lam_i, lam_k, lam_j] (X^_ik Y^_kj + Y^_ik X^_kj)
    with X^ = U^T sym(X) U (second-order Daleckii-Krein)."""
    Ut = U.transpose(-1, -2)
    return U @ second_order_product(lam, Ut @ _sym(X) @ U, Ut @ _sym(Y) @ U, p) @ Ut


class _Frechet(torch.autograd.Function):
    """R = L_f(A)[sym G], the gradient of Q = A^p for dL/dQ = G, as a function of (A, G).

    Self-adjoint in G (F is symmetric), so its backward and tangent in G are itself; in A they
    are the second Fréchet derivative, symmetric in its three arguments:
    <H, D^2 f(A)[G, E]> = <D^2 f(A)[H, G], E>. ``lam`` (floored) and ``U`` are A's eigenpairs.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(A, G, lam, U, p):
        return frechet(lam, U, G, p)

    @staticmethod
    def setup_context(ctx, inputs, output):
        A, G, lam, U, p = inputs
        ctx.save_for_backward(A, G, lam, U)
        ctx.save_for_forward(A, G, lam, U)
        ctx.p = p

    @staticmethod
    def backward(ctx, H):
        A, G, lam, U = ctx.saved_tensors
        grad_A = grad_G = None
        if ctx.needs_input_grad[0]:
            grad_A = _SecondFrechet.apply(A, H, G, lam, U, ctx.p)
        if ctx.needs_input_grad[1]:
            grad_G = _Frechet.apply(A, H, lam, U, ctx.p)
        return grad_A, grad_G, None, None, None

    @staticmethod
    def jvp(ctx, dA, dG, *_):
        if _forward_depth() >= 3:
            raise NotImplementedError(_THIRD_ORDER)
        A, G, lam, U = ctx.saved_tensors
        p, again = ctx.p, _transformed(A, G, dA, dG)
        terms = []
        if dG is not None:
            terms.append(_Frechet.apply(A, dG, lam, U, p) if again else frechet(lam, U, dG, p))
        if dA is not None:
            terms.append(_SecondFrechet.apply(A, dA, G, lam, U, p) if again else second_frechet(lam, U, dA, G, p))
        return _add(terms) if terms else torch.zeros_like(G)


class _SecondFrechet(torch.autograd.Function):
    """D^2 f(A)[sym X, sym Y]: bilinear and symmetric in (X, Y), so its derivatives in X and Y
    are itself; its derivative in A is a third derivative and raises."""

    generate_vmap_rule = True

    @staticmethod
    def forward(A, X, Y, lam, U, p):
        return second_frechet(lam, U, X, Y, p)

    @staticmethod
    def setup_context(ctx, inputs, output):
        A, X, Y, lam, U, p = inputs
        ctx.save_for_backward(A, X, Y, lam, U)
        ctx.save_for_forward(A, X, Y, lam, U)
        ctx.p = p

    @staticmethod
    def backward(ctx, H):
        A, X, Y, lam, U = ctx.saved_tensors
        if ctx.needs_input_grad[0] and _requested(A):
            raise NotImplementedError(_THIRD_ORDER)
        grad_X = _SecondFrechet.apply(A, H, Y, lam, U, ctx.p) if ctx.needs_input_grad[1] else None
        grad_Y = _SecondFrechet.apply(A, H, X, lam, U, ctx.p) if ctx.needs_input_grad[2] else None
        return None, grad_X, grad_Y, None, None, None

    @staticmethod
    def jvp(ctx, dA, dX, dY, *_):
        if dA is not None or _forward_depth() >= 3:
            raise NotImplementedError(_THIRD_ORDER)
        A, X, Y, lam, U = ctx.saved_tensors
        p, again = ctx.p, _transformed(A, X, Y, dX, dY)

        def bilinear(E1, E2):
            return _SecondFrechet.apply(A, E1, E2, lam, U, p) if again else second_frechet(lam, U, E1, E2, p)

        terms = ([bilinear(dX, Y)] if dX is not None else []) + ([bilinear(X, dY)] if dY is not None else [])
        return _add(terms) if terms else torch.zeros_like(X)


def _is_divided_difference(spec) -> bool:
    return spec.remedy.f_matrix is divided_difference_matrix


def spectral_twice(A, lam, lam_k, U, G, p: float, spec) -> torch.Tensor:
    """U (F~ o U^T sym(G) U) U^T as a differentiable function of A and G: the matrix-function
    backward for dL/dQ = G and, applied to a tangent dA, the tangent of Q (the map is
    self-adjoint). ``divided_difference`` runs :class:`_Frechet`; other folded remedies run the
    stage's formula on :func:`eigenpairs_in` (refused in A), with the eigenvalue floor as a
    constant shift (straight-through, as in the first derivative)."""
    if _is_divided_difference(spec):
        return _Frechet.apply(A, G, lam.detach(), U.detach(), p)
    lam_e, U_e = eigenpairs_in(A, lam_k, U, spec)
    lam_f = lam_e + (lam - lam_k).detach()
    return fused._spectral_backward_impl(lam_f, lam_e, U_e, G, p, spec)


def spectral_jvp(A, lam, lam_k, U, dA, p: float, spec) -> torch.Tensor:
    """The jvp rule of a matrix power: the backward's map applied to dA. ``divided_difference``:
    the Fréchet derivative (:class:`_Frechet`), exact under any enclosing transform to second
    order; other remedies: :func:`spectral_twice` under an enclosing reverse transform, an
    error under an enclosing forward one."""
    depth, again = _forward_depth(), _transformed(A, lam, U, dA)
    if _is_divided_difference(spec):
        if depth >= 3:
            raise NotImplementedError(_THIRD_ORDER)
        return _Frechet.apply(A, dA, lam.detach(), U.detach(), p) if again else frechet(lam, U, dA, p)
    if depth >= 2:
        raise NotImplementedError(_NESTED_FORWARD)
    if again:
        return spectral_twice(A, lam, lam_k, U, dA, p, spec)
    return fused._spectral_backward_impl(lam, lam_k, U, dA, p, spec)
