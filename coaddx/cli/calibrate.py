"""``coaddx calibrate``: calibrate calexps against a reference catalogue (CalibrateTask)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np

from coaddx.calibrate.config import CalibrateConfig
from coaddx.calibrate.exposures import calibrate_exposures
from coaddx.cli.client import add_runtime_flags, open_client
from coaddx.cli.options import add_config_flags
from coaddx.cli.summary import memory_rows, summary
from coaddx.errors import CoaddxError
from coaddx.io.catalog import read_reference_catalog
from coaddx.plan import calibrate_task_bytes
from coaddx.runtime.cluster import WorkerMemory, compute_with_progress
from coaddx.runtime.diagnostics import PeakMemory, Stages, format_bytes
from coaddx.warp.inputs import warp_inputs

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "calibrate",
        help="fit each calexp's WCS and zero point to a reference catalogue (CalibrateTask)",
        description="Detect and measure sources, fit a TAN-SIP WCS to the reference stars and "
        "the photometric zero point, one parallel task per exposure; write OUT_DIR/<name>.fits "
        "(the calibrated calexp) and OUT_DIR/<name>.sources.fits (its sources).",
    )
    p.add_argument("out_dir", type=Path, help="folder for the calibrated calexps")
    p.add_argument("exposures", type=Path, nargs="+", help="calexp FITS files")
    p.add_argument(
        "--refcat",
        type=Path,
        required=True,
        help="reference catalogue (FITS, ECSV or Parquet; Gaia-like columns by default)",
    )
    cat = p.add_argument_group("reference catalogue columns")
    cat.add_argument("--ra-col", default="ra", help="right ascension (default: %(default)s)")
    cat.add_argument("--dec-col", default="dec", help="declination (default: %(default)s)")
    cat.add_argument(
        "--mag-col", default="phot_g_mean_mag", help="magnitude (default: %(default)s)"
    )
    cat.add_argument("--mag-err-col", help="magnitude error (default: none)")
    cat.add_argument("--pm-ra-col", help="proper motion in RA cos(dec), mas/yr (default: none)")
    cat.add_argument("--pm-dec-col", help="proper motion in Dec, mas/yr (default: none)")
    cat.add_argument("--epoch", type=float, help="catalogue epoch (Julian year)")
    config = add_config_flags(
        p,
        CalibrateConfig,
        [
            "astrometry_threshold",
            "detection_threshold",
            "match_radius_pix",
            "max_offset_pix",
            "max_rotation_deg",
            "sip_order",
            "min_matches",
            "aperture_radius",
            "min_snr",
            "reference_weights",
            "photometry_flux",
            "require_astrometry",
            "require_photo_cal",
        ],
    )
    reuse = add_config_flags(
        p,
        calibrate_exposures,
        ["reuse"],
        helps={"reuse": "skip exposures already calibrated in OUT_DIR (--no-reuse: fail)"},
    )
    add_runtime_flags(p)
    p.set_defaults(calibrate_config=config, calibrate_reuse=reuse)
    return p


def _median(rows: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in rows if math.isfinite(r[key])]
    return float(np.median(values)) if values else float("nan")


def _planned_task_bytes(exposures: list[Path]) -> int:
    """The plan of the largest exposure's task, from the headers that can be read."""
    shapes = []
    for path in exposures:
        try:
            shapes += [item.shape for item in warp_inputs([path])]
        except CoaddxError:
            continue  # calibrate_exposures reports it
    return max((calibrate_task_bytes(s) for s in shapes), default=0)


def run(args: argparse.Namespace) -> int:
    config = args.calibrate_config.build(args)
    stages = Stages()
    with stages("read catalogue + headers"):
        ref = read_reference_catalog(
            args.refcat,
            ra=args.ra_col,
            dec=args.dec_col,
            mag=args.mag_col,
            mag_err=args.mag_err_col,
            pm_ra=args.pm_ra_col,
            pm_dec=args.pm_dec_col,
            epoch=args.epoch,
        )
        per_task = _planned_task_bytes(args.exposures)
    with open_client(args) as client, PeakMemory() as mem:
        with stages("calibrate + write"), WorkerMemory(client) as workers:
            result = calibrate_exposures(
                args.exposures,
                ref,
                args.out_dir,
                config=config,
                **args.calibrate_reuse.values(args),
                compute=lambda *tasks: compute_with_progress(
                    client, list(tasks), show=not args.no_progress
                ),
            )
        memory = memory_rows(workers, client, lambda t, k, b: b + t * per_task)
    rows = list(result.summaries)
    dt = stages.times["calibrate + write"]
    per_stage: dict[str, list[float]] = {}
    for r in rows:
        for name, seconds in r["timings"].items():
            per_stage.setdefault(name, []).append(seconds)
    table = [
        ("calibrated", f"{len(rows)} exposures in {dt:.1f} s"),
        ("reused", f"{len(result.reused)} exposures already calibrated"),
        ("reference stars", f"{len(ref)} from {args.refcat}"),
        (
            "astrometry",
            f'median rms {_median(rows, "astrometry_rms_arcsec"):.3f}" '
            f"over {int(np.median([r['n_astrometry'] for r in rows])) if rows else 0} matches",
        ),
        (
            "zero point",
            f"median {_median(rows, 'zero_point'):.3f} mag (of one count), formal error "
            f"{_median(rows, 'zero_point_err') * 1000:.1f} mmag",
        ),
        *[(f"time: {name}", f"{np.mean(v):.2f} s per exposure") for name, v in per_stage.items()],
        *[(f"time: {k}", f"{v:.2f} s") for k, v in stages.times.items()],
        *memory,
        ("client memory", f"{format_bytes(mem.peak)} (+{format_bytes(mem.added)})"),
        ("output", str(args.out_dir)),
    ]
    for source, why in result.failed.items():
        table.append((f"FAILED {Path(source).name}", why))
    print(summary(table))
    return 1 if result.failed else 0
