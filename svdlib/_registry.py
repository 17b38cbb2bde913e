"""Where remedy records live: the dict behind :data:`svdlib.BACKWARDS`.

A leaf module so that the backward stage (:mod:`svdlib.fused`), the option checks
(:mod:`svdlib._options`) and the records themselves (:mod:`svdlib.remedies`, which fills it
when svdlib is imported) can all read it without importing each other in a circle
(docs/architecture.md, "Import order").
"""
from __future__ import annotations

__all__ = ["BACKWARDS", "lookup"]

#: name -> :class:`svdlib.remedies.Remedy`, in registration order.
BACKWARDS: dict = {}


def lookup(name):
    """The record registered as ``name``; ValueError listing the valid names otherwise."""
    try:
        return BACKWARDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown backward {name!r}; expected one of {sorted(BACKWARDS)}") from None
