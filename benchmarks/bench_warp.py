"""Benchmark coaddx warping (MakeDirectWarp, Lanczos-3) against SWarp 2.41 and reproject.

    python benchmarks/bench_warp.py [--exposures 16] [--out bench-out]

Inputs (made once, cached under ``OUT/warp-inputs-<n>``): ``n`` synthetic calexps of
4096 x 2048 pixels (rows x columns) at 0.263"/px, TAN, rotated 0-5 deg and dithered by up to
+-40", one detector per visit, ``PHOTCALIB = 1`` so that counts = nJy and every tool sees the
same units. Stars are pixel-integrated Gaussians (FWHM 0.75-1.15" per visit) on Gaussian noise
(sky sigma 10, gain 2) with the matching variance plane; a jittered grid of bright isolated
"probe" stars carries the flux and position comparison. Plain single-HDU copies of IMAGE and a
1/VARIANCE weight map are written for SWarp at the same time (outside every timing).

Output grid: one TAN grid at 0.2"/px, north up, covering the union of all exposures (+8 px),
used as a ``coaddx.Patch`` for coaddx, as ``coadd.head`` for SWarp and as the output WCS of
``reproject_interp``.

Timed, in this one process run, on warm page cache (coaddx and SWarp alternate ``--repeat``
times, default 2, and the best of each is reported; ``os.sync()`` between runs):

* coaddx ``make_warps`` (Lanczos-3, interp_length 10, default threaded scheduler) into a fresh
  Zarr store: everything, from the FITS headers to the committed store. The task time is broken
  down by wrapping the functions ``coaddx.warp`` calls (thread-seconds, summed over threads).
* SWarp 2.41 resample only (``COMBINE N``), ``LANCZOS3``, ``NTHREADS 2``, ``FSCALASTRO_TYPE
  VARIABLE`` (per-pixel Jacobian: flux conserving like coaddx's relative area), ``SUBTRACT_BACK
  N``, ``WEIGHT_TYPE MAP_WEIGHT`` with the 1/variance maps (so that it also resamples a second
  plane, as coaddx resamples the variance), ``RESCALE_WEIGHTS N``, ``OVERSAMPLING 1`` (what its
  automatic mode picks when the output pixels are smaller), ``PROJECTION_ERR`` left at its
  default 0.001 px (SWarp's grid approximation of the mapping, as coaddx's interp_length).
* ``reproject.reproject_interp`` (bicubic: it has no Lanczos) of a subset of the images onto the
  whole grid, single-threaded, scaled to all exposures by its input rate.

Then coaddx's warps are compared with SWarp's ``.resamp.fits`` on the same pixels: aperture
fluxes and first-moment centroids of the isolated probe stars (per exposure: median and spread
of the ratio coaddx / SWarp), a least-squares flux scale over all interior pixels, and whether
both tools cover the same pixels. ``--swarp-fscalastro NONE`` is a check of the check: SWarp then
keeps surface brightness and the ratio becomes the pixel-area ratio (0.2 / 0.263)^2 = 0.578.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import shutil
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from scipy import ndimage
from scipy.special import erf

sys.path.insert(0, str(Path(__file__).resolve().parent))

import swarp_peer

import coaddx.io.zarr.warp_store as cstore
import coaddx.warp.exposure as cexposure
import coaddx.warp.inputs as cinputs
import coaddx.warp.make_warps as cwarp
import coaddx.warp.visit as cvisit
from coaddx.io.fits.exposure import write_calexp
from coaddx.kernels.warp import warp_block, warp_on_grid
from coaddx.model.exposure import boundary_pixels
from coaddx.model.masks import mask_planes
from coaddx.model.skymap import Patch, make_tan_wcs
from coaddx.runtime.diagnostics import PeakMemory, format_bytes
from coaddx.runtime.malloc import tune_malloc
from coaddx.warp.make_warps import WarpConfig, make_warps

CENTER = (150.1, 2.2)  # deg
SKY_SIGMA, GAIN = 10.0, 2.0  # counts, e-/count
MARGIN = 8  # output-grid margin around the union, px


@dataclass(frozen=True)
class Geometry:
    """One benchmark case: ``exposures`` calexps of ``ny`` x ``nx`` px at ``pix_in``"/px,
    rotated 0-``max_rot`` deg and dithered by up to +-``dither``", onto a TAN grid at
    ``pix_out``"/px: the union of the exposures (``patch`` None) or a fixed patch of that
    shape centred on the field."""

    name: str
    ny: int
    nx: int
    pix_in: float
    pix_out: float
    exposures: int
    dither: float
    max_rot: float
    patch: tuple[int, int] | None = None

    @property
    def key(self) -> str:
        return f"{self.name}-{self.exposures}"


GEOMETRIES = {
    # the original case: LSST-sized detectors at 0.263"/px onto a 0.2"/px grid over their union
    "wide": Geometry("wide", 4096, 2048, 0.263, 0.2, 16, 40.0, 5.0),
    # issue 15's case: 8 exposures of 2048^2 at 0.2"/px spread over a 4096^2 patch
    "patch": Geometry("patch", 2048, 2048, 0.2, 0.2, 8, 200.0, 5.0, patch=(4096, 4096)),
}
PROBE_SPACING = 160  # output px between probe stars (32")
APERTURE = 12  # aperture radius, output px (>= 4.8 sigma of the widest PSF)
EDGE_CLEAR = 10  # output px kept clear of either tool's coverage edge
TARGET_SWARP, TARGET_REPROJECT, TARGET_FLUX = 2.0, 10.0, 0.005
INPUT_VERSION = 2
SWARP_MODES = ("NONE", "FIXED", "VARIABLE")


# -- inputs ------------------------------------------------------------------------------------


def _grid(geo: Geometry, visits: list[dict]) -> tuple[WCS, tuple[int, int]]:
    """The output TAN grid: the fixed patch of ``geo``, or the grid covering every exposure's
    outer pixel edges."""
    center = SkyCoord(CENTER[0] * u.deg, CENTER[1] * u.deg)
    if geo.patch is not None:
        ny, nx = geo.patch
        return make_tan_wcs(center, ((nx - 1) / 2, (ny - 1) / 2), geo.pix_out), geo.patch
    wcs0 = make_tan_wcs(center, (0.0, 0.0), geo.pix_out)
    xs, ys = [], []
    for v in visits:
        w = _exposure_wcs(geo, v)
        x, y = boundary_pixels((geo.ny, geo.nx), 16)
        px, py = wcs0.world_to_pixel_values(*w.pixel_to_world_values(x, y))
        xs.append(px)
        ys.append(py)
    x0 = math.floor(np.min(xs)) - MARGIN
    y0 = math.floor(np.min(ys)) - MARGIN
    x1 = math.ceil(np.max(xs)) + MARGIN + 1
    y1 = math.ceil(np.max(ys)) + MARGIN + 1
    return make_tan_wcs(center, (-x0, -y0), geo.pix_out), (y1 - y0, x1 - x0)


def _exposure_wcs(geo: Geometry, v: dict) -> WCS:
    center = SkyCoord(CENTER[0] * u.deg, CENTER[1] * u.deg).spherical_offsets_by(
        v["dra"] * u.arcsec, v["ddec"] * u.arcsec
    )
    return make_tan_wcs(center, ((geo.nx - 1) / 2, (geo.ny - 1) / 2), geo.pix_in, v["rotation"])


def _catalog(rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Stars in output-grid pixels: a jittered grid of bright probes and fainter field stars
    kept at least 40 px (8") from every probe."""
    ny, nx = shape
    gy, gx = np.mgrid[
        PROBE_SPACING // 2 : ny : PROBE_SPACING, PROBE_SPACING // 2 : nx : PROBE_SPACING
    ]
    px = gx.ravel() + rng.uniform(-20, 20, gx.size)
    py = gy.ravel() + rng.uniform(-20, 20, gy.size)
    pflux = np.exp(rng.uniform(np.log(3e4), np.log(3e5), px.size))
    n_field = int(6000 * nx * ny / 20e6)
    fx, fy = rng.uniform(0, nx, n_field), rng.uniform(0, ny, n_field)
    ffx = np.exp(rng.uniform(np.log(50.0), np.log(2e4), n_field))
    from scipy.spatial import cKDTree

    far = cKDTree(np.c_[px, py]).query(np.c_[fx, fy])[0] > 40
    return {
        "x": np.r_[px, fx[far]],
        "y": np.r_[py, fy[far]],
        "flux": np.r_[pflux, ffx[far]],
        "probe": np.r_[np.ones(px.size, bool), np.zeros(int(far.sum()), bool)],
    }


def _render(
    shape: tuple[int, int], x: np.ndarray, y: np.ndarray, flux: np.ndarray, sigma: float
) -> np.ndarray:
    """Pixel-integrated circular Gaussians at 0-based (x, y) on a float64 image of ``shape``."""
    NY, NX = shape
    h = math.ceil(5 * sigma) + 1
    ix, iy = np.floor(x + 0.5).astype(int), np.floor(y + 0.5).astype(int)
    keep = (ix >= -h) & (ix < NX + h) & (iy >= -h) & (iy < NY + h)
    x, y, flux, ix, iy = x[keep], y[keep], flux[keep], ix[keep], iy[keep]
    offs = np.arange(-h, h + 1)
    s2 = math.sqrt(2.0) * sigma

    def profile(c, ic):
        edge = (ic[:, None] + offs[None, :]) - c[:, None]
        return 0.5 * (erf((edge + 0.5) / s2) - erf((edge - 0.5) / s2))

    gx, gy = profile(x, ix), profile(y, iy)
    stamps = flux[:, None, None] * gy[:, :, None] * gx[:, None, :]
    p = 2 * h  # stamps centred up to h pixels outside the image still fit
    pad = np.zeros((NY + 2 * p, NX + 2 * p))
    rows = (iy[:, None] + offs[None, :] + p)[:, :, None]
    cols = (ix[:, None] + offs[None, :] + p)[:, None, :]
    np.add.at(
        pad, (np.broadcast_to(rows, stamps.shape), np.broadcast_to(cols, stamps.shape)), stamps
    )
    return pad[p : p + NY, p : p + NX]


def _make_one(
    geo: Geometry, k: int, v: dict, cat: dict, grid_wcs: WCS, folder: Path, seed: int
) -> None:
    rng = np.random.default_rng(seed + 1000 + k)
    wcs = _exposure_wcs(geo, v)
    x, y = wcs.world_to_pixel_values(*grid_wcs.pixel_to_world_values(cat["x"], cat["y"]))
    sigma = v["fwhm"] / 2.3548 / geo.pix_in
    NY, NX = geo.ny, geo.nx
    model = _render((NY, NX), x, y, cat["flux"], sigma)
    variance = (SKY_SIGMA**2 + model / GAIN).astype(np.float32)
    image = model + rng.standard_normal((NY, NX), dtype=np.float32) * np.sqrt(variance)
    image = image.astype(np.float32)
    mask = np.zeros((NY, NX), np.int32)
    meta = {
        "visit": v["visit"],
        "detector": 0,
        "band": "r",
        "mjd": 60000.0 + 0.01 * k,
        "exptime": 30.0,
        "airmass": 1.2,
        "parallactic_angle": 0.0,
        "photo_calib": 1.0,
        "psf_fwhm": v["fwhm"] / geo.pix_in,
    }
    write_calexp(
        folder / f"calexp_{v['visit']}.fits",
        image,
        mask,
        variance,
        wcs,
        mask_planes=mask_planes(),
        metadata=meta,
    )
    hdr = swarp_peer.cd_header(wcs)
    fits.PrimaryHDU(image, header=hdr).writeto(
        folder / "swarp" / f"img_{v['visit']}.fits", overwrite=True
    )
    fits.PrimaryHDU((1.0 / variance).astype(np.float32), header=hdr).writeto(
        folder / "swarp" / f"img_{v['visit']}.weight.fits", overwrite=True
    )


def make_inputs(out: Path, geo: Geometry, seed: int = 7) -> Path:
    n = geo.exposures
    folder = out / f"warp-inputs-{geo.key}"
    done = folder / "inputs.json"
    if done.exists() and json.loads(done.read_text()).get("version") == INPUT_VERSION:
        return folder
    print(
        f"making {n} synthetic calexps of {geo.ny} x {geo.nx} px in {folder} (once) ...",
        flush=True,
    )
    t0 = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "swarp").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    visits = [
        {
            "visit": 1000 + k,
            "dra": float(rng.uniform(-geo.dither, geo.dither)),
            "ddec": float(rng.uniform(-geo.dither, geo.dither)),
            "rotation": float(rng.uniform(0.0, geo.max_rot)),
            "fwhm": float(rng.uniform(0.75, 1.15)),
        }
        for k in range(n)
    ]
    grid_wcs, shape = _grid(geo, visits)
    cat = _catalog(rng, shape)
    np.savez(folder / "catalog.npz", **cat)
    with ThreadPoolExecutor(2) as pool:
        list(
            pool.map(
                lambda kv: _make_one(geo, kv[0], kv[1], cat, grid_wcs, folder, seed),
                enumerate(visits),
            )
        )
    done.write_text(
        json.dumps(
            {
                "version": INPUT_VERSION,
                "visits": visits,
                "grid_header": swarp_peer.cd_header(grid_wcs, shape).tostring(),
                "shape": list(shape),
            },
            indent=1,
        )
    )
    print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


def load_inputs(folder: Path) -> tuple[list[dict], WCS, tuple[int, int], dict]:
    meta = json.loads((folder / "inputs.json").read_text())
    wcs = WCS(fits.Header.fromstring(meta["grid_header"]))
    cat = dict(np.load(folder / "catalog.npz"))
    return meta["visits"], wcs, tuple(meta["shape"]), cat


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _sys(who: int) -> float:
    """Kernel CPU seconds so far (page-cache writes land here: on a VM that returns freed
    memory to its host, every fresh page-cache page costs a host fault)."""
    return resource.getrusage(who).ru_stime


def _bytes_under(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _warm(paths: list[Path]) -> None:
    """Read files once so that every tool starts from the page cache."""
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass


# -- coaddx --------------------------------------------------------------------------------------


class _Timers:
    """Thread-seconds spent in wrapped functions (the instrumentation costs microseconds)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()
        self._undo: list[tuple[object, str, object]] = []

    def wrap(self, owner: object, attr: str, label: str) -> None:
        fn = getattr(owner, attr)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                with self._lock:
                    self.seconds[label] = self.seconds.get(label, 0.0) + dt
                    self.calls[label] = self.calls.get(label, 0) + 1

        self._undo.append((owner, attr, fn))
        setattr(owner, attr, timed)

    def restore(self) -> None:
        for owner, attr, fn in reversed(self._undo):
            setattr(owner, attr, fn)
        self._undo.clear()


def run_coaddx(paths: list[Path], patch: Patch, store: Path) -> dict:
    shutil.rmtree(store, ignore_errors=True)
    # compile / load the numba kernel outside the timing
    tiny = np.ones((16, 16), np.float32)
    yy, xx = np.indices((8, 8), dtype=float)
    warp_block(tiny, tiny, np.zeros((16, 16), np.int32), xx + 3.3, yy + 3.6, np.ones((8, 8)))
    nodes = np.array([0, 4, 8])
    gy, gx = np.meshgrid(nodes + 2.3, nodes + 2.6, indexing="ij")
    warp_on_grid(tiny, tiny, np.zeros((16, 16), np.int32), gx, gy, nodes, nodes, (8, 8))
    timers = _Timers()
    timers.wrap(cwarp, "warp_inputs", "headers + overlap (main thread)")
    timers.wrap(cwarp, "warp_visit", "task total")
    timers.wrap(cinputs, "read_exposure", "read FITS")
    timers.wrap(cexposure, "source_grid", "source_grid (WCS map)")
    timers.wrap(cexposure, "warp_on_grid", "warp_on_grid (kernel)")
    timers.wrap(cvisit, "file_crc32c", "input CRC32C")
    timers.wrap(cvisit, "visit_weight_stats", "weight stats")
    timers.wrap(cstore.WarpStore, "write_slot_box", "write_slot_box (Zarr)")
    timers.wrap(cstore.WarpStore, "commit_in_order", "commit (main thread)")
    try:
        with PeakMemory() as mem:
            c0, t0 = _cpu(resource.RUSAGE_SELF), time.perf_counter()
            k0 = _sys(resource.RUSAGE_SELF)
            result = make_warps(
                paths, patch, store, config=WarpConfig(kernel="lanczos3", interp_length=10)
            )
            seconds, cpu = time.perf_counter() - t0, _cpu(resource.RUSAGE_SELF) - c0
            sys_s = _sys(resource.RUSAGE_SELF) - k0
    finally:
        timers.restore()
    if result.failed or len(result.written) != len(paths):
        raise RuntimeError(
            f"make_warps failed visits: {result.failed}; not overlapping: {result.not_overlapping}"
        )
    return {
        "seconds": seconds,
        "cpu": cpu,
        "sys": sys_s,
        "written": _bytes_under(store),
        "peak": mem.peak - mem.baseline,
        "timers": timers,
    }


# -- SWarp ---------------------------------------------------------------------------------------

SWARP_PARAMS = {
    "COMBINE": "N",
    "RESAMPLE": "Y",
    "RESAMPLING_TYPE": "LANCZOS3",
    "OVERSAMPLING": "1",
    "FSCALASTRO_TYPE": "VARIABLE",
    "FSCALE_KEYWORD": "FLXSCALE",
    "FSCALE_DEFAULT": "1.0",
    "SUBTRACT_BACK": "N",
    "WEIGHT_TYPE": "MAP_WEIGHT",
    "WEIGHT_SUFFIX": ".weight.fits",
    "RESCALE_WEIGHTS": "N",
    "NTHREADS": "2",
    "DELETE_TMPFILES": "N",
    "WRITE_XML": "N",
    "VERBOSE_TYPE": "QUIET",
    "MEM_MAX": "2048",
    "COMBINE_BUFSIZE": "1024",
    "HEADER_SUFFIX": ".head",
    "CELESTIAL_TYPE": "NATIVE",
    "PROJECTION_TYPE": "TAN",
    "INTERPOLATE": "N",
    "COPY_KEYWORDS": "OBJECT",
    "WRITE_FILEINFO": "N",
}


def run_swarp(
    images: list[Path], grid_wcs: WCS, shape: tuple[int, int], work: Path, fscalastro: str
) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    resamp = work / "resamp"
    resamp.mkdir(parents=True)
    swarp_peer.write_head(work / "coadd.head", grid_wcs, shape)
    params = dict(SWARP_PARAMS, FSCALASTRO_TYPE=fscalastro)
    with PeakMemory() as mem:
        c0, t0 = _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
        k0 = _sys(resource.RUSAGE_CHILDREN)
        proc = swarp_peer.run_swarp(images, work, resamp, params)
        seconds, cpu = time.perf_counter() - t0, _cpu(resource.RUSAGE_CHILDREN) - c0
        sys_s = _sys(resource.RUSAGE_CHILDREN) - k0
    return {
        "seconds": seconds,
        "cpu": cpu,
        "sys": sys_s,
        "written": _bytes_under(work),
        "peak": mem.peak - mem.baseline,
        "dir": resamp,
        "stderr": proc.stderr.strip(),
    }


# -- reproject -----------------------------------------------------------------------------------


def run_reproject(images: list[Path], grid_wcs: WCS, shape: tuple[int, int], order: str) -> dict:
    from reproject import reproject_interp

    data = []
    for p in images:
        with fits.open(p, memmap=False) as hdul:
            data.append((np.asarray(hdul[0].data, np.float32), WCS(hdul[0].header)))
    reproject_interp(data[0], grid_wcs, shape_out=(64, 64), order=order)  # imports, caches
    with PeakMemory() as mem:
        c0, t0 = _cpu(resource.RUSAGE_SELF), time.perf_counter()
        for d in data:
            reproject_interp(d, grid_wcs, shape_out=shape, order=order)
        seconds, cpu = time.perf_counter() - t0, _cpu(resource.RUSAGE_SELF) - c0
    return {"seconds": seconds, "cpu": cpu, "peak": mem.peak - mem.baseline, "n": len(images)}


# -- agreement -----------------------------------------------------------------------------------


def _aperture(img: np.ndarray, x: float, y: float, r: int) -> tuple[float, float, float]:
    """Sum and first-moment centroid (0-based x, y) within radius r of (x, y)."""
    ix, iy = round(float(x)), round(float(y))
    cut = img[iy - r : iy + r + 1, ix - r : ix + r + 1].astype(np.float64)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = (dx + ix - x) ** 2 + (dy + iy - y) ** 2 <= r * r
    w = np.where(inside, cut, 0.0)
    total = w.sum()
    return total, ix + (w * dx).sum() / total, iy + (w * dy).sum() / total


def compare(
    store: Path,
    swarp_dir: Path,
    visits: list[dict],
    grid_wcs: WCS,
    shape: tuple[int, int],
    cat: dict,
) -> dict:
    import zarr

    group = zarr.open_group(str(store / "direct"), mode="r")
    slots = {int(r["visit"]): i for i, r in enumerate(group.attrs["visits"])}
    probes = np.flatnonzero(cat["probe"])
    rows = []
    for v in visits:
        visit = v["visit"]
        c = group["image"][slots[visit]]
        s, sw = swarp_peer.read_resampled(
            swarp_dir / f"img_{visit}.resamp.fits",
            swarp_dir / f"img_{visit}.resamp.weight.fits",
            grid_wcs,
            shape,
        )
        ok_c, ok_s = np.isfinite(c), sw > 0
        both = ok_c & ok_s
        interior = ndimage.minimum_filter(
            both.view(np.uint8), size=2 * EDGE_CLEAR + 1, mode="constant", cval=0
        ).astype(bool)
        cv, sv = c[interior].astype(np.float64), s[interior].astype(np.float64)
        scale = float((cv * sv).sum() / (sv * sv).sum())
        rel_rms = float(np.sqrt(np.mean((cv - sv) ** 2)) / np.sqrt(np.mean(sv**2)))
        only_s = ok_s & ~ok_c
        only_c = ok_c & ~ok_s
        fl, pos_c, pos_s, truth_ratio = [], [], [], []
        r = APERTURE
        for k in probes:
            x, y = cat["x"][k], cat["y"][k]
            ix, iy = round(float(x)), round(float(y))
            if not (r + 2 <= ix < shape[1] - r - 2 and r + 2 <= iy < shape[0] - r - 2):
                continue
            if not interior[iy - r - 1 : iy + r + 2, ix - r - 1 : ix + r + 2].all():
                continue
            fc, xc, yc = _aperture(c, x, y, r)
            fs, xs, ys = _aperture(s, x, y, r)
            fl.append(fc / fs)
            truth_ratio.append(fc / cat["flux"][k])
            pos_c.append((xc - x, yc - y))
            pos_s.append((xs - x, ys - y))
        fl, pos_c, pos_s = np.array(fl), np.array(pos_c), np.array(pos_s)
        d = pos_c - pos_s
        rows.append(
            {
                "visit": visit,
                "n_stars": len(fl),
                "flux_median": float(np.median(fl)),
                "flux_p16": float(np.percentile(fl, 16)),
                "flux_p84": float(np.percentile(fl, 84)),
                "flux_min": float(fl.min()),
                "flux_max": float(fl.max()),
                "truth_median": float(np.median(truth_ratio)),
                "dx": float(np.median(d[:, 0])),
                "dy": float(np.median(d[:, 1])),
                "dr": float(np.median(np.hypot(d[:, 0], d[:, 1]))),
                "dr_max": float(np.max(np.hypot(d[:, 0], d[:, 1]))),
                "c_truth": float(np.median(np.hypot(pos_c[:, 0], pos_c[:, 1]))),
                "s_truth": float(np.median(np.hypot(pos_s[:, 0], pos_s[:, 1]))),
                "scale": scale,
                "rel_rms": rel_rms,
                "max_rel": float(np.abs(cv - sv).max() / np.abs(sv).max()),
                "n_c": int(ok_c.sum()),
                "n_s": int(ok_s.sum()),
                "only_s": int(only_s.sum()),
                "only_c": int(only_c.sum()),
                "c_nonfinite_inside": int((~np.isfinite(c[interior])).sum()),
            }
        )
    return {"rows": rows}


# -- report --------------------------------------------------------------------------------------


def _print_agreement(res: dict, fscalastro: str) -> None:
    rows = res["rows"]
    print(
        f"agreement coaddx vs SWarp (FSCALASTRO_TYPE {fscalastro}); aperture r = "
        f"{APERTURE} px on isolated probe stars >= {EDGE_CLEAR} px inside both coverages;"
    )
    print(
        "centroids are first moments in the aperture, in output pixels (0-based, both tools "
        "placed on the same grid)"
    )
    print(
        "flux c/s: aperture-sum ratio coaddx/SWarp (median, 16-84 %, min-max over the stars); "
        "c/truth: coaddx aperture sum / input flux;"
    )
    print(
        "|dpos|: centroid difference coaddx - SWarp; LSQ scale: sum(c s)/sum(s s) over all "
        "interior pixels; rms d/s: rms(c - s)/rms(s); max d/s: max|c - s|/max|s|"
    )
    print(
        f"{'visit':>6} {'stars':>5} {'flux c/s':>9} {'16-84 %':>19} {'min-max':>19} "
        f"{'c/truth':>7} {'|dpos|':>8} {'max':>8} {'LSQ scale':>10} {'rms d/s':>8} "
        f"{'max d/s':>8} {'only SW':>7} {'only cx':>7}"
    )
    for r in rows:
        print(
            f"{r['visit']:>6} {r['n_stars']:>5} {r['flux_median']:9.6f} "
            f"{r['flux_p16']:9.6f}-{r['flux_p84']:9.6f} {r['flux_min']:9.6f}-"
            f"{r['flux_max']:9.6f} {r['truth_median']:7.4f} {r['dr']:8.1e} {r['dr_max']:8.1e} "
            f"{r['scale']:10.7f} {r['rel_rms']:8.1e} {r['max_rel']:8.1e} {r['only_s']:>7} "
            f"{r['only_c']:>7}"
        )
    med = np.array([r["flux_median"] for r in rows])
    dev = np.abs(med - 1.0).max()
    print(
        f"flux ratio coaddx/SWarp over exposures: median {np.median(med):.6f}, per-exposure "
        f"medians {med.min():.6f}-{med.max():.6f}; worst |ratio-1| {dev * 100:.4f} % "
        f"(target <= {TARGET_FLUX * 100:g} %: {'PASS' if dev <= TARGET_FLUX else 'FAIL'})"
    )
    print(
        f"centroid difference coaddx - SWarp: median {np.median([r['dr'] for r in rows]):.1e} "
        f"px (max {max(r['dr_max'] for r in rows):.1e}); median offset from the true position "
        f"(noise): coaddx {np.median([r['c_truth'] for r in rows]):.4f} px, SWarp "
        f"{np.median([r['s_truth'] for r in rows]):.4f} px"
    )
    nonfinite = sum(r["c_nonfinite_inside"] for r in rows)
    print(
        f"coverage: pixels finite in coaddx {sum(r['n_c'] for r in rows)}, weight > 0 in SWarp "
        f"{sum(r['n_s'] for r in rows)}; only SWarp {sum(r['only_s'] for r in rows)}, only "
        f"coaddx {sum(r['only_c'] for r in rows)}; non-finite coaddx pixels inside the "
        f"common interior: {nonfinite}"
    )


BREAKDOWN = (
    "read FITS",
    "input CRC32C",
    "source_grid (WCS map)",
    "warp_on_grid (kernel)",
    "weight stats",
    "write_slot_box (Zarr)",
)


def _print_breakdown(cx: dict) -> None:
    t, calls = cx["timers"].seconds, cx["timers"].calls
    print("coaddx time breakdown (thread-seconds summed over the 2 worker threads unless noted):")
    for label in ("headers + overlap (main thread)", "task total", *BREAKDOWN):
        if label in t:
            share = (
                f"  {100 * t[label] / t['task total']:4.0f} % of task time"
                if (label in BREAKDOWN)
                else ""
            )
            print(f"  {label:<36} {t[label]:7.2f} s  ({calls[label]} calls){share}")
    if "commit (main thread)" in t:
        print(f"  {'commit (main thread)':<36} {t['commit (main thread)']:7.2f} s")
    known = sum(t.get(k, 0.0) for k in BREAKDOWN)
    print(
        f"  {'rest of the tasks (alloc, NaN fill, composite)':<36} {t['task total'] - known:7.2f} s"
    )
    print()


def run_case(geo: Geometry, args: argparse.Namespace, out: Path) -> dict[str, float]:
    """Inputs of one geometry, coaddx and SWarp (every FSCALASTRO_TYPE) alternating, best of
    ``args.repeat``; the report; returns coaddx's ratio to each SWarp mode."""
    folder = make_inputs(out, geo)
    visits, grid_wcs, shape, cat = load_inputs(folder)
    patch = Patch.from_wcs(grid_wcs, shape)
    calexps = [folder / f"calexp_{v['visit']}.fits" for v in visits]
    images = [folder / "swarp" / f"img_{v['visit']}.fits" for v in visits]
    weights = [folder / "swarp" / f"img_{v['visit']}.weight.fits" for v in visits]
    n = len(visits)
    in_mpix = n * geo.ny * geo.nx / 1e6
    grid = "a fixed patch" if geo.patch is not None else "the union"
    print(f"== case {geo.name} ==")
    print(
        f'inputs: {n} exposures of {geo.ny} x {geo.nx} px at {geo.pix_in}"/px (rot '
        f'0-{geo.max_rot:g} deg, dither +-{geo.dither:g}"), {in_mpix:.1f} input Mpix; '
        f"{int(cat['probe'].sum())} probe stars, {int((~cat['probe']).sum())} field stars"
    )
    print(
        f'output grid: TAN {geo.pix_out}"/px, {shape[0]} x {shape[1]} px '
        f"({shape[0] * shape[1] / 1e6:.1f} Mpix), {grid}"
    )
    print(flush=True)

    # coaddx and SWarp alternate, best of --repeat (the machine is shared and noisy); os.sync()
    # between runs keeps one tool's pending disk writes out of the next one's timing. VARIABLE
    # runs last, so that its outputs are the ones compared with coaddx's.
    cx_runs: list[dict] = []
    sw_runs: dict[str, list[dict]] = {m: [] for m in SWARP_MODES}
    work = out / f"bench_warp_swarp-{geo.name}"
    for rep in range(args.repeat):
        os.sync()
        _warm(calexps)
        cx_runs.append(run_coaddx(calexps, patch, out / f"bench_warp-{geo.name}.zarr"))
        r = cx_runs[-1]
        line = (
            f"[{rep + 1}/{args.repeat}] coaddx {r['seconds']:.2f} s ({r['cpu']:.1f} CPU-s, "
            f"sys {r['sys']:.1f}, wrote {r['written'] / 1e9:.2f} GB)"
        )
        for mode in SWARP_MODES:
            os.sync()
            _warm(images + weights)
            sw_runs[mode].append(run_swarp(images, grid_wcs, shape, work, mode))
            s = sw_runs[mode][-1]
            line += (
                f"; SWarp {mode} {s['seconds']:.2f} s ({s['cpu']:.1f}, sys {s['sys']:.1f}, "
                f"wrote {s['written'] / 1e9:.2f} GB)"
            )
        print(f"{line}; load avg {os.getloadavg()[0]:.2f}", flush=True)
    cx = min(cx_runs, key=lambda r: r["seconds"])
    best = {m: min(runs, key=lambda r: r["seconds"]) for m, runs in sw_runs.items()}
    stderr = best["VARIABLE"]["stderr"]
    if stderr:
        print("  SWarp stderr:", stderr[-500:].replace("\n", " | "))

    rate_c = in_mpix / cx["seconds"]
    t = cx["timers"].seconds
    print()
    print(f"{'tool':<46} {'seconds':>8} {'in Mpix/s':>10} {'peak RSS':>10} {'CPU s':>7}")
    print("-" * 86)
    print(
        f"{'coaddx make_warps (Lanczos-3, 2 threads)':<46} {cx['seconds']:8.2f} "
        f"{rate_c:10.2f} {format_bytes(cx['peak']):>10} {cx['cpu']:7.2f}"
    )
    kt = t["warp_on_grid (kernel)"]
    print(f"{'  warp kernel only (warp_on_grid), thread-s':<46} {kt:8.2f} {in_mpix / kt:10.2f}")
    for mode in SWARP_MODES:
        s = best[mode]
        print(
            f"{f'SWarp LANCZOS3, NTHREADS 2, FSCALASTRO {mode}':<46} {s['seconds']:8.2f} "
            f"{in_mpix / s['seconds']:10.2f} {format_bytes(s['peak']):>10} {s['cpu']:7.2f}"
        )
    rp = None
    if importlib.util.find_spec("reproject") is None:
        print("reproject_interp: skipped (reproject is not installed)")
    else:
        os.sync()
        sub = images[: max(1, min(args.reproject_subset, n))]
        rp = run_reproject(sub, grid_wcs, shape, args.reproject_order)
        rate_r = rp["n"] * geo.ny * geo.nx / 1e6 / rp["seconds"]
        label = f"reproject_interp {args.reproject_order} (1 thread)"
        print(
            f"{label:<46} {in_mpix / rate_r:8.2f} {rate_r:10.2f} "
            f"{format_bytes(rp['peak']):>10} {rp['cpu'] * n / rp['n']:7.2f}"
        )
        print(f"  (reproject timed on {rp['n']} of {n} exposures, scaled to all {n})")
    cx_all = ", ".join(f"{r['seconds']:.2f}" for r in cx_runs)
    sw_all = ", ".join(f"{r['seconds']:.2f}" for r in sw_runs["VARIABLE"])
    print(f"  (coaddx runs: {cx_all} s; SWarp VARIABLE runs: {sw_all} s; best of each shown)")
    print("-" * 86)
    ratios = {}
    for mode in SWARP_MODES:
        ratios[mode] = rate_c / (in_mpix / best[mode]["seconds"])
        verdict = ""
        if mode == "VARIABLE":  # the same per-pixel area semantics as coaddx
            verdict = f"   target >= {TARGET_SWARP:g}x   "
            verdict += "PASS" if ratios[mode] >= TARGET_SWARP else "FAIL"
        print(f"coaddx / SWarp {mode:<8} (input Mpix/s): {ratios[mode]:6.2f}x{verdict}")
    if rp is not None:
        r_r = rate_c / (rp["n"] * geo.ny * geo.nx / 1e6 / rp["seconds"])
        print(
            f"coaddx / reproject       (input Mpix/s): {r_r:6.1f}x   target >= "
            f"{TARGET_REPROJECT:g}x   {'PASS' if r_r >= TARGET_REPROJECT else 'FAIL'}"
        )
    print()
    _print_breakdown(cx)
    if not args.no_compare:
        res = compare(
            out / f"bench_warp-{geo.name}.zarr",
            best["VARIABLE"]["dir"],
            visits,
            grid_wcs,
            shape,
            cat,
        )
        _print_agreement(res, "VARIABLE")
    print(flush=True)
    return ratios


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--case",
        choices=(*GEOMETRIES, "all"),
        default="all",
        help="geometry: 'patch' (8 x 2048^2 onto a 4096^2 patch), 'wide' (16 x 4096 x 2048 "
        'at 0.263"/px onto their union at 0.2"/px) or both',
    )
    ap.add_argument("--exposures", type=int, default=None, help="override the case's count")
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument(
        "--reproject-subset",
        type=int,
        default=2,
        help="exposures reprojected (timed, then scaled per input Mpix)",
    )
    ap.add_argument("--reproject-order", default="bicubic", choices=("bilinear", "bicubic"))
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="coaddx and SWarp runs (alternating); the best is reported",
    )
    ap.add_argument("--no-compare", action="store_true", help="skip the agreement check")
    args = ap.parse_args(argv)
    if args.exposures is not None and args.exposures < 1:
        ap.error("--exposures must be >= 1")

    tune_malloc()
    warnings.simplefilter("ignore", category=UserWarning)
    out = args.out.resolve()
    import dask

    print(
        f"CPUs: {os.cpu_count()}; dask scheduler: "
        f"{dask.config.get('scheduler', 'threads (default)')}; SWarp: {swarp_peer.swarp_version()}"
    )
    cases = list(GEOMETRIES) if args.case == "all" else [args.case]
    summary = {}
    for name in cases:
        geo = GEOMETRIES[name]
        if args.exposures is not None:
            geo = replace(geo, exposures=args.exposures)
        summary[geo.key] = run_case(geo, args, out)
    print("summary: coaddx / SWarp (input Mpix/s, same run, best of each)")
    for key, ratios in summary.items():
        parts = ", ".join(f"{m} {r:.2f}x" for m, r in ratios.items())
        print(f"  {key:<12} {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
