"""Which implementation of a kernel runs for which array type (numpy today, CuPy later).

A kernel registers its numpy implementation under a name; an implementation for another array
type (a CuPy one, say) registers under the same name with its type, and the graph layer calls
``lookup(name, *arrays)(*arrays, ...)``, never a second copy of the graph code (dask's
``dispatch.py``).

Examples
--------
>>> class Tagged(np.ndarray): ...
>>> _ = register("double", np.ndarray, lambda a: 2 * a)
>>> _ = register("double", Tagged, lambda a: "tagged")
>>> lookup("double", np.ones(2))(np.ones(2))
array([2., 2.])
>>> lookup("double", np.ones(2).view(Tagged))(None)
'tagged'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

__all__ = ["lookup", "register", "registered"]

F = TypeVar("F", bound=Callable[..., Any])

_REGISTRY: dict[str, dict[type, Callable[..., Any]]] = {}


def register(name: str, array_type: type, func: F) -> F:
    """Register ``func`` as kernel ``name`` for arrays of ``array_type`` (``np.ndarray``: the
    default implementation). Registering a type again replaces its function; returns ``func``."""
    if not isinstance(array_type, type):
        raise TypeError(f"array_type must be a type, got {array_type!r}")
    _REGISTRY.setdefault(name, {})[array_type] = func
    return func


def lookup(name: str, *arrays: object) -> Callable[..., Any]:
    """The implementation of kernel ``name`` for ``arrays``: the first registered non-numpy type
    that one of the arrays is an instance of (arrays in order, then types in registration
    order), else the numpy implementation."""
    impls = _REGISTRY.get(name)
    if not impls:
        raise KeyError(f"no kernel registered as {name!r}")
    for array in arrays:
        for array_type, func in impls.items():
            if array_type is not np.ndarray and isinstance(array, array_type):
                return func
    if np.ndarray not in impls:
        raise KeyError(f"kernel {name!r} has no numpy implementation")
    return impls[np.ndarray]


def registered(name: str) -> tuple[type, ...]:
    """The array types kernel ``name`` has an implementation for (registration order)."""
    return tuple(_REGISTRY.get(name, {}))
