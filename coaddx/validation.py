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

from typing import Any

from coaddx.errors import ConfigError

__all__ = ["check", "check_number", "plane_names"]


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


def plane_names(value: Any, cls: str, name: str) -> tuple[str, ...]:
    """Mask-plane names as a tuple (one name may be given as a string)."""
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
    return out
