"""``coaddx precompile``: fill the numba cache for the demo's kernels before the first run.

It runs the demo's steps (simulate with calexps, warp, MEANCLIP and mean stacks) on a tiny
patch, so the kernels are compiled for exactly the argument types a real run uses, and then
records the sources they were compiled from (:func:`coaddx.kernels.precompiled`). ``coaddx
demo --background-compile`` starts it in the background when the cache is cold: the simulator
runs in the foreground while the background compiles the warping and stacking kernels, and the
demo waits for each step's kernels (``STEPS``) before it starts that step (off by default: on
two busy cores it made the first run slower than compiling in the foreground).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from coaddx.coadd.assemble import assemble
from coaddx.coadd.config import AssembleConfig
from coaddx.io.zarr.coadd_store import write_coadd
from coaddx.kernels import compile_seconds, mark_precompiled, precompiled
from coaddx.sim.simulate import simulate
from coaddx.warp.make_warps import make_warps
from coaddx.warp.store import open_warps

__all__ = ["STEPS", "Background", "add_parser", "precompile", "run"]

STEPS = ("simulate", "warp", "assemble")
_CHILD = (
    "import sys; from coaddx.cli import main; "
    "sys.exit(main(['precompile', '--status', sys.argv[1]]))"
)
_SHAPE = (160, 160)
_VISITS = 3


def precompile(work: Path, status: Path | None = None) -> float:
    """Run the demo's steps on a tiny patch under ``work``; returns the seconds it took.
    After each of :data:`STEPS`, its name is appended to ``status`` (when given)."""
    t0 = time.perf_counter()

    def done(step: str) -> None:
        if status is not None:
            with open(status, "a") as f:
                f.write(step + "\n")

    sim = simulate(work / "sim", n_visits=_VISITS, shape=_SHAPE, overwrite=True, progress=False)
    done("simulate")
    store = work / "warps.zarr"
    make_warps(sim.calexps, sim.patch, store)
    done("warp")
    warps = open_warps(store)
    write_coadd(assemble(warps), work / "coadd.zarr", overwrite=True)
    assemble(warps, AssembleConfig(statistic="mean", interp=None))["image"].compute()
    seconds = time.perf_counter() - t0
    mark_precompiled(seconds)
    done("assemble")
    return seconds


class Background:
    """``coaddx precompile`` in a child process (lower priority), with per-step waits."""

    def __init__(self, log: Path) -> None:
        self.status = log.with_suffix(".steps")
        self.status.unlink(missing_ok=True)
        with open(log, "w") as out:
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(self.status)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=lambda: os.nice(5),  # the foreground step comes first
            )

    def wait_for(self, step: str, timeout: float = 300.0) -> float:
        """Wait until the child has compiled ``step``'s kernels (or ended); the seconds waited."""
        t0 = time.perf_counter()
        while self.proc is not None and self.proc.poll() is None:
            try:
                if step in self.status.read_text().split():
                    break
            except OSError:
                pass
            if time.perf_counter() - t0 > timeout:
                break
            time.sleep(0.05)
        return time.perf_counter() - t0

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "precompile",
        help="compile the demo's numba kernels into the cache (run once after install)",
        description="Compile the kernels of simulate, warp and assemble into numba's cache "
        "(the coaddx package's __pycache__, or NUMBA_CACHE_DIR) on a tiny patch, so that the "
        "first real run does not spend its time compiling.",
    )
    p.add_argument("--force", action="store_true", help="run even if the cache is up to date")
    p.add_argument("--status", type=Path, help=argparse.SUPPRESS)
    return p


def run(args: argparse.Namespace) -> int:
    if precompiled() and not args.force:
        print("coaddx precompile: the kernel cache is up to date")
        return 0
    with tempfile.TemporaryDirectory(prefix="coaddx-precompile-") as work:
        seconds = precompile(Path(work), args.status)
    print(
        f"coaddx precompile: {seconds:.1f} s ({compile_seconds():.1f} s compiling kernels); "
        "later runs load them from the cache"
    )
    return 0
