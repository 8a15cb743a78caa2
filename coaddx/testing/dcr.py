"""An in-memory DCR scene for tests and benchmarks: Gaussian stars with per-sub-filter fluxes,
each sub-filter's image shifted per visit by :func:`coaddx.dcr_shifts` (unsplit), Gaussian
noise, DETECTED where the noiseless image passes a threshold, and a mean template."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr
from astropy.wcs import WCS

from coaddx.model.masks import mask_planes
from coaddx.model.refraction import dcr_shifts, image_parallactic_angle
from coaddx.model.skymap import wcs_to_header_string

__all__ = ["DcrScene", "dcr_scene"]


@dataclass(frozen=True)
class DcrScene:
    """The warps, a template (mean of the visits, OR of their masks) and the truth: star
    positions ``y``, ``x`` and fluxes ``flux`` (star, sub-filter)."""

    direct: xr.Dataset
    template: xr.Dataset
    y: np.ndarray
    x: np.ndarray
    flux: np.ndarray


def _stamp_add(
    image: np.ndarray, y: float, x: float, flux: float, sigma: float, radius: int
) -> None:
    iy, ix = round(y), round(x)
    y0, y1 = max(iy - radius, 0), min(iy + radius + 1, image.shape[0])
    x0, x1 = max(ix - radius, 0), min(ix + radius + 1, image.shape[1])
    if y0 >= y1 or x0 >= x1:
        return
    gy = np.exp(-0.5 * ((np.arange(y0, y1) - y) / sigma) ** 2)
    gx = np.exp(-0.5 * ((np.arange(x0, x1) - x) / sigma) ** 2)
    image[y0:y1, x0:x1] += flux / (2 * np.pi * sigma**2) * np.outer(gy, gx)


def dcr_scene(
    *,
    shape: tuple[int, int] = (96, 96),
    n_visits: int = 8,
    n_stars: int = 12,
    n_subfilters: int = 3,
    effective_wavelength: float = 476.31,
    bandwidth: float = 147.0,
    elevation: tuple[float, float] = (30.0, 70.0),
    sigma: float = 1.5,
    noise: float = 1.0,
    background: float = 0.0,
    wcs: WCS | None = None,
    seed: int = 0,
) -> DcrScene:
    """A DCR scene on ``shape`` (see the module docstring). ``wcs`` (a patch WCS) sets the
    ``wcs`` attribute and the direction of the shifts; without it the frame is LSST's
    rotation 0 at 0.2 arcsec/px."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    planes = mask_planes()
    ys = rng.uniform(8, ny - 8, n_stars)
    xs = rng.uniform(8, nx - 8, n_stars)
    flux = rng.uniform(2e3, 2e4, n_stars)[:, None] * rng.dirichlet([2.0] * n_subfilters, n_stars)
    elev = rng.uniform(*elevation, n_visits)
    q = rng.uniform(-180.0, 180.0, n_visits)
    scale = (
        0.2 if wcs is None else float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600
    )
    radius = int(5 * sigma) + 3
    images = np.empty((n_visits, ny, nx), np.float32)
    masks = np.empty((n_visits, ny, nx), np.int32)
    for i in range(n_visits):
        theta = image_parallactic_angle(q[i], wcs, x=(nx - 1) / 2, y=(ny - 1) / 2)
        shifts = dcr_shifts(
            effective_wavelength=effective_wavelength,
            bandwidth=bandwidth,
            n_subfilters=n_subfilters,
            elevation=float(elev[i]),
            parallactic_angle=theta,
            pixel_scale=scale,
        )
        model = np.full((ny, nx), background, np.float64)
        for s in range(n_stars):
            for k in range(n_subfilters):
                dy, dx = shifts[k]
                _stamp_add(model, ys[s] + dy, xs[s] + dx, flux[s, k], sigma, radius)
        images[i] = model + rng.normal(0.0, noise, model.shape)
        masks[i] = np.where(model - background > 3 * noise, 1 << planes["DETECTED"], 0)
    attrs: dict = {"mask_planes": dict(planes)}
    if wcs is not None:
        attrs["wcs"] = wcs_to_header_string(wcs)
    coords = {"y": np.arange(ny), "x": np.arange(nx)}
    dims = ("visit", "y", "x")
    direct = xr.Dataset(
        {
            "image": (dims, images),
            "variance": (dims, np.full_like(images, noise**2)),
            "mask": (dims, masks),
            "elevation": ("visit", elev),
            "parallactic_angle": ("visit", q),
            "psf_fwhm": ("visit", np.full(n_visits, sigma * 2 * np.sqrt(2 * np.log(2)))),
        },
        coords={"visit": np.arange(n_visits), **coords},
        attrs=attrs,
    )
    template = xr.Dataset(
        {
            "image": (("y", "x"), images.mean(axis=0)),
            "variance": (("y", "x"), np.full((ny, nx), noise**2 / n_visits, np.float32)),
            "mask": (("y", "x"), np.bitwise_or.reduce(masks, axis=0)),
        },
        coords=coords,
        attrs=dict(attrs),
    )
    return DcrScene(direct, template, ys, xs, flux)
