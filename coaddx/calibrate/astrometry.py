"""Astrometric calibration (algorithms.md 7, step 1): an offset-and-rotation search, matching
within ``match_radius_pix``, and a TAN-SIP fit with iterative sigma rejection.

The header WCS can be off by more than the match radius (a 2" shift, a 0.1 degree rotation and
the SIP terms move stars by several pixels), so the reference stars are first projected with
the header WCS and the detections' offsets from them are voted on in a 2-D histogram, for a
ladder of trial rotations about the image centre (LSST's matcher tolerates 250 px and
1 degree). The best vote fixes the approximate shift and rotation; matches are then nearest
neighbours within ``match_radius_pix`` (a k-d tree), and the WCS is fitted
(:func:`~coaddx.calibrate.wcs_fit.fit_tan_sip`: TAN-SIP of order ``sip_order``, CRPIX at the
image centre, by linear least squares), rejected at ``rejection_sigma`` and refitted, the
matches being redone with each new WCS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from coaddx.calibrate.config import CalibrateConfig
from coaddx.calibrate.wcs_fit import fit_tan_sip
from coaddx.errors import CalibrationError

__all__ = ["AstrometryResult", "fit_astrometry", "offset_search"]


@dataclass(frozen=True)
class AstrometryResult:
    """The fitted ``wcs``, the ``matches`` (source index, reference index) used, the rms
    distance of the used matches (arcsec), their number and the fit iterations."""

    wcs: WCS
    matches: np.ndarray
    rms_arcsec: float
    n_used: int
    iterations: int


def _rotate(x: np.ndarray, y: np.ndarray, centre: tuple[float, float], angle: float):
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = x - centre[0], y - centre[1]
    return centre[0] + c * dx - s * dy, centre[1] + s * dx + c * dy


def offset_search(
    x: np.ndarray,
    y: np.ndarray,
    ref_x: np.ndarray,
    ref_y: np.ndarray,
    *,
    centre: tuple[float, float],
    max_offset: float,
    max_rotation_deg: float,
    bin_size: float,
    rotation_step_deg: float = 0.05,
) -> tuple[float, float, float, int]:
    """The (rotation in radians, dx, dy) that best maps the reference positions onto the
    detections, and its vote count: for each trial rotation of the references about
    ``centre``, every detection-minus-reference offset within ``max_offset`` is binned at
    ``bin_size``; the fullest bin (refined by the mean offset of its votes) wins."""
    best = (0.0, 0.0, 0.0, 0)
    n_rot = round(max_rotation_deg / rotation_step_deg)
    for k in range(-n_rot, n_rot + 1):
        angle = math.radians(k * rotation_step_deg)
        rx, ry = _rotate(ref_x, ref_y, centre, angle)
        dx = (x[:, None] - rx[None, :]).ravel()
        dy = (y[:, None] - ry[None, :]).ravel()
        near = (np.abs(dx) <= max_offset) & (np.abs(dy) <= max_offset)
        dx, dy = dx[near], dy[near]
        if dx.size == 0:
            continue
        edges = np.arange(-max_offset, max_offset + bin_size, bin_size)
        hist, ex, ey = np.histogram2d(dx, dy, bins=(edges, edges))
        i, j = np.unravel_index(int(np.argmax(hist)), hist.shape)
        votes = int(hist[i, j])
        if votes > best[3]:
            sel = (dx >= ex[i] - bin_size) & (dx < ex[i + 1] + bin_size)
            sel &= (dy >= ey[j] - bin_size) & (dy < ey[j + 1] + bin_size)
            best = (angle, float(np.median(dx[sel])), float(np.median(dy[sel])), votes)
    return best


def _affine(rx, ry, pairs, x, y):
    """The reference pixels mapped by the least-squares affine transform of the pairs."""
    a = np.column_stack([rx[pairs[:, 1]], ry[pairs[:, 1]], np.ones(len(pairs))])
    cx, *_ = np.linalg.lstsq(a, x[pairs[:, 0]], rcond=None)
    cy, *_ = np.linalg.lstsq(a, y[pairs[:, 0]], rcond=None)
    full = np.column_stack([rx, ry, np.ones(rx.size)])
    return full @ cx, full @ cy


def _match(x, y, rx, ry, radius):
    """Nearest reference within ``radius`` of each detection, one detection per reference."""
    tree = cKDTree(np.column_stack([rx, ry]))
    dist, idx = tree.query(np.column_stack([x, y]), distance_upper_bound=radius)
    ok = np.isfinite(dist)
    src, ref, dist = np.flatnonzero(ok), idx[ok], dist[ok]
    order = np.argsort(dist)
    _, first = np.unique(ref[order], return_index=True)  # closest detection per reference
    keep = order[first]
    return np.column_stack([src[keep], ref[keep]])


def fit_astrometry(
    x: np.ndarray,
    y: np.ndarray,
    ref_ra: np.ndarray,
    ref_dec: np.ndarray,
    wcs: WCS,
    shape: tuple[int, int],
    config: CalibrateConfig,
    *,
    ref_mag: np.ndarray,
    flux: np.ndarray | None = None,
    where: str = "exposure",
) -> AstrometryResult:
    """Fit a TAN-SIP WCS to detections (``x``, ``y``, 0-based pixels; ``flux`` ranks them)
    and reference stars (degrees; ``ref_mag`` ranks them), starting from the header ``wcs``.
    ``CalibrationError`` names the exposure and the figure when too few stars match or the
    fit's scatter exceeds the limits."""
    ny, nx = shape
    centre = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    rx, ry = wcs.all_world2pix(ref_ra, ref_dec, 0)
    inside = np.isfinite(rx) & np.isfinite(ry)
    rx, ry = np.where(inside, rx, 1e9), np.where(inside, ry, 1e9)
    # the search votes with the brightest detections and the brightest reference stars
    # near the image (about as many as detections), so faint stars do not drown the peak
    pad = config.max_offset_pix
    near = (rx > -pad) & (rx < nx + pad) & (ry > -pad) & (ry < ny + pad)
    order = np.flatnonzero(near)[np.argsort(ref_mag[near], kind="stable")]
    n_src = min(x.size, 200)
    bright_src = np.argsort(-np.asarray(flux))[:n_src] if flux is not None else np.arange(n_src)
    bright_ref = order[: max(3 * n_src, 30)]
    angle, dx, dy, votes = offset_search(
        x[bright_src],
        y[bright_src],
        rx[bright_ref],
        ry[bright_ref],
        centre=centre,
        max_offset=config.max_offset_pix,
        max_rotation_deg=config.max_rotation_deg,
        bin_size=2 * config.match_radius_pix,
    )
    if votes < config.min_matches:
        raise CalibrationError(
            f"{where}: the offset search found {votes} coincident stars, fewer than "
            f"min_matches = {config.min_matches} (within {config.max_offset_pix} px and "
            f"{config.max_rotation_deg} deg of the header WCS)"
        )
    px, py = _rotate(rx, ry, centre, angle)
    px, py = px + dx, py + dy
    for radius in (4 * config.match_radius_pix, config.match_radius_pix):
        pairs = _match(x, y, px, py, radius)
        if len(pairs) >= 3:  # refine: the affine map of the reference pixels onto the detections
            px, py = _affine(rx, ry, pairs, x, y)
    matches = _match(x, y, px, py, config.match_radius_pix)
    current, rms, used = wcs, math.inf, matches
    crpix = ((nx + 1) / 2.0, (ny + 1) / 2.0)  # 1-based: the image centre
    sky = wcs.all_pix2world([[centre[0], centre[1]]], 0)[0]
    crval = (float(sky[0]), float(sky[1]))
    scale = math.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0
    iterations = 0
    for _ in range(config.fit_iterations):
        iterations += 1
        if len(matches) < config.min_matches:
            break
        keep = np.ones(len(matches), bool)
        for _ in range(config.rejection_iterations + 1):
            m = matches[keep]
            try:
                current = fit_tan_sip(
                    x[m[:, 0]],
                    y[m[:, 0]],
                    ref_ra[m[:, 1]],
                    ref_dec[m[:, 1]],
                    crpix=crpix,
                    crval=crval,
                    order=config.sip_order,
                )
            except CalibrationError as exc:
                raise CalibrationError(f"{where}: {exc}") from exc
            fx, fy = current.all_world2pix(ref_ra[matches[:, 1]], ref_dec[matches[:, 1]], 0)
            d = np.hypot(fx - x[matches[:, 0]], fy - y[matches[:, 0]])
            rms = float(np.sqrt(np.mean(d[keep] ** 2)))
            keep = d < max(config.rejection_sigma * rms, 1e-6)
        used = matches[keep]
        rx, ry = current.all_world2pix(ref_ra, ref_dec, 0)
        rx = np.where(np.isfinite(rx), rx, 1e9)
        ry = np.where(np.isfinite(ry), ry, 1e9)
        matches = _match(x, y, rx, ry, config.match_radius_pix)
        scale = math.sqrt(abs(np.linalg.det(current.pixel_scale_matrix))) * 3600.0
    if len(used) < config.min_matches:
        raise CalibrationError(
            f"{where}: {len(used)} astrometric matches within {config.match_radius_pix} px, "
            f"fewer than min_matches = {config.min_matches}"
        )
    fx, fy = current.all_world2pix(ref_ra[used[:, 1]], ref_dec[used[:, 1]], 0)
    dist = np.hypot(fx - x[used[:, 0]], fy - y[used[:, 0]]) * scale
    rms_arcsec = float(np.sqrt(np.mean(dist**2)))
    if (
        rms_arcsec > config.max_scatter_arcsec
        or float(dist.mean()) > config.max_mean_distance_arcsec
    ):
        raise CalibrationError(
            f"{where}: the astrometric fit's scatter is {rms_arcsec:.3f} arcsec rms (mean "
            f"{dist.mean():.3f}), above max_scatter_arcsec = {config.max_scatter_arcsec} or "
            f"max_mean_distance_arcsec = {config.max_mean_distance_arcsec}"
        )
    return AstrometryResult(current, used, rms_arcsec, len(used), iterations)
