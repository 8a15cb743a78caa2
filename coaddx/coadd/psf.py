"""The CoaddPsf of a coadd (algorithms.md 1.6, meas_algorithms ``CoaddPsf``).

The coadd carries its inputs' PSF products (``psf_*`` variables over ``psf_input``: per visit
and detector, the calexp PSF warped to the patch frame on a 3 x 3 grid of patch positions and
the detector's valid polygon on the patch; :mod:`coaddx.io.zarr.psf_products`), copied from
the warps by :func:`coaddx.assemble` and written with the coadd by :func:`coaddx.write_coadd`.
At a patch position the CoaddPsf is

    sum_k w_k P_k(x, y) / sum_k w_k

over the inputs k whose footprint contains the position, with w_k the coadd weight of the
input's visit (``coadd["weight"]``) and P_k its PSF interpolated bilinearly between the grid
nodes, each normalised to unit sum. Two refinements over LSST:

* Where detectors of one visit overlap, the warp holds the last detector's pixels
  ("last good pixel wins", copyGoodPixels), so only that detector's PSF is used there; LSST
  counts both.
* CompareWarp coadds (they carry ``artifact_mask``): visits whose artifact mask is set at the
  position were CLIPPED there, their pixels are not in the coadd, and their PSFs are left out
  (LSST's CoaddPsf includes them; docs/design-notes.md says why coaddx does not). Where every
  input is clipped, all are used (the pixel is then NO_DATA anyway).

Positions are patch array pixels: (x, y) = (column, row) of the coadd arrays, pixel centres at
integers. :class:`CoaddPsf` is built once per coadd Dataset and cached on it (the
``coadd.coadd_psf`` accessor); :func:`coadd_psf` and :func:`coadd_psf_fwhm` use it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr
from astropy.io import fits

from coaddx.errors import InputError, StoreError
from coaddx.io.zarr.psf_products import PSF_VARIABLES
from coaddx.kernels.coadd_psf import coadd_average_position, coadd_psf_from_grids, psf_fwhm
from coaddx.model.footprint import footprints_containing
from coaddx.model.skymap import shift_wcs, wcs_from_header_string

__all__ = [
    "MAP_SIDE",
    "CoaddPsf",
    "coadd_psf",
    "coadd_psf_fwhm",
    "copy_psf_products",
    "psf_hdus",
]


#: Boxes on the longer side of the default FWHM map (a 4k x 4k patch: 256 px boxes, about
#: LSST's nside 4096 property-map pixels at 0.2"/px).
MAP_SIDE = 16


def copy_psf_products(warps: xr.Dataset, coadd: xr.Dataset) -> None:
    """Copy the warps' PSF products (``psf_*`` variables) into the coadd Dataset, in place."""
    for name in PSF_VARIABLES:
        if name in warps:
            coadd[name] = (warps[name].dims, np.asarray(warps[name].values))


def _source(coadd: xr.Dataset) -> str:
    prov = coadd.attrs.get("provenance", {})
    return str(prov.get("inputs", "in-memory")) if isinstance(prov, dict) else "in-memory"


class CoaddPsf:
    """The PSF of a coadd at any patch position, from its inputs' PSF products.

    Parameters
    ----------
    products : mapping
        The ``psf_*`` arrays (:data:`coaddx.io.zarr.psf_products.PSF_VARIABLES`).
    weights : mapping visit -> weight
        The coadd weight of each visit; visits of weight not finite or <= 0 are left out.
    clipped : callable (x, y arrays) -> bool array (n_points, n_visits), optional
        Which visits were CLIPPED at each position (CompareWarp), columns in ``clip_visits``
        order.
    clip_visits : sequence of int, optional
        The visits of ``clipped``'s columns.
    """

    def __init__(
        self,
        products: dict[str, np.ndarray],
        weights: dict[int, float],
        *,
        clipped: Any = None,
        clip_visits: Any = None,
    ) -> None:
        self.visit = np.asarray(products["psf_visit"], np.int64)
        self.detector = np.asarray(products["psf_detector"], np.int64)
        self.polygon = np.asarray(products["psf_polygon"], np.float64)
        self.grid_x = np.asarray(products["psf_grid_x"], np.float64)
        self.grid_y = np.asarray(products["psf_grid_y"], np.float64)
        self.images = np.asarray(products["psf_images"], np.float64)
        self.position = np.asarray(products["psf_position"], np.float64)
        w = np.array([weights.get(int(v), np.nan) for v in self.visit], dtype=np.float64)
        self.good = np.isfinite(w) & (w > 0)
        self.weight = np.where(self.good, w, 0.0)
        self._clipped = clipped
        self._clip_col = np.zeros(0, np.int64)
        if clipped is not None:
            col = {int(v): i for i, v in enumerate(clip_visits)}
            self._clip_col = np.array([col.get(int(v), -1) for v in self.visit])
        self._avg: tuple[float, float] | None = None

    @classmethod
    def from_coadd(cls, coadd: xr.Dataset) -> CoaddPsf:
        """The CoaddPsf of a coadd Dataset (from :func:`coaddx.assemble` or
        :func:`coaddx.open_coadd`); a :class:`StoreError` naming the visits without PSF
        products (warps written before coaddx stored them) when some are missing."""
        if "weight" not in coadd or "visit" not in coadd["weight"].dims:
            raise InputError("coadd_psf: the coadd has no per-visit 'weight' variable")
        visits = [int(v) for v in coadd["visit"].values]
        w = np.asarray(coadd["weight"].values, dtype=np.float64)
        weights = dict(zip(visits, w.tolist(), strict=True))
        used = [v for v in visits if np.isfinite(weights[v]) and weights[v] > 0]
        have = set()
        if all(name in coadd for name in PSF_VARIABLES):
            have = {int(v) for v in np.asarray(coadd["psf_visit"].values)}
        missing = [v for v in used if v not in have]
        if missing:
            raise StoreError(
                f"the coadd has no PSF products for visit(s) {missing} (inputs: "
                f"{_source(coadd)}): their warps were written before coaddx stored per-visit "
                "PSFs and footprints (psf_products), or without any PSF; write them again "
                "with make_warps into a new store to get a CoaddPsf (the coadd itself is fine)"
            )
        products = {name: np.asarray(coadd[name].values) for name in PSF_VARIABLES}
        clipped = None
        if "artifact_mask" in coadd and coadd["artifact_mask"].dims == ("visit", "y", "x"):
            art = coadd["artifact_mask"]
            ny, nx = coadd.sizes["y"], coadd.sizes["x"]

            def clipped(x: np.ndarray, y: np.ndarray) -> np.ndarray:
                ix = xr.DataArray(np.clip(np.rint(x), 0, nx - 1).astype(int), dims="point")
                iy = xr.DataArray(np.clip(np.rint(y), 0, ny - 1).astype(int), dims="point")
                vals = np.asarray(art.isel(y=iy, x=ix).transpose("point", "visit").values)
                return vals != 0

        return cls(products, weights, clipped=clipped, clip_visits=visits)

    # -- which inputs --------------------------------------------------------------------
    def contributing(self, x: Any, y: Any) -> np.ndarray:
        """(n_inputs, *shape) bool: the inputs whose PSF enters the CoaddPsf at each point."""
        px, py = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
        use = footprints_containing(px, py, self.polygon) & self.good.reshape(
            (-1,) + (1,) * px.ndim
        )
        for v in np.unique(self.visit):  # overlapping detectors: the last one's pixels win
            rows = np.flatnonzero(self.visit == v)
            if rows.size > 1:
                later = np.zeros(px.shape, bool)
                for r in rows[::-1]:
                    use[r] &= ~later
                    later |= use[r]
        if self._clipped is not None and px.size:
            clip = np.asarray(self._clipped(px.ravel(), py.ravel()))  # (points, visits)
            col = self._clip_col
            hit = np.zeros_like(use)
            known = col >= 0
            hit[known] = clip[:, col[known]].T.reshape((-1, *px.shape))
            kept = use & ~hit
            any_kept = np.asarray(kept.any(axis=0))
            use = np.where(any_kept[None], kept, use)
        return use

    def covered(self, x: float, y: float) -> bool:
        """Whether some input's footprint contains the point."""
        return bool(self.contributing(x, y).any())

    # -- the PSF -------------------------------------------------------------------------
    def _sum(self, rows: np.ndarray, x: float, y: float) -> np.ndarray:
        """The weighted sum of the inputs ``rows``' PSFs interpolated to (x, y)."""
        return coadd_psf_from_grids(
            self.images[rows], self.grid_x[rows], self.grid_y[rows], self.weight[rows], x, y
        )

    def image(self, x: float | None = None, y: float | None = None) -> np.ndarray:
        """The CoaddPsf image at patch pixel (x, y) (default: :attr:`average_position`),
        centred on its centre pixel, unit sum, float64."""
        if x is None or y is None:
            x, y = self.average_position
        x, y = float(x), float(y)
        rows = np.flatnonzero(self.contributing(x, y))
        if rows.size == 0:
            raise InputError(
                f"cannot compute the CoaddPsf at ({x}, {y}): no input image contains the point"
            )
        return self._sum(rows, x, y)

    @property
    def average_position(self) -> tuple[float, float]:
        """CoaddPsf's average position: the weight-weighted mean of the inputs' PSF average
        positions, dropping the lowest-weight inputs until some input covers it."""
        if self._avg is None:
            rows = np.flatnonzero(self.good)
            if rows.size == 0:
                raise InputError("the coadd has no input of positive weight")
            self._avg = coadd_average_position(self.position[rows], self.weight[rows], self.covered)
        return self._avg

    def fwhm(self, x: float, y: float) -> float:
        """FWHM (pixels) of the CoaddPsf at (x, y) from its adaptive second moments."""
        return psf_fwhm(self.image(x, y))

    def fwhm_map(self, shape: tuple[int, int], bin_size: int) -> tuple[np.ndarray, ...]:
        """(fwhm, x centres, y centres): the FWHM at the centres of ``bin_size`` boxes over a
        patch of ``shape``, NaN where no input covers the centre."""
        ny, nx = shape
        cx = np.minimum(np.arange(math.ceil(nx / bin_size)) * bin_size + (bin_size - 1) / 2, nx - 1)
        cy = np.minimum(np.arange(math.ceil(ny / bin_size)) * bin_size + (bin_size - 1) / 2, ny - 1)
        gx, gy = np.meshgrid(cx, cy)
        use = self.contributing(gx, gy)
        out = np.full(gx.shape, np.nan)
        for j, i in zip(*np.nonzero(use.any(axis=0)), strict=True):
            rows = np.flatnonzero(use[:, j, i])
            out[j, i] = psf_fwhm(self._sum(rows, float(gx[j, i]), float(gy[j, i])))
        return out, cx, cy


@xr.register_dataset_accessor("coadd_psf")
class _CoaddPsfAccessor:
    """``coadd.coadd_psf.model``: the coadd's :class:`CoaddPsf`, built on first use and cached
    with the Dataset object."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds
        self._model: CoaddPsf | None = None

    @property
    def model(self) -> CoaddPsf:
        if self._model is None:
            self._model = CoaddPsf.from_coadd(self._ds)
        return self._model

    def __call__(self, x: float | None = None, y: float | None = None) -> np.ndarray:
        return self.model.image(x, y)


def coadd_psf(coadd: xr.Dataset, x: float | None = None, y: float | None = None) -> np.ndarray:
    """The CoaddPsf image of ``coadd`` at patch pixel (x, y) (column, row of the coadd arrays;
    default: the CoaddPsf's average position): the weighted sum of the unit-sum warped PSFs
    of the visits whose footprint contains the point (:mod:`coaddx.coadd.psf`), unit sum.

    Raises
    ------
    StoreError
        Visits of the coadd have no PSF products (their warps were written before coaddx
        stored them); the message names them.
    InputError
        No input contains the point.

    Examples
    --------
    >>> psf = coaddx.coadd_psf(coaddx.open_coadd("coadd.zarr"), 100.0, 200.0)  # doctest: +SKIP
    """
    return coadd.coadd_psf.model.image(x, y)


def _bin(shape: tuple[int, int], bin_size: int | None) -> int:
    if bin_size is None:
        return max(16, math.ceil(max(shape) / MAP_SIDE))
    if int(bin_size) < 1:
        raise InputError(f"bin_size must be >= 1, got {bin_size}")
    return int(bin_size)


def coadd_psf_fwhm(coadd: xr.Dataset, bin_size: int | None = None) -> xr.DataArray:
    """A low-resolution map of the CoaddPsf FWHM (pixels) over the patch.

    The FWHM (adaptive second moments) of :func:`coadd_psf` at the centre of every
    ``bin_size`` x ``bin_size`` box of the patch (default: at most :data:`MAP_SIDE` boxes on
    the longer side, 16 px at least); NaN where no input covers the centre. Returns a DataArray over
    (``y``, ``x``) whose coordinates are the box centres in the coadd's ``y``/``x``
    coordinates (tract pixels; array pixels when the coadd has none), with attributes
    ``bin_size`` and ``x0``/``y0`` (array pixel of the first centre).
    """
    shape = (int(coadd.sizes["y"]), int(coadd.sizes["x"]))
    b = _bin(shape, bin_size)
    fwhm, cx, cy = coadd.coadd_psf.model.fwhm_map(shape, b)
    ox = float(coadd["x"].values[0]) if "x" in coadd.coords else 0.0
    oy = float(coadd["y"].values[0]) if "y" in coadd.coords else 0.0
    return xr.DataArray(
        fwhm,
        dims=("y", "x"),
        coords={"y": cy + oy, "x": cx + ox},
        name="psf_fwhm",
        attrs={"bin_size": b, "x0": float(cx[0]), "y0": float(cy[0]), "units": "pixel"},
    )


def psf_hdus(coadd: xr.Dataset) -> list[fits.ImageHDU]:
    """The PSF HDUs of a FITS export: ``PSF`` (the CoaddPsf at the patch centre, or at its
    average position where no input covers the centre; ``PSF_X``/``PSF_Y``: the array
    position) and ``PSF_FWHM`` (the FWHM map, with a WCS of its own grid when the coadd has
    one); none for a coadd without PSF products."""
    if not all(name in coadd for name in PSF_VARIABLES):
        return []
    ny, nx = int(coadd.sizes["y"]), int(coadd.sizes["x"])
    model = coadd.coadd_psf.model
    x, y = (nx - 1) / 2.0, (ny - 1) / 2.0
    if not model.covered(x, y):  # no input at the centre: CoaddPsf's average position
        x, y = model.average_position
    psf = fits.ImageHDU(model.image(x, y).astype(np.float32), name="PSF")
    psf.header["PSF_X"] = (x, "array column of the PSF position")
    psf.header["PSF_Y"] = (y, "array row of the PSF position")
    fmap = coadd_psf_fwhm(coadd)
    hdu = fits.ImageHDU(fmap.values.astype(np.float32), name="PSF_FWHM")
    b = int(fmap.attrs["bin_size"])
    hdu.header["BUNIT"] = "pixel"
    hdu.header["BINSIZE"] = (b, "coadd pixels per map pixel")
    hdu.header["MAP_X0"] = (fmap.attrs["x0"], "array column of map pixel (0, 0)")
    hdu.header["MAP_Y0"] = (fmap.attrs["y0"], "array row of map pixel (0, 0)")
    text = coadd.attrs.get("wcs")
    if text:
        x0 = int(coadd["x"].values[0]) if "x" in coadd.coords else 0
        y0 = int(coadd["y"].values[0]) if "y" in coadd.coords else 0
        wcs = shift_wcs(wcs_from_header_string(str(text)), x0, y0)
        # map pixel i is array pixel x0 + i b: CRPIX' = (CRPIX - 1 - x0) / b + 1, CD' = CD b
        w = wcs.deepcopy()
        w.wcs.crpix = [
            (wcs.wcs.crpix[0] - 1 - fmap.attrs["x0"]) / b + 1,
            (wcs.wcs.crpix[1] - 1 - fmap.attrs["y0"]) / b + 1,
        ]
        if w.wcs.has_cd():
            w.wcs.cd = wcs.wcs.cd * b
        else:
            w.wcs.cdelt = np.asarray(wcs.wcs.cdelt) * b
        if not w.sip:
            hdu.header.extend(w.to_header().cards)
    return [psf, hdu]
