"""``coaddx simulate``: write a simulated patch (warp store, calexp FITS files, truth)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from coaddx.cli.options import ConfigFlags, add_config_flags
from coaddx.cli.summary import progress_bar
from coaddx.sim.simulate import simulate

__all__ = ["add_parser", "add_sim_flags", "run"]


def add_sim_flags(p: argparse.ArgumentParser) -> ConfigFlags:
    """The simulation flags (shared with ``coaddx demo``), from :func:`coaddx.simulate`'s
    signature; ``.values(args)`` gives its keyword arguments."""
    return add_config_flags(
        p,
        simulate,
        ["n_visits", "shape", "seed", "psf", "calexps", "overwrite"],
        flags={"n_visits": "--visits", "shape": "--size"},
        helps={
            "n_visits": "number of visits",
            "shape": "patch side in pixels (or rows, columns)",
            "seed": "random seed",
            "psf": "PSF profile",
            "calexps": "write the calexp FITS files",
            "overwrite": "replace existing outputs",
        },
    )


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "simulate",
        help="simulate a multi-visit data set with ground truth",
        description="Write a simulated patch: warp store, calexp FITS files and truth.",
    )
    p.add_argument("out", type=Path, help="output directory")
    sim_flags = add_sim_flags(p)
    error_flags = add_config_flags(
        p,
        simulate,
        ["wcs_error", "zero_point_error"],
        helps={
            "wcs_error": "shift the calexp header WCSs by this many arcsec (with a rotation "
            "and scale error; for coaddx calibrate to remove)",
            "zero_point_error": "perturb each calexp's PHOTCALIB by a normal draw of this many mag",
        },
    )
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(sim_flags=sim_flags, sim_error_flags=error_flags)
    return p


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    sim = simulate(
        args.out,
        **args.sim_flags.values(args),
        **args.sim_error_flags.values(args),
        progress=None if args.no_progress else progress_bar("simulate", "visits"),
    )
    ny, nx = sim.patch.shape
    print(
        f"simulated {len(sim.visits)} visits of {ny} x {nx} in "
        f"{time.perf_counter() - t0:.1f} s -> {sim.out}"
    )
    if any(args.sim_error_flags.values(args).values()):
        print(f"reference catalogue of the true stars: {sim.refcat}")
    return 0
