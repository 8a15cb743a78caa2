"""``coaddx export-fits``: write a coadd store as LSST-style FITS, chunk by chunk."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from coaddx.cli.client import add_runtime_flags, open_client
from coaddx.cli.summary import summary
from coaddx.coadd.export import export_fits
from coaddx.errors import CoaddxError
from coaddx.runtime.cluster import compute_with_progress
from coaddx.runtime.diagnostics import format_bytes

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export-fits",
        help="write a coadd store as LSST-style FITS",
        description="Write the IMAGE, MASK (MP_* keywords) and VARIANCE HDUs "
        "(and N_IMAGE) of a coadd store with its WCS, chunk by chunk from the "
        "workers into a temporary file renamed into place, then the PSF (CoaddPsf at the "
        "patch centre) and PSF_FWHM HDUs when the coadd has PSF products.",
    )
    p.add_argument("coadd", type=Path, help="coadd store (.zarr)")
    p.add_argument("out", type=Path, help="FITS file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing FITS file")
    add_runtime_flags(p)
    return p


def run(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.overwrite:
        raise CoaddxError(f"{args.out} exists; pass --overwrite to replace it")
    t0 = time.perf_counter()
    with open_client(args) as client:
        export_fits(
            args.coadd,
            args.out,
            overwrite=args.overwrite,
            compute=lambda d: compute_with_progress(client, d, show=not args.no_progress),
        )
    dt = time.perf_counter() - t0
    rows = [
        ("written", f"{args.out} ({format_bytes(args.out.stat().st_size)})"),
        ("time", f"{dt:.2f} s"),
    ]
    print(summary(rows))
    return 0
