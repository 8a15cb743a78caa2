"""Synthetic deep-field data with known truth: direct warps, calexps and artifact catalogues.

:func:`simulate` renders ``n_visits`` exposures of one patch: static stars (Moffat or Gaussian
PSF, a few saturating) and galaxies (exponential and de Vaucouleurs profiles as Gaussian
mixtures, convolved with the visit PSF), a variable star, one-visit transients, satellite
streaks and cosmic rays, with per-visit seeing, zero point, sky, dithers and rotation of a
two-detector camera, sky + source + read noise and a matching variance plane, and the mask
planes BAD, SAT, CR, EDGE and NO_DATA. Everything is drawn from ``seed``; the outputs are
bit-identical for a seed whatever ``workers`` is.

Units. The warp store holds sky-subtracted images in nJy (variance nJy^2); calexps hold
sky-subtracted counts (electrons, gain 1) with ``PHOTCALIB`` nJy per count. Catalogue fluxes
are total fluxes in nJy: every source profile is evaluated at pixel centres inside a
truncation radius holding >= 99.9 % of its flux and normalised so that its pixels sum to the
catalogue flux (:func:`enclosed_flux_fraction` gives the fraction inside an aperture).

Geometry. Patch pixels and detector pixels are related by exact homographies (the map between
two gnomonic projections is projective), so warps and calexps render the same sky. The warp
and artifact stores' ``wcs`` attribute is the tract WCS (design.md): array pixel (row i,
column j) is tract pixel (``y[i]``, ``x[j]``) through the stores' coordinates. Scene planning
lives in :mod:`coaddx.sim.scene`, rendering a visit in :mod:`coaddx.sim.visits` (numba kernels
in :mod:`coaddx.sim.render`), the truth tables in :mod:`coaddx.sim.truth`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from coaddx.constants import FWHM_TO_SIGMA, MOFFAT_BETA
from coaddx.errors import ConfigError, StoreError
from coaddx.io.zarr.warp_store import WarpStore
from coaddx.model.masks import mask_planes as default_mask_planes
from coaddx.model.skymap import Patch, Tract, wcs_to_header_string
from coaddx.settings import store_chunk
from coaddx.sim.chromatic import make_dcr_spec
from coaddx.sim.header_errors import HeaderError, draw_header_error
from coaddx.sim.render import moffat_alpha
from coaddx.sim.scene import PIXEL_SCALE, Scene, plan_scene, seeded_rng, without_artifacts
from coaddx.sim.truth import truth_tables
from coaddx.sim.visits import ARTIFACT_BITS, T_Psf, psf_image, render_visit
from coaddx.warp.weights import visit_weight_stats

__all__ = ["ARTIFACT_BITS", "Simulation", "enclosed_flux_fraction", "psf_image", "simulate"]


# -- public helpers ------------------------------------------------------------------------


def enclosed_flux_fraction(
    radius: float, fwhm: float, psf: T_Psf = "moffat", beta: float = MOFFAT_BETA
) -> float:
    """Fraction of a point source's flux inside a circle of ``radius`` pixels.

    For the untruncated profile; the simulated profiles hold >= 99.9 % of their flux inside
    their truncation radius, renormalised, so the true fraction is at most 0.1 % higher.

    Examples
    --------
    >>> round(enclosed_flux_fraction(25.0, 5.0), 4)
    0.9986
    """
    if psf == "moffat":
        alpha = moffat_alpha(fwhm, beta)
        return 1.0 - (1.0 + (radius / alpha) ** 2) ** (1.0 - beta)
    sigma = fwhm * FWHM_TO_SIGMA
    return 1.0 - math.exp(-0.5 * (radius / sigma) ** 2)


def _store_wcs(patch: Patch) -> str:
    """The stores' ``wcs`` attribute: the tract WCS as a FITS header string (design.md).

    Array pixel (row i, column j) is tract pixel (``y[i]``, ``x[j]``).
    """
    return wcs_to_header_string(patch.tract_wcs)


def _create_artifacts(path: Path, scene: Scene) -> Any:
    import zarr
    from zarr.codecs import ZstdCodec

    ny, nx = scene.patch.shape
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    arr = root.create_array(
        "artifacts",
        shape=(len(scene.visits), ny, nx),
        dtype="u1",
        chunks=(1, min(512, ny), min(512, nx)),
        fill_value=0,
        compressors=[ZstdCodec(level=3)],
        dimension_names=("visit", "y", "x"),
    )
    coords = {
        "visit": np.array([v.visit for v in scene.visits], dtype=np.int64),
        "y": scene.patch.y,
        "x": scene.patch.x,
    }
    for name, values in coords.items():
        root.create_array(name, shape=values.shape, dtype="i8", dimension_names=(name,))[:] = values
    root.attrs.update(
        {
            "bits": ARTIFACT_BITS,
            "wcs": _store_wcs(scene.patch),
            "description": "per-visit artifact truth on the patch grid: 1 streak "
            "(within its FWHM of the line), 2 transient (within the "
            "PSF FWHM), 4 unmasked cosmic ray, 8 masked cosmic ray",
        }
    )
    return arr


# -- the public entry point -----------------------------------------------------------------


@dataclass(frozen=True)
class Simulation:
    """What :func:`simulate` wrote: paths, the patch and the per-visit metadata.

    Attributes
    ----------
    out, warps, truth : Path
        The output folder, its warp store (group ``direct``) and its truth folder.
    calexps : tuple of Path
        ``calexp/calexp_<visit>_<detector>.fits`` files (empty with ``calexps=False``).
    patch, tract : Patch, Tract
        The simulated grid (the store's ``x``, ``y`` are ``patch.x``, ``patch.y``; its
        ``wcs`` attribute is ``patch.tract_wcs``).
    visits : astropy.table.Table
        Per-visit metadata (also ``truth/visits.ecsv``): visit, mjd, band, airmass,
        parallactic_angle, exptime, psf_fwhm (px), photo_calib (nJy/count), zero_point (AB
        mag of 1 count), sky_level (nJy/px), sky_counts, noise_sigma (sky-only nJy/px),
        detectors, dithers, variable_flux and artifact counts; with ``dcr=True`` also
        elevation and theta (degrees).

    Truth tables are ECSV files under ``truth`` (:meth:`read_truth`); positions are given as
    sky (``ra``, ``dec``), tract pixels (``x``, ``y``: the store's coordinates) and
    patch-array pixels (``x_patch``, ``y_patch``: column, row of the store arrays). Fluxes
    are total fluxes in nJy.
    """

    out: Path
    warps: Path
    calexps: tuple[Path, ...]
    truth: Path
    patch: Patch = field(repr=False)
    tract: Tract = field(repr=False)
    visits: Table = field(repr=False, compare=False)
    seed: int = 0
    psf: str = "moffat"

    @property
    def sources(self) -> Path:
        return self.truth / "sources.ecsv"

    @property
    def variable(self) -> Path:
        return self.truth / "variable.ecsv"

    @property
    def transients(self) -> Path:
        return self.truth / "transients.ecsv"

    @property
    def streaks(self) -> Path:
        return self.truth / "streaks.ecsv"

    @property
    def artifacts(self) -> Path:
        return self.truth / "artifacts.zarr"

    @property
    def refcat(self) -> Path:
        """A reference catalogue of the true stars (``ra``, ``dec``, ``phot_g_mean_mag``)."""
        return self.truth / "refcat.fits"

    def read_truth(self, name: str) -> Table:
        """One truth table: ``sources``, ``variable``, ``transients``, ``streaks``, ``visits``."""
        return Table.read(self.truth / f"{name}.ecsv", format="ascii.ecsv")


def _check_args(n_visits: int, shape: tuple[int, int], psf: str, workers: int | None) -> None:
    if int(n_visits) < 1:
        raise ConfigError(f"simulate: n_visits must be >= 1, got {n_visits}")
    if len(shape) != 2 or min(shape) < 64:
        raise ConfigError(f"simulate: shape must be (rows, columns) >= 64 each, got {shape}")
    if psf not in ("moffat", "gaussian"):
        raise ConfigError(f"simulate: psf must be 'moffat' or 'gaussian', got {psf!r}")
    if workers is not None and int(workers) < 1:
        raise ConfigError(f"simulate: workers must be >= 1, got {workers}")


def _prepare_output(out: Path, overwrite: bool) -> Path:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise StoreError(f"{out} exists and is not empty; pass overwrite=True to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    (tmp / "truth").mkdir(parents=True)
    return tmp


def _publish(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _progress_callback(progress: Callable[[int, int], None] | bool | None):
    if progress is True:
        return lambda done, total: print(f"simulate: {done}/{total} visits", file=sys.stderr)
    return progress or None


def _write_visits(
    scene: Scene,
    tmp: Path,
    seed: int,
    workers: int,
    calexps: bool,
    progress: Callable[[int, int], None] | None,
    errors: dict[tuple[int, int], HeaderError],
) -> list[Path]:

    patch, planes = scene.patch, default_mask_planes()
    simulation: dict[str, Any] = {"seed": seed, "psf": scene.psf, "band": scene.band}
    if scene.dcr is not None:
        simulation["dcr"] = scene.dcr.attrs()
    attrs = {
        "tract": scene.tract.tract_id,
        "patch_index": patch.index,
        "pixel_scale": PIXEL_SCALE,
        "simulation": simulation,
    }
    store = WarpStore.for_patch(
        tmp / "warps.zarr",
        patch,
        warp_type="direct",
        mask_planes=planes,
        chunk=store_chunk(),
        attrs=attrs,
    )
    art_arr = _create_artifacts(tmp / "truth" / "artifacts.zarr", scene)
    calexp_dir = tmp / "calexp" if calexps else None
    paths: list[Path] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        queue: deque = deque()
        for v in scene.visits:
            mine = {d: e for (i, d), e in errors.items() if i == v.index}
            queue.append((v, pool.submit(render_visit, scene, v, seed, planes, calexp_dir, mine)))
            while len(queue) > workers or (queue and v is scene.visits[-1]):
                done, future = queue.popleft()
                (image, var, mask, art), written = future.result()
                stats = visit_weight_stats(
                    np.asarray(var, np.float32), np.asarray(mask).astype(np.int32), planes
                )
                store.append_visit(
                    done.visit, image, var, mask, dict(done.meta), weight_stats=stats
                )
                art_arr[done.index] = art
                paths += written
                if progress:
                    progress(done.index + 1, len(scene.visits))
    store.close({"operation": "coaddx.simulate", "seed": seed, "n_visits": len(scene.visits)})
    return paths


def simulate(
    out: str | os.PathLike[str],
    *,
    n_visits: int = 16,
    shape: tuple[int, int] = (1024, 1024),
    seed: int = 0,
    psf: T_Psf = "moffat",
    calexps: bool = True,
    artifacts: bool = True,
    n_stars: int | None = None,
    n_galaxies: int | None = None,
    band: str = "r",
    workers: int | None = None,
    progress: Callable[[int, int], None] | bool | None = None,
    overwrite: bool = False,
    dcr: bool = False,
    effective_wavelength: float | None = None,
    bandwidth: float | None = None,
    n_subfilters: int = 3,
    wcs_error: float = 0.0,
    zero_point_error: float = 0.0,
) -> Simulation:
    """Simulate ``n_visits`` exposures of one patch with known truth.

    Parameters
    ----------
    out : path-like
        Output folder (built under a temporary name, then moved into place):
        ``warps.zarr`` (direct warps, nJy), ``calexp/calexp_<visit>_<detector>.fits``
        (counts), ``truth/`` (``sources``, ``variable``, ``transients``, ``streaks``,
        ``visits`` ECSV tables and ``artifacts.zarr``) and ``simulation.json``.
    n_visits : int
        Number of visits (ids 1000, 1001, ...).
    shape : (int, int)
        Patch outer shape (rows, columns); the tract is built so that its central patch has
        exactly this shape (border 100 px, or shape // 4 below 400 px).
    seed : int
        Everything is drawn from this seed; the outputs do not depend on ``workers``.
    psf : {"moffat", "gaussian"}
        PSF profile (Moffat beta = 3); FWHM 3.5-6 px varying per visit.
    calexps : bool
        Also write the per-detector calexp FITS files (one or two detectors per visit).
    artifacts : bool
        Add streaks, transients and cosmic rays (False: none; the variable star stays).
    n_stars, n_galaxies : int, optional
        Sources over the patch area (default 200 and 500 per 1024^2 pixels); the catalogue
        covers every pixel any detector sees at the same density.
    band : str
        Band name written into the metadata.
    workers : int, optional
        Threads rendering visits in parallel (default: the CPU count). Appends are sequential.
    progress : callable(done, total) or bool, optional
        Called after each visit is written; True prints to stderr.
    overwrite : bool
        Replace an existing non-empty ``out``.
    dcr : bool
        Differential chromatic refraction (:mod:`coaddx.sim.chromatic`): airmass uniform in
        1.0-2.0 (``elevation`` = degrees(arcsin(1/airmass))), parallactic angle uniform in
        [-180, 180) degrees, stars with power-law spectra ``f_lambda ~ (lambda /
        effective_wavelength) ** alpha``, ``alpha`` uniform in [-4, 4] (galaxies, the variable
        star and transients flat), every source rendered as fine wavelength bins, each shifted
        along the direction to the zenith by its refraction (LSST_SITE, default weather). The
        calexps carry the same sky shift (positions are shifted on the sky, then mapped into
        each detector). The visit records, calexp headers and ``truth/visits`` get
        ``elevation``; ``truth/visits`` also the zenith direction ``theta`` in the patch
        frame; ``truth/sources`` the slope ``alpha`` and the true sub-filter fluxes
        ``flux_sub0`` .. ``flux_sub{n_subfilters-1}`` (nJy, bluest first, summing to
        ``flux``). Every warp and calexp mask gets DETECTED where the noiseless source image
        exceeds 2 x the sky sigma, grown by 2 px. The store's ``simulation`` attribute and
        ``simulation.json`` record the band, the observatory and the weather (None: default).
    effective_wavelength, bandwidth : float
        The band (nm), required with ``dcr=True``.
    n_subfilters : int
        Sub-filters of the truth fluxes (4.3 of algorithms.md; the rendering uses at least
        4 fine bins per sub-filter).
    wcs_error, zero_point_error : float
        Errors written into the calexp headers for :func:`coaddx.calibrate` to remove
        (:mod:`coaddx.sim.header_errors`): each header WCS shifted by ``wcs_error`` arcsec in
        a random direction, rotated by up to ``0.05 * wcs_error`` degrees and scaled by up
        to ``5e-4 * wcs_error``; each PHOTCALIB off by a normal draw of ``zero_point_error``
        mag. The pixels and the truth are those of the same seed without them;
        ``truth/calexp_errors.ecsv`` lists the draws. ``truth/refcat.fits`` (always
        written) is a reference catalogue of the true stars: ``ra``, ``dec`` (deg) and
        ``phot_g_mean_mag`` (AB mag in ``band``), as :func:`coaddx.read_reference_catalog`
        reads by default.

    Returns
    -------
    Simulation

    Examples
    --------
    >>> sim = simulate("sim", n_visits=4, shape=(256, 256), calexps=False)  # doctest: +SKIP
    >>> sim.read_truth("transients")["visit", "x_patch", "y_patch", "flux"]  # doctest: +SKIP
    """
    shape = (int(shape[0]), int(shape[1]))
    _check_args(n_visits, shape, psf, workers)
    for name, value in (("wcs_error", wcs_error), ("zero_point_error", zero_point_error)):
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"simulate: {name} must be a finite number >= 0, got {value}")
    dcr_spec = make_dcr_spec(dcr, effective_wavelength, bandwidth, n_subfilters)
    workers = int(workers or os.cpu_count() or 1)
    out = Path(out)
    scene = plan_scene(int(seed), int(n_visits), shape, psf, band, n_stars, n_galaxies, dcr_spec)
    if not artifacts:
        scene = without_artifacts(scene)
    tmp = _prepare_output(out, overwrite)
    try:
        tables = truth_tables(scene)
        errors = _header_errors(scene, int(seed), float(wcs_error), float(zero_point_error))
        if errors:
            tables["calexp_errors"] = _errors_table(errors, scene)
        for name, table in tables.items():
            table.write(tmp / "truth" / f"{name}.ecsv", format="ascii.ecsv")
        reference_catalog(tables["sources"]).write(tmp / "truth" / "refcat.fits")
        params = {
            "n_visits": n_visits,
            "shape": list(shape),
            "seed": seed,
            "psf": psf,
            "calexps": calexps,
            "artifacts": artifacts,
            "n_stars": n_stars,
            "n_galaxies": n_galaxies,
            "band": band,
            "wcs_error": wcs_error,
            "zero_point_error": zero_point_error,
        }
        if dcr_spec is not None:
            params["dcr"] = dcr_spec.attrs()
        (tmp / "simulation.json").write_text(json.dumps(params, indent=1))
        paths = _write_visits(
            scene, tmp, int(seed), workers, calexps, _progress_callback(progress), errors
        )
        _consolidate(tmp / "truth" / "artifacts.zarr")
        _publish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return Simulation(
        out=out,
        warps=out / "warps.zarr",
        calexps=tuple(out / p.relative_to(tmp) for p in paths),
        truth=out / "truth",
        patch=scene.patch,
        tract=scene.tract,
        visits=tables["visits"],
        seed=int(seed),
        psf=psf,
    )


def _header_errors(
    scene: Scene, seed: int, wcs_error: float, zero_point_error: float
) -> dict[tuple[int, int], HeaderError]:
    """(visit index, detector id) -> the errors of its calexp header; empty without errors."""
    if wcs_error == 0 and zero_point_error == 0:
        return {}
    return {
        (v.index, d.id): draw_header_error(
            seeded_rng(seed, 5, v.index, d.id), wcs_error, zero_point_error
        )
        for v in scene.visits
        for d in v.detectors
    }


def _errors_table(errors: dict[tuple[int, int], HeaderError], scene: Scene) -> Table:
    visits = [v.visit for v in scene.visits]
    rows = [(visits[i], d, *e) for (i, d), e in sorted(errors.items())]
    return Table(rows=rows, names=("visit", "detector", *HeaderError._fields))


def reference_catalog(sources: Table) -> Table:
    """The stars of a ``sources`` truth table as a Gaia-like reference catalogue."""
    stars = sources[sources["type"] == "star"]
    table = Table(
        {
            "ra": np.asarray(stars["ra"]),
            "dec": np.asarray(stars["dec"]),
            "phot_g_mean_mag": np.asarray(stars["mag"]),
        }
    )
    table["ra"].unit = table["dec"].unit = "deg"
    table["phot_g_mean_mag"].unit = "mag"
    return table


def _consolidate(path: Path) -> None:
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(path))
