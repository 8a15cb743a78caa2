"""The ``coaddx`` command line: the parser and the dispatch. Each command lives in its own
module (:mod:`coaddx.cli.simulate`, ``calibrate``, ``warp``, ``diff``, ``assemble``, ``demo``,
``export``); their flags are generated from the config dataclasses (:mod:`coaddx.cli.options`).

Exit status: 0 done, 2 a user error (one line on stderr, no traceback), 130 interrupted by
SIGINT (Ctrl-C), 143 by SIGTERM. Both signals stop the run the same way: the exception
:class:`Interrupted` unwinds the command, which cancels its tasks, closes its cluster with short
timeouts and removes its temporary outputs; one line says so. A second signal during that
clean-up ends the process at once."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dask

from coaddx._version import __version__
from coaddx.cli import (
    assemble,
    calibrate,
    check,
    demo,
    diff,
    export,
    precompile,
    simulate,
    warp,
)
from coaddx.cli.client import check_runtime_flags
from coaddx.errors import CoaddxError
from coaddx.runtime.malloc import tune_malloc

__all__ = ["COMMANDS", "Interrupted", "main"]

#: command -> the function that runs it (each module's ``run``), in the order of ``--help``.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "simulate": simulate.run,
    "calibrate": calibrate.run,
    "warp": warp.run,
    "diff": diff.run,
    "assemble": assemble.run,
    "demo": demo.run,
    "export-fits": export.run,
    "check": check.run,
    "precompile": precompile.run,
}

_PARSERS = (simulate, calibrate, warp, diff, assemble, demo, export, check, precompile)


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


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived (``signum``); a ``KeyboardInterrupt``, so every clean-up
    that handles Ctrl-C handles SIGTERM the same way."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _force_exit(signum: int, frame: Any) -> None:
    os._exit(128 + signum)


def _interrupt(signum: int, frame: Any) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _force_exit)
    # the clean-up closes workers the signal may have killed: dask's complaints are noise
    logging.disable(logging.CRITICAL)
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` for the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in saved:
        signal.signal(sig, _interrupt)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        logging.disable(logging.NOTSET)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``coaddx`` with ``argv`` (default: ``sys.argv[1:]``); a :class:`CoaddxError` is
    printed as one line and returns 2; SIGINT / SIGTERM return 130 / 143 after a clean stop."""
    args = parser().parse_args(argv)
    tune_malloc()
    if getattr(args, "memory_per_task", None):
        dask.config.set({"coaddx.memory-per-task": args.memory_per_task})
    try:
        with _signals():
            try:
                if hasattr(args, "workers"):
                    check_runtime_flags(args)
                return COMMANDS[args.command](args)
            except KeyboardInterrupt as exc:
                signum = getattr(exc, "signum", signal.SIGINT)
                name = signal.Signals(signum).name
                print(f"coaddx {args.command}: interrupted by {name}; stopped", file=sys.stderr)
                return 128 + signum
    except CoaddxError as exc:
        print(f"coaddx {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
