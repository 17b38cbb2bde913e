"""Where remedy records live: the dict behind :data:`svdlib.BACKWARDS`.

A leaf module so that the backward stage (:mod:`svdlib.fused`), the option checks
(:mod:`svdlib._options`) and the records themselves (:mod:`svdlib.remedies`, which fills it
when svdlib is imported) can all read it without importing each other in a circle
(docs/architecture.md, "Import order").
"""
from __future__ import annotations

__all__ = ["BACKWARDS", "DEFAULT_BACKWARD", "lookup"]

#: name -> :class:`svdlib.remedies.Remedy`, in registration order.
BACKWARDS: dict = {}

#: Default backward of :func:`svdlib.eigh`, the matrix functions (sqrtm, inv_sqrtm, powm), the
#: layers in svdlib.nn and the experiment config: the papers' SVD-Taylor. "divided_difference"
#: is exact and as cheap, but in training at our scale it was never better than Taylor and once
#: worse (README, "Which backward by default"). Defined here only; every default refers to it.
DEFAULT_BACKWARD = "taylor"


def lookup(name):
    """The record registered as ``name``; ValueError listing the valid names otherwise."""
    try:
        return BACKWARDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown backward {name!r}; expected one of {sorted(BACKWARDS)}") from None
