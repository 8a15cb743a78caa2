"""Checks that step configurations run in ``__post_init__``: each raises
:class:`~coaddx.errors.ConfigError` naming the config class, the field and what is allowed.

Shared by every step's ``config.py`` (``coaddx.coadd.config``, ``coaddx.coadd.compare_warp.config``,
...), so a field is validated, and its error worded, the same way everywhere.

Examples
--------
>>> check_number(2.5, "AssembleConfig", "clip_iter", 1, 100, integer=True)
Traceback (most recent call last):
...
coaddx.errors.ConfigError: AssembleConfig.clip_iter: must be an integer in [1, 100], got 2.5
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from coaddx.errors import ConfigError

__all__ = [
    "check",
    "check_bool",
    "check_choice",
    "check_number",
    "check_numbers",
    "check_positive",
    "plane_names",
]


def check(cond: bool, cls: str, name: str, msg: str) -> None:
    """Raise ``ConfigError("<cls>.<name>: <msg>")`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"{cls}.{name}: {msg}")


def check_number(
    value: Any, cls: str, name: str, lo: float, hi: float = float("inf"), integer: bool = False
) -> None:
    """``value`` is a number (an integer when ``integer``; never a bool) in ``[lo, hi]``."""
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and lo <= value <= hi
    check(
        ok,
        cls,
        name,
        f"must be {'an integer' if integer else 'a number'} in [{lo}, {hi}], got {value!r}",
    )


def check_positive(value: Any, cls: str, name: str, hi: float = math.inf) -> None:
    """``value`` is a number (never a bool) with ``0 < value <= hi``; NaN is refused."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= hi
    check(ok, cls, name, f"must be a number > 0 (and <= {hi}), got {value!r}")


def check_numbers(
    value: Any, cls: str, name: str, lo: float, hi: float = math.inf, integer: bool = False
) -> tuple[Any, ...]:
    """A sequence of numbers, each as :func:`check_number`; returned as a tuple."""
    try:
        out = tuple(value)
    except TypeError:
        raise ConfigError(f"{cls}.{name}: expected a sequence of numbers, got {value!r}") from None
    kind = "integers" if integer else "numbers"
    for v in out:
        ok = (
            isinstance(v, int if integer else (int, float))
            and not isinstance(v, bool)
            and lo <= v <= hi
        )
        check(ok, cls, name, f"must hold {kind} in [{lo}, {hi}], got {out!r}")
    return out


def check_bool(value: Any, cls: str, name: str) -> None:
    """``value`` is ``True`` or ``False`` (not 0, 1 or a string)."""
    check(isinstance(value, bool), cls, name, f"must be True or False, got {value!r}")


def check_choice(value: Any, cls: str, name: str, choices: Collection[Any]) -> None:
    """``value`` is one of ``choices`` (of the same type: ``True`` is not ``1``)."""
    ok = any(type(value) is type(c) and value == c for c in choices)
    check(ok, cls, name, f"must be one of {tuple(choices)}, got {value!r}")


def plane_names(
    value: Any, cls: str, name: str, known: Collection[str] | None = None
) -> tuple[str, ...]:
    """Mask-plane names as a tuple (one name may be given as a string).

    With ``known`` (the standard planes, :data:`coaddx.model.masks.DEFAULT_MASK_PLANES`, plus
    any the config itself adds), a name outside it is refused: a misspelt plane would
    otherwise match no bit and silently do nothing.
    """
    if isinstance(value, str):
        value = (value,)
    try:
        out = tuple(value)
    except TypeError:
        raise ConfigError(
            f"{cls}.{name}: expected a sequence of plane names, got {value!r}"
        ) from None
    check(
        all(isinstance(p, str) and p for p in out),
        cls,
        name,
        f"plane names must be non-empty strings, got {out!r}",
    )
    if known is not None:
        unknown = [p for p in out if p not in known]
        check(
            not unknown,
            cls,
            name,
            f"unknown mask plane(s) {unknown}; known planes: {', '.join(sorted(known))}",
        )
    return out
