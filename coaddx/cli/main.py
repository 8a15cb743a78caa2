"""The ``coaddx`` command line: the parser and the dispatch. Each command lives in its own
module (:mod:`coaddx.cli.simulate`, ``calibrate``, ``warp``, ``diff``, ``assemble``, ``demo``,
``export``); their flags are generated from the config dataclasses (:mod:`coaddx.cli.options`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import dask

from coaddx._version import __version__
from coaddx.cli import assemble, calibrate, demo, diff, export, simulate, warp
from coaddx.errors import CoaddxError
from coaddx.runtime.malloc import tune_malloc

__all__ = ["COMMANDS", "main"]

#: command -> the function that runs it (each module's ``run``), in the order of ``--help``.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "simulate": simulate.run,
    "calibrate": calibrate.run,
    "warp": warp.run,
    "diff": diff.run,
    "assemble": assemble.run,
    "demo": demo.run,
    "export-fits": export.run,
}

_PARSERS = (simulate, calibrate, warp, diff, assemble, demo, export)


def parser() -> argparse.ArgumentParser:
    """The ``coaddx`` argument parser, a sub-parser per command."""
    p = argparse.ArgumentParser(
        prog="coaddx", description="Deep astronomical coadds with the LSST algorithms on dask."
    )
    p.add_argument("--version", action="version", version=f"coaddx {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _PARSERS:
        module.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``coaddx`` with ``argv`` (default: ``sys.argv[1:]``); a :class:`CoaddxError` is
    printed as one line and returns 2."""
    args = parser().parse_args(argv)
    tune_malloc()
    if getattr(args, "memory_per_task", None):
        dask.config.set({"coaddx.memory-per-task": args.memory_per_task})
    try:
        return COMMANDS[args.command](args)
    except CoaddxError as exc:
        print(f"coaddx {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
