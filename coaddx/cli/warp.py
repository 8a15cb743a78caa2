"""``coaddx warp``: warp calexps onto a patch grid into the warp store (MakeDirectWarp)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from astropy.io import fits
from astropy.wcs import WCS

from coaddx.cli.client import add_runtime_flags, open_client
from coaddx.cli.options import add_config_flags
from coaddx.cli.summary import memory_rows, summary
from coaddx.errors import InputError
from coaddx.io.zarr.warp_store import read_patch
from coaddx.kernels.warp import KERNELS
from coaddx.model.skymap import Patch
from coaddx.plan import warp_task_bytes
from coaddx.runtime.cluster import WorkerMemory, compute_with_progress
from coaddx.runtime.diagnostics import PeakMemory, Stages, format_bytes
from coaddx.warp.config import WarpConfig
from coaddx.warp.inputs import warp_inputs
from coaddx.warp.make_warps import make_warps

__all__ = ["add_parser", "run"]

_HEADER_SUFFIXES = (".fits", ".fit", ".fts", ".head", ".hdr")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "warp",
        help="warp calexps onto a patch grid (MakeDirectWarp)",
        description="Warp every exposure that overlaps the patch into the warp "
        "store, one parallel task per visit (Lanczos-3, flux conserving, nJy).",
    )
    p.add_argument("store", type=Path, help="warp store to create or extend (patch .zarr)")
    p.add_argument(
        "exposures",
        type=Path,
        nargs="+",
        help="calexp FITS files (coaddx, LSST or DECam CP layouts)",
    )
    p.add_argument(
        "--grid-from",
        type=Path,
        metavar="STORE_OR_FITS",
        help="output grid: an existing warp store, or a FITS file whose header has "
        "the WCS and NAXIS1/2 (like a SWarp header); default: STORE's own grid",
    )
    config = add_config_flags(
        p,
        WarpConfig,
        ["kernel", "interp_length", "border", "allow_mixed_bands"],
        choices={"kernel": KERNELS},
        helps={
            "allow_mixed_bands": "stack visits of different bands into one store",
            "kernel": "warping kernel",
            "interp_length": "pixels between exact evaluations of the pixel mapping",
            "border": "select exposures overlapping the patch grown by this many pixels",
        },
    )
    reuse = add_config_flags(
        p,
        make_warps,
        ["reuse"],
        helps={"reuse": "skip visits already in the store (--no-reuse: fail on them)"},
    )
    add_runtime_flags(p)
    p.set_defaults(warp_config=config, warp_reuse=reuse)
    return p


def _grid(source: Path) -> Patch:
    """The output grid: a warp store's, or a FITS header's WCS and NAXIS1/2."""
    if source.suffix.lower() in _HEADER_SUFFIXES and source.is_file():
        try:
            header = (
                fits.Header.fromtextfile(source)
                if source.suffix in (".head", ".hdr")
                else fits.getheader(source)
            )
            if "NAXIS1" not in header or "NAXIS2" not in header:
                raise InputError(f"{source}: the grid header needs NAXIS1 and NAXIS2")
            shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
            wcs = WCS(header)
        except InputError:
            raise
        except Exception as exc:  # astropy's errors for a file that is not a FITS header
            raise InputError(
                f"--grid-from {source}: not a readable FITS header with a WCS ({exc})"
            ) from exc
        return Patch.from_wcs(wcs, shape)
    return read_patch(source)


def _warp_plan(exposures: Sequence[Path], patch: Patch) -> tuple[int, int]:
    """(planned bytes of the largest visit task, detector pixels) from the headers."""
    by_visit: dict[int, list[tuple[int, int]]] = {}
    for item in warp_inputs(exposures):
        by_visit.setdefault(item.visit, []).append(item.shape)
    planned = max(warp_task_bytes(patch.shape, shapes) for shapes in by_visit.values())
    pixels = sum(ny * nx for shapes in by_visit.values() for ny, nx in shapes)
    return planned, pixels


def run(args: argparse.Namespace) -> int:
    config = args.warp_config.build(args)
    patch = _grid(args.grid_from or args.store)
    stages = Stages()
    with open_client(args) as client, PeakMemory() as mem:
        with stages("read headers + plan"):
            per_task, det_pixels = _warp_plan(args.exposures, patch)
        with stages("warp + write"), WorkerMemory(client) as workers:
            result = make_warps(
                args.exposures,
                patch,
                args.store,
                config=config,
                **args.warp_reuse.values(args),
                compute=lambda *tasks: compute_with_progress(
                    client, list(tasks), show=not args.no_progress
                ),
            )
        memory = memory_rows(workers, client, lambda t, k, b: b + t * per_task)
    dt = stages.times["warp + write"]
    ny, nx = patch.shape
    rows = [
        ("warped", f"{len(result.written)} visits onto {ny} x {nx} in {dt:.1f} s"),
        ("reused", f"{len(result.reused)} visits already in the store"),
        ("not overlapping", f"{len(result.not_overlapping)} exposures"),
        *[(f"time: {k}", f"{v:.2f} s") for k, v in stages.times.items()],
        (
            "throughput",
            (
                f"{det_pixels / 1e6 / dt:.3g} input Mpix/s "
                f"({format_bytes(per_task)} planned per visit task)"
            ),
        ),
        *memory,
        ("client memory", f"{format_bytes(mem.peak)} (+{format_bytes(mem.added)})"),
        ("store", str(args.store)),
    ]
    for visit, why in result.failed.items():
        rows.append((f"FAILED visit {visit}", why))
    print(summary(rows))
    return 1 if result.failed else 0
