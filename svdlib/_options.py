"""Remedy settings, validated once at the public call (docs/architecture.md, "Options").

A public call (:func:`svdlib.eigh`, :func:`svdlib.powm` and its wrappers, a layer's
constructor, the experiment config loader) turns ``backward=`` and its options into one
:class:`BackwardSpec`: the remedy record plus every option with its default filled in, each
checked by the record's check and normalised. The spec is immutable and hashable; the
backward stage reads it and never validates again.

Two rules that tie the public keywords to the remedies live here and nowhere else:

* **shift and floor**: ``eps`` of the public call is the diagonal shift added before the
  solve (eigenvalues move up by eps, eigenvectors stay). A remedy's eigenvalue ``floor`` is its
  own option. When the shift is > 0 and the floor is not given, the floor defaults to the
  shift, because the shifted spectrum cannot go below it (the papers use one eps for both).
  The record names the option this applies to (``Remedy.inherits_shift``).
* **iterations**: ``iterations`` of the public call counts the steps of whichever iterative
  part is in use: the Newton-Schulz method, else a differentiable iterative solver
  (``solver="power_iteration_forward"``), else a remedy with an ``iterations`` option
  (``backward="power_iteration"``); otherwise it is ignored, so a layer can switch method
  without changing its keywords. Each default is the one in that part's signature.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping, NamedTuple

from . import _registry, solvers
from ._validation import compute_dtype_option, integer, optional, real

__all__ = [
    "BackwardSpec",
    "backward_spec",
    "CallPlan",
    "call_plan",
    "iterations_target",
    "check_matrix_function_options",
    "MATRIX_FUNCTION_KEYWORDS",
    "forget_specs",
]

USES = ("eigh", "matrix_function")


class BackwardSpec:
    """A remedy with all its options resolved: what the backward stage runs.

    ``remedy`` is the :class:`svdlib.remedies.Remedy`, ``options`` the (name, value) pairs of
    every option (defaults filled in, checked, normalised), sorted by name. Hashable, so it can
    key caches (compiled kernels) and travel through autograd as a constant.
    """

    __slots__ = ("remedy", "options", "_kwargs", "_hash")

    def __init__(self, remedy, options: Mapping[str, Any]):
        self.remedy = remedy
        self.options = tuple(sorted(options.items()))
        self._kwargs = {role: {name: options[name] for name in names}
                        for role, names in remedy.routes.items()}
        self._hash = hash((remedy.name, id(remedy), self.options))

    @property
    def name(self) -> str:
        return self.remedy.name

    def kwargs(self, role: str) -> dict:
        """The options taken by the record's callable ``role`` ("k_matrix", "kept", ...)."""
        return self._kwargs.get(role, {})

    def as_dict(self) -> dict:
        return dict(self.options)

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return isinstance(other, BackwardSpec) and self.remedy is other.remedy and self.options == other.options

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options)
        return f"BackwardSpec({self.name!r}{', ' if opts else ''}{opts})"


_CACHE: dict = {}


def forget_specs() -> None:
    """Drop cached specs and call plans (called when a remedy is (re-)registered)."""
    _CACHE.clear()
    _PLANS.clear()


def _eigh_form_error(name: str) -> ValueError:
    return ValueError(
        f"backward={name!r} applies to matrix functions (svdlib.sqrtm, inv_sqrtm, powm), whose "
        "gradient it forms directly; a loss on the eigenvectors of svdlib.eigh has no such form: "
        f"choose one of {sorted(n for n, r in _registry.BACKWARDS.items() if r.has_eigh_form)}")


def backward_spec(backward, options: Mapping[str, Any] | None = None, *, shift: float = 0.0,
                  iterations: int | None = None, use: str = "matrix_function") -> BackwardSpec:
    """Validate ``backward`` and its ``options`` once and return the :class:`BackwardSpec`.

    Parameters
    ----------
    backward : str, Remedy or BackwardSpec
        A name of :data:`svdlib.BACKWARDS`, a record, or an already resolved spec (returned
        unchanged when no options are given).
    options : mapping, optional
        The remedy's options. Unknown names raise ValueError naming the remedy and its valid
        options; renamed options are accepted with a DeprecationWarning.
    shift : float
        The public call's ``eps`` (diagonal shift); see the module docstring for the floor rule.
    iterations : int, optional
        The public call's ``iterations`` when it is routed to the remedy
        (:func:`iterations_target`).
    use : {"eigh", "matrix_function"}
        "eigh" refuses remedies without an eigendecomposition backward (divided_difference).
    """
    options = {} if options is None else options
    if isinstance(backward, BackwardSpec):
        if options or iterations is not None:
            raise ValueError("pass options either in the BackwardSpec or as keywords, not both")
        spec = backward
    else:
        try:
            key = (backward, shift) if not options and iterations is None else \
                (backward, shift, tuple(sorted(options.items())), iterations)
            spec = _CACHE.get(key)
        except TypeError:  # an unhashable option value: resolve without the cache
            key, spec = None, None
        if spec is None:
            spec = _resolve(backward, options, shift, iterations)
            if key is not None:
                _CACHE[key] = spec
    if use == "eigh" and not spec.remedy.has_eigh_form:
        raise _eigh_form_error(spec.name)
    if use not in USES:
        raise ValueError(f"use must be one of {USES}, got {use!r}")
    return spec


def _resolve(backward, options: Mapping[str, Any], shift: float, iterations: int | None) -> BackwardSpec:
    remedy = _registry.lookup(backward) if isinstance(backward, str) else backward
    if not hasattr(remedy, "routes"):
        raise ValueError(f"backward must be a name of svdlib.BACKWARDS or a Remedy, got {backward!r}")
    name = remedy.name
    valid = list(remedy.defaults)
    given: dict[str, Any] = {}
    for key, value in options.items():
        if key in remedy.renamed:
            new = remedy.renamed[key]
            warnings.warn(f"option {key!r} of backward={name!r} is deprecated; use {new!r} "
                          "(see CHANGELOG.md)", DeprecationWarning, stacklevel=5)
            if new in options:
                raise ValueError(f"backward={name!r}: give {new!r} or its old name {key!r}, not both")
            key = new
        given[key] = value
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for backward={name!r}; valid options: {valid or 'none'}")
    if iterations is not None:
        if "iterations" not in remedy.defaults:
            raise ValueError(f"backward={name!r} has no 'iterations' option")
        if "iterations" in given and given["iterations"] != iterations:
            raise ValueError(f"backward={name!r}: iterations={iterations} and options "
                             f"iterations={given['iterations']} disagree")
        given["iterations"] = iterations
    floor = remedy.inherits_shift
    if floor is not None and floor not in given and shift > 0:
        given[floor] = shift
    resolved = {}
    for key, default in remedy.defaults.items():
        value = given.get(key, default)
        resolved[key] = remedy.checks[key](value, f"backward={name!r}: option {key}")
    return BackwardSpec(remedy, resolved)


# ----------------------------------------------------------------------------- public keywords
def iterations_target(method: str, solver: str, backward) -> str | None:
    """Where the public ``iterations`` goes: "newton_schulz", "solver", "remedy" or None."""
    if method == "newton_schulz":
        return "newton_schulz"
    if solvers.is_differentiable(solver):
        return "solver"
    remedy = backward.remedy if isinstance(backward, BackwardSpec) else _registry.BACKWARDS.get(backward)
    if remedy is not None and "iterations" in remedy.defaults:
        return "remedy"
    return None


def _compile_flag(value, name):
    if not (value == "auto" or isinstance(value, bool)):
        raise ValueError(f"{name} must be True, False or 'auto', got {value!r}")
    return value


def _solver_name(value, name):
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a solver name (str), got {value!r}")
    return solvers.canonical_name(value)


#: The keywords of the matrix functions besides the remedy's options, with their checks.
MATRIX_FUNCTION_KEYWORDS = {
    "eps": real(0.0),
    "min_eigenvalue": optional(real(0.0)),
    "solver": _solver_name,
    "compute_dtype": compute_dtype_option,
    "iterations": optional(integer(1)),
    "compile": _compile_flag,
}


class CallPlan(NamedTuple):
    """Every argument of one public call, checked and routed (:func:`call_plan`)."""

    spec: BackwardSpec
    solver: str                        # canonical name, or "auto"
    differentiable: bool               # autograd through the solver, no remedy
    eps: float
    min_eigenvalue: float | None
    solver_iterations: int | None      # for a differentiable solver
    method_iterations: int | None      # for method="newton_schulz"
    compile: bool | str


_PLANS: dict = {}


def call_plan(method: str, backward, solver: str, eps, min_eigenvalue, iterations, compile,
              options: Mapping[str, Any]) -> CallPlan:
    """Check and route the arguments of :func:`svdlib.eigh` (``method=None``) or of a matrix
    function (``method`` "eigh" or "newton_schulz"), once per distinct set of arguments.

    Applies the shift-and-floor and iterations rules of this module; the result is cached, so a
    training loop that repeats a call pays a dictionary lookup.
    """
    try:
        key = (method, backward, solver, eps, min_eigenvalue, iterations, compile,
               tuple(sorted(options.items())) if options else ())
        plan = _PLANS.get(key)
    except TypeError:  # an unhashable argument: check without the cache
        key, plan = None, None
    if plan is not None:
        return plan
    if method not in (None, "eigh", "newton_schulz"):
        raise ValueError(f"unknown method {method!r}; expected one of ('eigh', 'newton_schulz')")
    eps = MATRIX_FUNCTION_KEYWORDS["eps"](eps, "eps")
    min_eigenvalue = MATRIX_FUNCTION_KEYWORDS["min_eigenvalue"](min_eigenvalue, "min_eigenvalue")
    iterations = MATRIX_FUNCTION_KEYWORDS["iterations"](iterations, "iterations")
    compile = MATRIX_FUNCTION_KEYWORDS["compile"](compile, "compile")
    solver = MATRIX_FUNCTION_KEYWORDS["solver"](solver, "solver")
    differentiable = solvers.is_differentiable(solver)
    target = iterations_target(method or "eigh", solver, backward)
    use = "eigh" if method is None and not differentiable else "matrix_function"
    spec = backward_spec(backward, options, shift=eps, use=use,
                         iterations=iterations if target == "remedy" else None)
    plan = CallPlan(spec, solver, differentiable, eps, min_eigenvalue,
                    iterations if target == "solver" else None,
                    iterations if target == "newton_schulz" else None, compile)
    if key is not None:
        _PLANS[key] = plan
    return plan


def check_matrix_function_options(method: str, backward, options: Mapping[str, Any], *,
                                  extra: Mapping[str, Any] | None = None) -> BackwardSpec:
    """Validate the keyword arguments a layer or a config hands to a matrix function.

    ``options`` mixes the matrix-function keywords (:data:`MATRIX_FUNCTION_KEYWORDS`: eps,
    min_eigenvalue, solver, compute_dtype, iterations, compile) and the remedy's options; each
    is checked as the public call would check it, so a bad value fails where it is written (a
    layer's constructor, a config file) instead of at the first backward. ``extra`` holds
    keywords the caller sets itself (e.g. a layer's ``eps``). Returns the remedy's spec.
    """
    if method not in ("eigh", "newton_schulz"):
        raise ValueError(f"method must be one of ('eigh', 'newton_schulz'), got {method!r}")
    values = {**(extra or {}), **options}
    keywords = {key: values[key] for key in MATRIX_FUNCTION_KEYWORDS if key in values}
    if "compute_dtype" in keywords:
        MATRIX_FUNCTION_KEYWORDS["compute_dtype"](keywords.pop("compute_dtype"), "compute_dtype")
    remedy_options = {k: v for k, v in options.items() if k not in MATRIX_FUNCTION_KEYWORDS}
    return call_plan(method, backward, keywords.get("solver", "auto"), keywords.get("eps", 0.0),
                     keywords.get("min_eigenvalue"), keywords.get("iterations"),
                     keywords.get("compile", "auto"), remedy_options).spec
