"""Command-line flags generated from the config dataclasses (and function signatures).

A step's defaults live once, in its frozen config dataclass; :func:`add_config_flags` adds one
argparse flag per chosen field with that field's type, default and choices, and returns a
:class:`ConfigFlags` that builds the config from the parsed arguments. The rules:

- ``int``, ``float``, ``str`` fields take one value; ``Literal[...]`` fields, and fields with
  declared choices (the ``choices=`` argument, or ``field(metadata={"choices": ...})``), take
  one of their values.
- ``bool`` fields are ``--flag`` / ``--no-flag``.
- ``tuple`` fields take one comma-separated value (``--bad-mask-planes NO_DATA,BAD,SAT``); a
  fixed-length tuple given one value repeats it (``--subregion-size 48`` is 48 x 48,
  ``--size 512,1024`` is 512 rows x 1024 columns).
- An optional sub-config (``interp: InterpConfig | None``) is switched off with ``--no-<field>``.

Only the flags given on the command line change the config: the others keep the default of
the field (or of ``base``, so presets such as :func:`coaddx.diffim.config.snap_config` keep
theirs). The help of each flag shows the field's default.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from coaddx.errors import ConfigError

__all__ = ["ConfigFlags", "add_config_flags"]


@dataclass(frozen=True)
class _Flag:
    """One generated flag: the field it sets and how its values are read."""

    field: str
    dest: str
    convert: Callable[[Any], Any]


@dataclass(frozen=True)
class ConfigFlags:
    """The flags :func:`add_config_flags` added for ``target``; builds its config from them."""

    target: Any
    flags: tuple[_Flag, ...]

    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        """The fields given on the command line, as the config takes them."""
        out = {}
        for flag in self.flags:
            if hasattr(args, flag.dest):
                out[flag.field] = flag.convert(getattr(args, flag.dest))
        return out

    def build(self, args: argparse.Namespace, base: Any = None) -> Any:
        """``base`` (default: the config's defaults) with the given flags applied."""
        values = self.values(args)
        if base is None:
            return self.target(**values)
        return dataclasses.replace(base, **values)

    __call__ = build


def _signature(target: Any) -> dict[str, tuple[Any, Any, Mapping[str, Any]]]:
    """``name -> (type hint, default, metadata)`` of a dataclass's fields or a function's
    parameters."""
    hints = typing.get_type_hints(target)
    if dataclasses.is_dataclass(target):
        out: dict[str, tuple[Any, Any, Mapping[str, Any]]] = {}
        for f in dataclasses.fields(target):
            default = f.default
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            out[f.name] = (hints[f.name], default, f.metadata)
        return out
    params = inspect.signature(target).parameters
    return {n: (hints[n], p.default, {}) for n, p in params.items() if n in hints}


def _optional(hint: Any) -> tuple[Any, bool]:
    """``(T, True)`` for ``T | None``, else ``(hint, False)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(hint)):
            return args[0], True
    return hint, False


def _show(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    if dataclasses.is_dataclass(value):
        return "on"
    return str(value)


def _split(kind: type) -> Callable[[str], list[Any]]:
    """argparse ``type`` of one tuple token: a comma-separated list of ``kind``."""

    def convert(text: str) -> list[Any]:
        return [kind(part) for part in text.split(",") if part]

    convert.__name__ = kind.__name__  # argparse names it in "invalid int value"
    return convert


def _tuple(name: str, length: int | None) -> Callable[[list[list[Any]]], tuple[Any, ...]]:
    def convert(tokens: list[list[Any]]) -> tuple[Any, ...]:
        values = tuple(v for token in tokens for v in token)
        if length is None:
            return values
        if len(values) == 1:
            return values * length
        if len(values) != length:
            raise ConfigError(f"{name} takes 1 or {length} values, got {len(values)}")
        return values

    return convert


def _keep(value: Any) -> Any:
    return value


def _add_one(
    parser: Any,
    name: str,
    dest: str,
    spec: tuple[Any, Any, Mapping[str, Any]],
    flag: str,
    choices: Sequence[Any] | None,
    help_text: str,
) -> _Flag:
    hint, default, metadata = spec
    kind, optional = _optional(hint)
    choices = choices if choices is not None else metadata.get("choices")
    text = help_text if "default" in help_text else f"{help_text} (default: {_show(default)})"
    text = text.strip()
    common: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": text}
    metavar = flag.lstrip("-").replace("-", "_").upper()
    if dataclasses.is_dataclass(kind) and optional:
        off = flag if flag.startswith("--no-") else "--no-" + flag.lstrip("-")
        common["help"] = help_text
        parser.add_argument(off, action="store_const", const=None, **common)
        return _Flag(name, dest, _keep)
    if kind is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        return _Flag(name, dest, bool)
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        kind = type(choices[0])
    if typing.get_origin(kind) is tuple:
        args = typing.get_args(kind)
        length = None if len(args) == 2 and args[1] is Ellipsis else len(args)
        # one comma-separated token (as before the flags were generated): a variable number of
        # tokens would swallow the positional arguments that follow the flag
        parser.add_argument(flag, type=_split(args[0]), metavar=metavar, **common)
        convert = _tuple(flag, length)
        return _Flag(name, dest, lambda token: convert([token]))
    if kind not in (int, float, str):
        raise TypeError(f"no command-line flag for {name}: {hint!r}")
    if choices is not None:
        parser.add_argument(flag, type=kind, choices=tuple(choices), **common)
    else:
        parser.add_argument(flag, type=kind, metavar=metavar, **common)
    return _Flag(name, dest, _keep)


def add_config_flags(
    parser: argparse.ArgumentParser | Any,
    target: Any,
    fields: Iterable[str],
    *,
    flags: Mapping[str, str] | None = None,
    choices: Mapping[str, Sequence[Any]] | None = None,
    helps: Mapping[str, str] | None = None,
) -> ConfigFlags:
    """Add a flag per field of ``target`` to ``parser``, with the field's default and choices.

    Parameters
    ----------
    parser : argparse.ArgumentParser or argument group
    target : dataclass type or callable
        A frozen config dataclass, or a function whose keyword parameters are exposed (the
        flags then give its keyword arguments: :meth:`ConfigFlags.values`).
    fields : iterable of str
        The fields (parameters) to expose, in the order of the flags.
    flags : mapping, optional
        Field -> flag name where it is not ``--`` + the field with dashes
        (``{"fit_for_background": "--fit-background"}``).
    choices : mapping, optional
        Field -> allowed values, for fields that are not ``Literal``-typed.
    helps : mapping, optional
        Field -> help text; the default is appended unless the text speaks of it.

    Returns
    -------
    ConfigFlags
        ``flags.build(args, base=None)`` (or ``flags(args)``) is the config;
        ``flags.values(args)`` the fields given.

    Examples
    --------
    >>> from coaddx.coadd.config import AssembleConfig
    >>> p = argparse.ArgumentParser()
    >>> build = add_config_flags(p, AssembleConfig, ["statistic", "sigma_clip"])
    >>> build(p.parse_args(["--sigma-clip", "2.5"])).sigma_clip
    2.5
    """
    specs = _signature(target)
    owner = getattr(target, "__name__", "config")
    added = []
    for name in fields:
        if name not in specs:
            raise TypeError(f"{owner} has no typed field or parameter {name!r}")
        flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
        added.append(
            _add_one(
                parser,
                name,
                f"{owner}.{name}",
                specs[name],
                flag,
                (choices or {}).get(name),
                (helps or {}).get(name, ""),
            )
        )
    return ConfigFlags(target, tuple(added))
