"""Benchmark CalibrateTask (coaddx.calibrate_exposures) on 1 and 2 workers beside sep detection.

    python benchmarks/bench_calibrate.py [--exposures 32] [--workers 1,2] [--quick] [--out DIR]

Inputs (made once under ``OUT/calibrate-<n>x<rows>x<cols>`` and reused): ``coaddx.simulate``
with ``shape=(3938, 3938)`` (the patch), whose two-detector camera has detectors of exactly
4096 x 2048 pixels (rows x columns; simulate's detectors are ceil(1.04 rows) x ceil(0.52
columns) of the patch), seed 7, Moffat PSFs (FWHM 3.5-6 px), the default artifacts (cosmic rays,
streaks, transients, BAD columns), ``wcs_error=2.0`` (each header WCS shifted by 2", rotated by
up to 0.1 degree and scaled by up to 1e-3) and ``zero_point_error=0.1`` (PHOTCALIB off by 0.1
mag rms). Stars: 1,750 per 1024^2 patch pixels (``n_stars``), of which about 14 % are above
the 5-sigma detection, giving ~2,000 detected stars per 4096 x 2048 detector (printed: the
sources whose nearest true source is a star within 0.5"); galaxies at
simulate's default 500 per 1024^2. The smallest number of visits giving ``--exposures``
calexps is simulated (about 20 % of the visits have one detector only) and the first
``--exposures`` calexps are used. The reference catalogue is the simulation's
``truth/refcat.fits`` (the true stars: ``ra``, ``dec``, ``phot_g_mean_mag``), read once with
``coaddx.read_reference_catalog`` (its defaults). ``--quick``: 4 exposures of 1024 x 512
(patch 984 x 984, same star density), a smoke run of well under a minute once simulated.

Timed, one run per worker count, each on a fresh ``distributed.LocalCluster`` of W
single-threaded worker processes (``coaddx.runtime.cluster.local``, glibc malloc tuned in the
workers) whose imports and sep are warmed up first, inputs in the page cache, into a fresh
output folder: ``calibrate_exposures(paths, refcat, out_dir, reuse=False)`` with the default
``CalibrateConfig``, everything from the client's header reads and reference selection to the
last calibrated exposure and source table written. Reported: wall seconds, wall seconds per
exposure (x W: worker-seconds per exposure), exposures per second, and the stages of the task
in seconds per exposure averaged over the exposures (``read``, the ``Calibration.timings`` of
``coaddx.calibrate``: astrometry detection at 50 sigma, astrometric fit (offset search,
matching, TAN-SIP with rejection), detection + measurement at 5 sigma, photometric
calibration; ``write``). Peak resident memory of every worker process
(``coaddx.runtime.cluster.WorkerMemory``) is printed beside the planner's figure for one task,
``coaddx.plan.calibrate_task_bytes(shape)``, on top of the worker's resident memory before.

Reference, in this process, single-threaded, on the same exposures: sep alone, ``sep.Background``
(64 px mesh, as coaddx) + ``sep.extract`` at the same 5 sigma with ``err=sqrt(variance)``,
minarea 5, the same pixels masked (BAD, NO_DATA, CR, SUSPECT, non-finite, variance <= 0);
only the background and extraction are timed, not the reading. photutils is not installed in
this environment, so sep is the only reference. The ratio is calibrate's wall seconds per
exposure over sep's seconds per exposure.

Accuracy (sanity line, against the simulation's truth): the fitted WCS against the true one
(the header WCS with the recorded error undone, ``truth/calexp_errors.ecsv``) on a grid over
each exposure (rms and max arcsec), and the fitted zero point against the visit's true zero
point (``truth/visits.ecsv``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import sep
from astropy import units as u
from astropy.coordinates import SkyCoord, angular_separation
from astropy.table import Table
from astropy.wcs import WCS

import coaddx
from coaddx.calibrate.exposures import output_paths
from coaddx.io.fits.exposure import read_exposure_geometry
from coaddx.model.masks import bitmask
from coaddx.plan import calibrate_task_bytes
from coaddx.runtime.cluster import WorkerMemory, local
from coaddx.runtime.diagnostics import format_bytes
from coaddx.runtime.malloc import tune_malloc
from coaddx.sim.scene import plan_scene

FULL_PATCH = (3938, 3938)  # -> detectors of 4096 x 2048
QUICK_PATCH = (984, 984)  # -> detectors of 1024 x 512
STARS_PER_MPIX = 1750  # per 1024^2 patch pixels
SEED = 7
WCS_ERROR, ZP_ERROR = 2.0, 0.1  # arcsec, mag
BAD_PLANES = ("BAD", "NO_DATA", "CR", "SUSPECT")  # what coaddx's detection masks
STAGES = (
    "read",
    "astrometry detection",
    "astrometric fit",
    "detection + measurement",
    "photometric calibration",
    "write",
)
INPUT_VERSION = 1


# -- inputs ------------------------------------------------------------------------------------


def _n_visits(n: int, patch: tuple[int, int], n_stars: int) -> tuple[int, tuple[int, int]]:
    """The fewest visits whose detectors give ``n`` calexps, and the detector shape."""
    for visits in range(max(1, math.ceil(n / 2)), 2 * n + 2):
        scene = plan_scene(SEED, visits, patch, "moffat", "r", n_stars, None)
        if sum(len(v.detectors) for v in scene.visits) >= n:
            return visits, scene.det_shape
    raise RuntimeError(f"no number of visits gives {n} calexps")  # pragma: no cover


def make_inputs(out: Path, n: int, patch: tuple[int, int]) -> tuple[Path, list[Path], dict]:
    """Simulate once; (simulation folder, the first ``n`` calexps, the recorded parameters)."""
    n_stars = round(STARS_PER_MPIX * patch[0] * patch[1] / 1024**2)
    visits, det_shape = _n_visits(n, patch, n_stars)
    folder = out / f"calibrate-{n}x{det_shape[0]}x{det_shape[1]}"
    marker = folder / "inputs.json"
    if marker.exists():
        meta = json.loads(marker.read_text())
        paths = [folder / p for p in meta["calexps"]]
        same = meta.get("version") == INPUT_VERSION and meta.get("n_stars") == n_stars
        if same and all(p.exists() for p in paths):
            return folder, paths, meta
    print(
        f"simulating {visits} visits of a {patch[0]} x {patch[1]} patch ({n_stars} stars, "
        f"detectors {det_shape[0]} x {det_shape[1]}) into {folder} (once) ...",
        flush=True,
    )
    t0 = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sim = coaddx.simulate(
        folder / "sim",
        n_visits=visits,
        shape=patch,
        seed=SEED,
        n_stars=n_stars,
        wcs_error=WCS_ERROR,
        zero_point_error=ZP_ERROR,
        overwrite=True,
    )
    paths = list(sim.calexps[:n])
    meta = {
        "version": INPUT_VERSION,
        "n_visits": visits,
        "patch": list(patch),
        "det_shape": list(det_shape),
        "n_stars": n_stars,
        "calexps": [str(p.relative_to(folder)) for p in paths],
    }
    marker.write_text(json.dumps(meta, indent=1))
    print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder, paths, meta


def _warm(paths: list[Path]) -> None:
    """Read files once so that every run starts from the page cache."""
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass


# -- coaddx ------------------------------------------------------------------------------------


def _warm_up() -> None:
    """Imports and a tiny sep detection in a worker, outside every timing."""
    import coaddx.calibrate.exposures  # noqa: F401  (what the tasks run)

    rng = np.random.default_rng(0)
    data = rng.normal(0.0, 1.0, (64, 64))
    data[30:34, 30:34] += 50.0
    back = sep.Background(data, bw=32, bh=32)
    sep.extract(data - back.back(), 5.0, err=np.ones_like(data))


def run_calibrate(paths: list[Path], ref: Any, out_dir: Path, workers: int) -> dict[str, Any]:
    shutil.rmtree(out_dir, ignore_errors=True)
    client = local(workers, 1, processes=True, dashboard=False)
    try:
        client.run(_warm_up)
        _warm(paths)
        with WorkerMemory(client) as mem:
            t0 = time.perf_counter()
            result = coaddx.calibrate_exposures(paths, ref, out_dir, reuse=False)
            wall = time.perf_counter() - t0
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    return {"workers": workers, "wall": wall, "result": result, "mem": mem, "out_dir": out_dir}


# -- sep alone ---------------------------------------------------------------------------------


def run_sep(paths: list[Path], threshold: float) -> dict[str, Any]:
    seconds, counts = [], []
    for path in paths:
        exp = coaddx.read_exposure(path)
        bad = (exp.mask & bitmask(exp.mask_planes, BAD_PLANES, strict=False)) != 0
        usable = ~bad & np.isfinite(exp.image) & np.isfinite(exp.variance) & (exp.variance > 0)
        data = np.ascontiguousarray(np.where(usable, exp.image, 0.0), np.float64)
        err = np.ascontiguousarray(np.sqrt(np.where(usable, exp.variance, np.inf)), np.float64)
        mask = np.ascontiguousarray(~usable)
        t0 = time.perf_counter()
        back = sep.Background(data, mask=mask, bw=64, bh=64)
        objects = sep.extract(data - back.back(), threshold, err=err, mask=mask, minarea=5)
        seconds.append(time.perf_counter() - t0)
        counts.append(len(objects))
    return {"seconds": np.asarray(seconds), "counts": np.asarray(counts)}


# -- accuracy against the truth ----------------------------------------------------------------


def _true_wcs(header: WCS, err: Any) -> WCS:
    """The simulation's TAN WCS: ``coaddx.sim.header_errors.perturb_wcs`` undone."""
    th = math.radians(float(err["rotation_deg"]))
    rot = np.array([[math.cos(th), math.sin(th)], [-math.sin(th), math.cos(th)]])  # -th
    out = WCS(naxis=2)
    out.wcs.ctype = list(header.wcs.ctype)
    out.wcs.crpix = header.wcs.crpix
    out.wcs.cd = rot @ header.pixel_scale_matrix / (1.0 + float(err["scale"]))
    ra, dec = header.wcs.crval
    pa, d = math.radians(float(err["pa_deg"])), float(err["shift_arcsec"]) / 3600.0
    dec0 = dec - d * math.cos(pa)
    out.wcs.crval = [ra - d * math.sin(pa) / math.cos(math.radians(dec0)), dec0]
    out.wcs.set()
    return out


def _offsets(a: WCS, b: WCS, shape: tuple[int, int]) -> np.ndarray:
    """Angular distances (arcsec) between the two WCSs on a 33 x 17 grid over the image."""
    ny, nx = shape
    x, y = np.meshgrid(np.linspace(0, nx - 1, 17), np.linspace(0, ny - 1, 33))
    ra1, dec1 = a.pixel_to_world_values(x.ravel(), y.ravel())
    ra2, dec2 = b.pixel_to_world_values(x.ravel(), y.ravel())
    sep_rad = angular_separation(*np.radians([ra1, dec1, ra2, dec2]))
    return np.degrees(np.asarray(sep_rad)) * 3600.0


def accuracy(sim_dir: Path, summaries: tuple[dict[str, Any], ...]) -> dict[str, np.ndarray]:
    truth_zp = {
        int(r["visit"]): float(r["zero_point"])
        for r in Table.read(sim_dir / "truth" / "visits.ecsv")
    }
    errors = {
        (int(r["visit"]), int(r["detector"])): r
        for r in Table.read(sim_dir / "truth" / "calexp_errors.ecsv")
    }
    rms, worst, before, dzp, dzp_before = [], [], [], [], []
    for s in summaries:
        _, visit, detector = Path(s["input"]).stem.split("_")
        err = errors[(int(visit), int(detector))]
        header, shape = read_exposure_geometry(s["input"])
        fitted, _ = read_exposure_geometry(s["output"])
        true = _true_wcs(header, err)
        d = _offsets(fitted, true, shape)
        rms.append(float(np.sqrt(np.mean(d**2))))
        worst.append(float(d.max()))
        before.append(float(np.sqrt(np.mean(_offsets(header, true, shape) ** 2))))
        dzp.append(s["zero_point"] - truth_zp[int(visit)])
        dzp_before.append(float(err["dmag"]))
    return {
        "rms": np.asarray(rms),
        "max": np.asarray(worst),
        "before": np.asarray(before),
        "dzp": np.asarray(dzp),
        "dzp_before": np.asarray(dzp_before),
    }


def _stars_detected(
    summaries: tuple[dict[str, Any], ...], sim_dir: Path, out_dir: Path
) -> np.ndarray:
    """Sources of each exposure's table whose nearest true source (star or galaxy) is a star
    within 0.5" (2.5 px)."""
    truth = Table.read(sim_dir / "truth" / "sources.ecsv")
    cat = SkyCoord(np.asarray(truth["ra"]) * u.deg, np.asarray(truth["dec"]) * u.deg)
    star = np.asarray(truth["type"]) == "star"
    counts = []
    for s in summaries:
        table = Table.read(output_paths(Path(s["input"]), out_dir)[1])
        src = SkyCoord(np.asarray(table["ra"]) * u.deg, np.asarray(table["dec"]) * u.deg)
        j, d, _ = src.match_to_catalog_sky(cat)
        counts.append(int(((d.arcsec < 0.5) & star[j]).sum()))
    return np.asarray(counts)


# -- report ------------------------------------------------------------------------------------


def _stage_means(summaries: tuple[dict[str, Any], ...]) -> dict[str, float]:
    out = {k: float(np.mean([s["timings"].get(k, 0.0) for s in summaries])) for k in STAGES}
    out["task total"] = float(np.mean([s["seconds"] for s in summaries]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exposures", type=int, default=None, help="default 32 (4 with --quick)")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--quick", action="store_true", help="4 small exposures: a smoke run")
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    args = ap.parse_args(argv)
    n = args.exposures if args.exposures is not None else (4 if args.quick else 32)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    print(f"glibc malloc tuned: {tune_malloc()}")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    folder, paths, meta = make_inputs(out, n, QUICK_PATCH if args.quick else FULL_PATCH)
    sim_dir = folder / "sim"
    rows, cols = meta["det_shape"]
    config = coaddx.CalibrateConfig()
    t0 = time.perf_counter()
    ref = coaddx.read_reference_catalog(sim_dir / "truth" / "refcat.fits")
    t_ref = time.perf_counter() - t0
    print(
        f"\ninputs: {len(paths)} calexps of {rows} x {cols} px (rows x columns, "
        f"{rows * cols / 1e6:.1f} Mpix each) from {meta['n_visits']} visits; header WCS off by "
        f'{WCS_ERROR:g}" (+ rotation, scale), PHOTCALIB off by {ZP_ERROR:g} mag rms; '
        f"{meta['n_stars']} stars over the patch"
    )
    print(
        f"reference catalogue: {len(ref.ra)} stars ({sim_dir / 'truth' / 'refcat.fits'}), read "
        f"in {t_ref:.2f} s; CPUs: {os.cpu_count()}; sep {sep.__version__}; photutils: not "
        "installed (no second reference)",
        flush=True,
    )

    runs = []
    for w in workers:
        r = run_calibrate(paths, ref, folder / f"calibrated-{w}", w)
        res = r["result"]
        print(
            f"calibrate_exposures on {w} worker(s): {r['wall']:.1f} s wall, "
            f"{len(res.written)} written, {len(res.failed)} failed; load avg "
            f"{os.getloadavg()[0]:.2f}",
            flush=True,
        )
        for path, error in res.failed.items():
            print(f"  FAILED {Path(path).name}: {error}")
        runs.append(r)
    os.sync()
    _warm(paths)
    ref_sep = run_sep(paths, config.detection_threshold)
    sep_per = float(ref_sep["seconds"].mean())
    print(f"sep alone: {ref_sep['seconds'].sum():.1f} s for {len(paths)} exposures", flush=True)

    good = [r for r in runs if r["result"].summaries]
    print()
    head = f"{'seconds per exposure':<34}" + "".join(
        f"{str(r['workers']) + ' worker(s)':>13}" for r in good
    )
    print(head)
    print("-" * len(head))

    def line(label: str, values: list[str]) -> None:
        print(f"{label:<34}" + "".join(f"{v:>13}" for v in values))

    line("wall, whole run", [f"{r['wall']:.1f} s" for r in good])
    line("wall / exposure", [f"{r['wall'] / n:.3f}" for r in good])
    line(
        "worker-s / exposure (wall x W / n)", [f"{r['wall'] * r['workers'] / n:.3f}" for r in good]
    )
    line("exposures / s", [f"{n / r['wall']:.3f}" for r in good])
    means = [_stage_means(r["result"].summaries) for r in good]
    line("task stages (mean over exposures):", ["" for _ in good])
    for stage in (*STAGES, "task total"):
        line(f"  {stage}", [f"{m[stage]:.3f}" for m in means])
    line(
        "  rest (scheduling, client prep)",
        [
            f"{r['wall'] * r['workers'] / n - m['task total']:.3f}"
            for r, m in zip(good, means, strict=True)
        ],
    )
    line(
        f"speed-up over {good[0]['workers']} worker(s)",
        [f"{good[0]['wall'] / r['wall']:.2f}x" for r in good],
    )
    print("-" * len(head))
    line(f"sep alone ({config.detection_threshold:g} sigma, 1 thread)", [f"{sep_per:.3f}"])
    line("calibrate wall / exposure / sep", [f"{r['wall'] / n / sep_per:.1f}x" for r in good])
    line("calibrate task total / sep", [f"{m['task total'] / sep_per:.1f}x" for m in means])
    line(
        "  detection + measurement / sep",
        [f"{m['detection + measurement'] / sep_per:.1f}x" for m in means],
    )
    print()

    planned = calibrate_task_bytes((rows, cols))
    for r in good:
        peaks = list(r["mem"].peaks.values())
        text = ", ".join(f"{format_bytes(p.peak)} (+{format_bytes(p.added)})" for p in peaks)
        print(
            f"{r['workers']} worker(s): peak RSS per worker {text or 'not sampled'}; planned per "
            f"task calibrate_task_bytes({rows}, {cols}) = {format_bytes(planned)} on top of the "
            f"worker's resident memory before"
        )
    s0 = good[0]["result"].summaries if good else ()
    if s0:
        n_src = np.array([s["n_sources"] for s in s0])
        print(
            f"sources per exposure (5 sigma, coaddx): median {np.median(n_src):.0f} "
            f"({n_src.min()}-{n_src.max()}); sep alone: median {np.median(ref_sep['counts']):.0f}"
            f" ({ref_sep['counts'].min()}-{ref_sep['counts'].max()}); astrometric matches used: "
            f"median {np.median([s['n_astrometry'] for s in s0]):.0f}; photometric stars: median "
            f"{np.median([s['n_photometry'] for s in s0]):.0f}"
        )
        stars = _stars_detected(s0, sim_dir, good[0]["out_dir"])
        print(
            'of which stars (nearest true source a star, within 0.5"): median '
            f"{np.median(stars):.0f} ({stars.min()}-{stars.max()})"
        )
        acc = accuracy(sim_dir, s0)
        print(
            f"accuracy vs truth ({len(s0)} exposures): fitted WCS rms over the image median "
            f'{np.median(acc["rms"]):.4f}", worst {acc["rms"].max():.4f}" (max offset '
            f'{acc["max"].max():.4f}"; header before: {np.median(acc["before"]):.2f}" rms); zero '
            f"point - truth median {np.median(acc['dzp']) * 1e3:+.1f} mmag, max "
            f"|{np.abs(acc['dzp']).max() * 1e3:.1f}| mmag (header before: "
            f"{np.std(acc['dzp_before']) * 1e3:.0f} mmag rms)"
        )
    return 0 if all(not r["result"].failed for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
