"""``coaddx diff``: PSF-match and subtract two exposures (ImagePsfMatch / SnapPsfMatch)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from coaddx.cli.options import add_config_flags
from coaddx.cli.summary import summary
from coaddx.constants import IQR_TO_SIGMA
from coaddx.diffim.config import PsfMatchConfig, snap_config
from coaddx.diffim.subtract import subtract
from coaddx.io.fits.exposure import read_exposure, write_exposure

__all__ = ["add_parser", "run"]

#: sigma of a normal distribution per median absolute deviation (the MAD is half the IQR)
_MAD_TO_SIGMA = 2 * IQR_TO_SIGMA


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "diff",
        help="PSF-match and subtract two exposures (ImagePsfMatch)",
        description="Fit an Alard-Lupton (or delta-function) PSF-matching kernel on "
        "stars of SCIENCE, convolve TEMPLATE with it and write SCIENCE - matched "
        "template as a calexp FITS file (the template is warped first if needed).",
    )
    p.add_argument("template", type=Path)
    p.add_argument("science", type=Path)
    p.add_argument("out", type=Path, help="difference image (coaddx calexp FITS)")
    p.add_argument("--snap", action="store_true", help="SnapPsfMatch preset (two snaps of a visit)")
    config = add_config_flags(
        p,
        PsfMatchConfig,
        ["basis", "spatial_kernel_order", "fit_for_background", "convolve_template"],
        flags={"spatial_kernel_order": "--spatial-order", "fit_for_background": "--fit-background"},
        helps={
            "basis": "kernel basis",
            "spatial_kernel_order": "order of the kernel's spatial variation",
            "fit_for_background": "fit a differential background with the kernel",
            "convolve_template": "convolve the template (--no-convolve-template: the science)",
        },
    )
    p.add_argument(
        "--convolve-science",
        dest=f"{PsfMatchConfig.__name__}.convolve_template",
        action="store_false",
        default=argparse.SUPPRESS,
        help="convolve the science image instead of the template",
    )
    p.set_defaults(psf_match_config=config)
    return p


def run(args: argparse.Namespace) -> int:
    flags = args.psf_match_config
    if args.snap:
        basis = flags.values(args).get("basis")
        config = flags.build(args, snap_config(basis) if basis else snap_config())
    else:
        config = flags.build(args)
    t0 = time.perf_counter()
    result = subtract(read_exposure(args.template), read_exposure(args.science), config)
    write_exposure(result.difference, args.out)
    ny, nx = result.difference.shape
    z = result.difference.image / np.sqrt(result.difference.variance)
    z = z[np.isfinite(z)]
    ksum = result.kernel.kernel_sum(nx / 2, ny / 2)
    rows = [
        (
            "kernel",
            f"{config.basis}, {result.kernel.size} px, spatial order "
            f"{config.spatial_kernel_order}, sum {ksum:.4f}",
        ),
        ("candidates", f"{len(result.candidates)} offered, {result.info.n_used} used"),
        (
            "difference",
            f"{ny} x {nx}, robust sigma of D/sqrt(var) "
            f"{_MAD_TO_SIGMA * np.median(np.abs(z - np.median(z))):.3f}",
        ),
        ("time", f"{time.perf_counter() - t0:.1f} s"),
        ("written", str(args.out)),
    ]
    print(summary(rows))
    return 0
