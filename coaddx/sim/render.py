"""Rendering kernels for synthetic exposures: PSF/galaxy profiles, artifacts, detector effects.

Pure numpy/numba (no dask, xarray, zarr or IO). The numba kernels are ``nogil`` so that visits
can render in parallel threads; they work in place on ``(rows, columns)`` float32 images,
uint8 artifact-bit planes and uint8 coverage codes. The coverage code of a pixel is a bit set:
1 inside a detector, 2 EDGE, 4 hot BAD column, 8 dead BAD column, 16 saturated.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

import coaddx.kernels  # noqa: F401  (sets up the kernel cache before the kernels below exist)
from coaddx.constants import SIGMA_TO_FWHM
from coaddx.model.psf import moffat_alpha

__all__ = [
    "DEV_MOG",
    "EXP_MOG",
    "GAL_MOGS",
    "MOFFAT_MOG",
    "add_gaussians",
    "add_moffat",
    "add_points",
    "add_streak",
    "add_tracks",
    "bad_and_saturate",
    "bleed_column",
    "coverage",
    "finalize",
    "flag_disks",
    "galaxy_components",
    "galaxy_shapes",
    "moffat_alpha",
    "noise",
    "psf_mog",
    "qmax",
]


# Gaussian mixtures (amplitude, variance in units of r_e^2 or alpha^2), fitted to the radial
# profiles by least squares (Hogg & Lang 2013 style): Sersic n=1 to 6 r_e, n=4 to 8 r_e,
# Moffat beta=3 to 12 alpha. Amplitudes are renormalised to unit sum.
EXP_MOG = (
    np.array([0.000614, 0.007917, 0.053098, 0.217335, 0.4542, 0.265408]),
    np.array([0.002569, 0.018894, 0.082711, 0.282565, 0.830803, 2.252291]),
)
DEV_MOG = (
    np.array(
        [
            2.447426e-04,
            1.700298e-03,
            7.892523e-03,
            2.745972e-02,
            7.567557e-02,
            1.670418e-01,
            2.864776e-01,
            3.407247e-01,
        ]
    ),
    np.array(
        [
            3.135066e-06,
            4.161427e-05,
            3.361725e-04,
            2.207844e-03,
            1.316389e-02,
            7.738470e-02,
            4.957797e-01,
            4.327627e00,
        ]
    ),
)
MOFFAT_MOG = (
    np.array([0.114421, 0.452574, 0.349415, 0.081489]),
    np.array([0.094633, 0.214599, 0.548731, 1.913254]),
)
#: Unit-sum galaxy mixtures indexed by profile code: 0 exponential, 1 de Vaucouleurs.
GAL_MOGS = tuple((a / a.sum(), v) for a, v in (EXP_MOG, DEV_MOG))


# -- profile math (numpy) --------------------------------------------------------------------


def psf_mog(fwhm: float, psf: str, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit-sum Gaussian mixture (amplitudes, variances in px^2) of a Moffat or Gaussian PSF."""
    if psf == "moffat":
        amp, var = MOFFAT_MOG
        return amp / amp.sum(), var * moffat_alpha(fwhm, beta) ** 2
    return np.ones(1), np.array([(fwhm / SIGMA_TO_FWHM) ** 2])


def qmax(peak: np.ndarray, eps: float) -> np.ndarray:
    """Truncation q = r^2/sigma^2 of Gaussians: >= 99.9 % of the flux, out to ``eps`` counts."""
    return np.clip(2.0 * np.log(np.maximum(peak / eps, 1.0)), 2.0 * math.log(1000.0), 60.0)


def add_points(
    model: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    fwhm: float,
    psf: str,
    eps: float,
    beta: float,
) -> None:
    """Add point sources of total ``flux``, truncated where they fall below ``eps``, in place."""
    if psf == "moffat":
        alpha = moffat_alpha(fwhm, beta)
        peak = flux * (beta - 1.0) / (math.pi * alpha * alpha)
        r999 = alpha * math.sqrt(1e-3 ** (1.0 / (1.0 - beta)) - 1.0)
        r_eps = alpha * np.sqrt(np.maximum((peak / eps) ** (1.0 / beta) - 1.0, 0.0))
        rmax = np.clip(r_eps, r999, 2000.0)
        amp = peak / (1.0 - (1.0 + (rmax / alpha) ** 2) ** (1.0 - beta))
        add_moffat(model, x, y, amp, alpha, beta, rmax)
        return
    var = (fwhm / SIGMA_TO_FWHM) ** 2
    peak = flux / (2.0 * math.pi * var)
    q = qmax(peak, eps)
    inv = np.full(x.size, 1.0 / var)
    add_gaussians(model, x, y, peak / (1.0 - np.exp(-0.5 * q)), inv, np.zeros(x.size), inv, q)


def galaxy_shapes(gal: dict[str, np.ndarray], jac: np.ndarray) -> np.ndarray:
    """Unit-r_e covariance of each galaxy in frame pixels, J S J^T: ndarray of shape (n, 2, 2)."""
    th = np.radians(gal["pa"])
    c, s, q2 = np.cos(th), np.sin(th), gal["q"] ** 2
    shape = np.empty((th.size, 2, 2))
    shape[:, 0, 0] = c * c + q2 * s * s
    shape[:, 1, 1] = s * s + q2 * c * c
    shape[:, 0, 1] = shape[:, 1, 0] = c * s * (1.0 - q2)
    return jac @ shape @ jac.transpose(0, 2, 1)


def galaxy_components(
    gal: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    jac: np.ndarray,
    flux: np.ndarray,
    fwhm: float,
    psf: str,
    eps: float,
    beta: float,
) -> tuple[np.ndarray, ...]:
    """Gaussian components ``(x, y, amp, ia, ib, ic, qmax)`` of PSF-convolved galaxies.

    The tuple is the argument list of :func:`add_gaussians` after the image. Galaxy components
    much narrower than the PSF are merged into one point.
    """
    p_amp, p_var = psf_mog(fwhm, psf, beta)
    shapes = galaxy_shapes(gal, jac)
    parts = []
    for prof, (g_amp, g_var) in enumerate(GAL_MOGS):
        idx = np.flatnonzero(gal["profile"] == prof)
        var = g_var[None, :] * gal["r_e"][idx, None] ** 2
        small = var < 0.05 * p_var.min()
        amp = np.c_[(g_amp * small).sum(axis=1), g_amp * ~small]
        var = np.c_[np.zeros(idx.size), var]
        for k in range(p_amp.size):
            cov = var[:, :, None, None] * shapes[idx, None] + p_var[k] * np.eye(2)
            parts.append(
                (np.repeat(idx, amp.shape[1]), (amp * p_amp[k]).ravel(), cov.reshape(-1, 2, 2))
            )
    idx = np.concatenate([p[0] for p in parts])
    frac = np.concatenate([p[1] for p in parts])
    cov = np.concatenate([p[2] for p in parts])
    keep = frac > 0
    idx, frac, cov = idx[keep], frac[keep], cov[keep]
    det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] ** 2
    peak = flux[idx] * frac / (2.0 * math.pi * np.sqrt(det))
    q = qmax(peak, eps)
    return (
        x[idx],
        y[idx],
        peak / (1.0 - np.exp(-0.5 * q)),
        cov[:, 1, 1] / det,
        -cov[:, 0, 1] / det,
        cov[:, 0, 0] / det,
        q,
    )


# -- numba kernels (nogil: visits render in parallel threads) --------------------------------


@nb.njit(nogil=True, cache=True)
def add_gaussians(img, xc, yc, amp, ia, ib, ic, qmax):  # pragma: no cover - numba
    """Add elliptical Gaussians ``amp * exp(-q/2)`` over ``q <= qmax``, in place.

    ``q = [dx dy] [[ia ib] [ib ic]] [dx dy]^T``; evaluated row by row with a multiplicative
    recurrence (no exp per pixel).
    """
    ny, nx = img.shape
    for k in range(xc.size):
        a, b, c, q = ia[k], ib[k], ic[k], qmax[k]
        ey = math.sqrt(q * a / (a * c - b * b))
        y0 = max(0, math.ceil(yc[k] - ey))
        y1 = min(ny - 1, math.floor(yc[k] + ey))
        m = math.exp(-a)
        for y in range(y0, y1 + 1):
            dy = y - yc[k]
            disc = (b * dy) ** 2 - a * (c * dy * dy - q)
            if disc < 0.0:
                continue
            s = math.sqrt(disc)
            x0 = max(0, math.ceil(xc[k] + (-b * dy - s) / a))
            x1 = min(nx - 1, math.floor(xc[k] + (-b * dy + s) / a))
            if x1 < x0:
                continue
            dx = x0 - xc[k]
            g = amp[k] * math.exp(-0.5 * (a * dx * dx + 2.0 * b * dx * dy + c * dy * dy))
            r = math.exp(-0.5 * (a * (2.0 * dx + 1.0) + 2.0 * b * dy))
            for x in range(x0, x1 + 1):
                img[y, x] += g
                g *= r
                r *= m


@nb.njit(nogil=True, cache=True)
def add_moffat(img, xc, yc, amp, alpha, beta, rmax):  # pragma: no cover - numba
    """Add round Moffat profiles ``amp * (1 + r^2/alpha^2)^-beta`` inside ``r <= rmax``."""
    ny, nx = img.shape
    inv_a2 = 1.0 / (alpha * alpha)
    for k in range(xc.size):
        r = rmax[k]
        y0 = max(0, math.ceil(yc[k] - r))
        y1 = min(ny - 1, math.floor(yc[k] + r))
        for y in range(y0, y1 + 1):
            dy = y - yc[k]
            rem = r * r - dy * dy
            if rem < 0.0:
                continue
            s = math.sqrt(rem)
            x0 = max(0, math.ceil(xc[k] - s))
            x1 = min(nx - 1, math.floor(xc[k] + s))
            for x in range(x0, x1 + 1):
                dx = x - xc[k]
                t = 1.0 + (dx * dx + dy * dy) * inv_a2
                v = 1.0 / (t * t * t) if beta == 3.0 else t**-beta
                img[y, x] += amp[k] * v


@nb.njit(nogil=True, cache=True)
def add_streak(img, art, xa, ya, xb, yb, peak, sigma, flag_width, bit):  # pragma: no cover
    """Add a Gaussian-profile line segment; set ``bit`` within ``flag_width`` of it."""
    ny, nx = img.shape
    length = math.hypot(xb - xa, yb - ya)
    ux, uy = (xb - xa) / length, (yb - ya) / length
    reach = max(5.0 * sigma, flag_width)
    for y in range(ny):
        py = y - ya
        if abs(uy) > 1e-9:
            lo = xa + (py * ux - reach) / uy
            hi = xa + (py * ux + reach) / uy
            x0, x1 = max(0, math.ceil(min(lo, hi))), min(nx - 1, math.floor(max(lo, hi)))
        elif abs(py) <= reach:
            x0, x1 = 0, nx - 1
        else:
            continue
        for x in range(x0, x1 + 1):
            px = x - xa
            t = px * ux + py * uy
            d = abs(px * uy - py * ux)
            if t < 0.0 or t > length or d > reach:
                continue
            img[y, x] += peak * math.exp(-0.5 * (d / sigma) ** 2)
            if d <= flag_width:
                art[y, x] |= bit


@nb.njit(nogil=True, cache=True)
def flag_disks(art, xc, yc, radius, bit):  # pragma: no cover - numba
    """Set ``bit`` in ``art`` on the pixels within ``radius`` of each centre."""
    ny, nx = art.shape
    for k in range(xc.size):
        r = radius[k]
        for y in range(max(0, math.ceil(yc[k] - r)), min(ny - 1, math.floor(yc[k] + r)) + 1):
            for x in range(max(0, math.ceil(xc[k] - r)), min(nx - 1, math.floor(xc[k] + r)) + 1):
                if (x - xc[k]) ** 2 + (y - yc[k]) ** 2 <= r * r:
                    art[y, x] |= bit


@nb.njit(nogil=True, cache=True)
def add_tracks(img, art, x0, y0, x1, y1, energy, bit):  # pragma: no cover - numba
    """Deposit cosmic-ray tracks (charge proportional to path length, nearest pixel)."""
    ny, nx = img.shape
    for k in range(x0.size):
        length = math.hypot(x1[k] - x0[k], y1[k] - y0[k])
        n = max(1, math.ceil(length / 0.25))
        for i in range(n):
            t = (i + 0.5) / n
            ix = round(x0[k] + t * (x1[k] - x0[k]))
            iy = round(y0[k] + t * (y1[k] - y0[k]))
            if 0 <= ix < nx and 0 <= iy < ny:
                img[iy, ix] += energy[k] / n
                art[iy, ix] |= bit[k]


@nb.njit(nogil=True, cache=True)
def coverage(code, hom, det_w, det_h, edge, bad_det, bad_col, bad_r0, bad_r1, bad_hot):
    """Coverage code per frame pixel: 1 in a detector, 2 EDGE, 4 hot / 8 dead BAD column.

    ``hom[d]`` is the 3x3 homography from frame pixels to the pixels of detector ``d``.
    """
    ny, nx = code.shape
    for y in range(ny):
        for x in range(nx):
            for d in range(hom.shape[0]):
                h = hom[d]
                w = h[2, 0] * x + h[2, 1] * y + h[2, 2]
                uu = (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / w
                vv = (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / w
                if not (-0.5 <= uu < det_w[d] - 0.5 and -0.5 <= vv < det_h[d] - 0.5):
                    continue
                c = 1
                if (
                    uu < edge - 0.5
                    or vv < edge - 0.5
                    or uu >= det_w[d] - edge - 0.5
                    or vv >= det_h[d] - edge - 0.5
                ):
                    c |= 2
                for b in range(bad_det.size):
                    if (
                        bad_det[b] == d
                        and abs(uu - bad_col[b]) < 0.5
                        and bad_r0[b] - 0.5 <= vv < bad_r1[b] - 0.5
                    ):
                        c |= 4 if bad_hot[b] else 8
                code[y, x] = c
                break


@nb.njit(nogil=True, cache=True)
def bad_and_saturate(model, code, sky, full_well, hot):  # pragma: no cover - numba
    """Apply BAD columns, clip at full well and bleed the excess along columns, in place.

    Hot columns get ``+hot``, dead ones ``x0.1``; saturated pixels get code bit 16.
    """
    ny, nx = model.shape
    level = full_well - sky
    hit = np.zeros(nx, dtype=np.bool_)
    for y in range(ny):
        for x in range(nx):
            if code[y, x] & 8:
                model[y, x] *= 0.1
            if code[y, x] & 4:
                model[y, x] += hot
            if model[y, x] > level:
                hit[x] = True
    for x in range(nx):
        if hit[x]:
            bleed_column(model, code, x, level)


@nb.njit(nogil=True, cache=True)
def bleed_column(model, code, x, level):  # pragma: no cover - numba
    """Clip column ``x`` at ``level``, sharing each run's excess charge up and down."""
    ny = model.shape[0]
    y = 0
    while y < ny:
        if model[y, x] <= level:
            y += 1
            continue
        start, excess = y, 0.0
        while y < ny and model[y, x] > level:
            excess += model[y, x] - level
            model[y, x] = level
            code[y, x] |= 16
            y += 1
        for step, yy in ((-1, start - 1), (1, y)):
            rem = 0.5 * excess
            while rem > 0.0 and 0 <= yy < ny and model[yy, x] < level:
                add = min(rem, level - model[yy, x])
                model[yy, x] += add
                rem -= add
                if model[yy, x] >= level:
                    code[yy, x] |= 16
                yy += step


@nb.njit(nogil=True, cache=True)
def noise(model, z, sky, read_var, gain):  # pragma: no cover - numba
    """In place: ``z <- model + sqrt(var) z`` (the image), ``model <- var`` (counts^2)."""
    ny, nx = model.shape
    for y in range(ny):
        for x in range(nx):
            var = max(model[y, x] + sky, 0.0) / gain + read_var
            z[y, x] = model[y, x] + math.sqrt(var) * z[y, x]
            model[y, x] = var


@nb.njit(nogil=True, cache=True)
def finalize(image, var, code, art, mask, scale, b_nodata, b_bad, b_sat, b_edge, b_cr):
    """Mask planes from the codes, NaN and NO_DATA outside the detectors, scale to units."""
    ny, nx = image.shape
    s2 = scale * scale
    for y in range(ny):
        for x in range(nx):
            c = code[y, x]
            if not c & 1:
                image[y, x] = np.nan
                var[y, x] = np.nan
                mask[y, x] = b_nodata
                art[y, x] = 0
                continue
            m = 0
            if c & 12:
                m |= b_bad
            if c & 16:
                m |= b_sat
            if c & 2:
                m |= b_edge
            if art[y, x] & 8:
                m |= b_cr
            mask[y, x] = m
            image[y, x] *= scale
            var[y, x] *= s2
